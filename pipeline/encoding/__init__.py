"""Text to vectors: the encoder backends, their plan, the model on disk and the cache."""
