"""The pure core: events, hashing, chunking, the planner, names. No settings, no adapters."""
