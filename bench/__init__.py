"""Benchmark and test client tools (not part of the server)."""
