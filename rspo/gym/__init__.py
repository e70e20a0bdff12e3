"""The embedded default: a small, verifiable alignment problem that runs on a laptop CPU."""
