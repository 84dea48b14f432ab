"""Settings, parsed once at the edge: flags, environment and a TOML file, and TLS files."""
