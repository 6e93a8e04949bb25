"""Store URLs for people: a PostgreSQL URL with its password left out."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# `password=...` in a key=value connection string (the value bare, or single-quoted).
_DSN_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redacted(url: str) -> str:
    """`url` without its password (safe to log or print): neither the one in the user part
    (`postgresql://u:pw@db/x`) nor one given as a query parameter (`?password=pw`), nor
    `password=pw` in a key=value connection string."""
    if "://" not in url:
        return _DSN_PASSWORD.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            netloc = parts.netloc.rsplit("@", 1)[1]
            user = parts.username or ""
            parts = parts._replace(netloc=f"{user}:***@{netloc}")
        if parts.query and "password" in parts.query.lower():
            query = [
                (key, "***" if key.strip().lower() == "password" else value)
                for key, value in parse_qsl(parts.query, keep_blank_values=True)
            ]
            parts = parts._replace(query=urlencode(query, safe="*/:,-"))
        return urlunsplit(parts)
    except ValueError:
        return "postgresql://..."
