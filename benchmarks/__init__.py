"""Benchmarks of every face of viking-mcp: `python -m benchmarks` (see benchmarks/README.md)."""
