"""Integration tests: real scheduler and agent processes, real mTLS, port 0."""
