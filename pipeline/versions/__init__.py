"""Index versions over the VectorStore port: their spec, per-document states, migrations
decided and applied, evaluation and search."""
