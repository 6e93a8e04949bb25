"""The release, in one place: pyproject.toml reads it, and so does everything that reports it."""

__version__ = "0.1.0"
