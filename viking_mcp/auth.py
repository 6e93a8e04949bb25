"""API keys: who is calling, for the ways in that serve over a network (HTTP API, MCP over HTTP).

Keys come from a JSON file (`VIKING_MCP_KEYS_FILE`) or the environment
(`VIKING_MCP_API_KEYS`, the same JSON inline; `VIKING_MCP_ADMIN_KEY`):

    {
      "admin_keys": ["adm-…"],
      "keys": {
        "key-of-ada": {"account_id": "acme", "user_id": "ada", "agent_id": "claude"},
        "key-of-bob": {"user_id": "bob"}
      }
    }

A user key acts as its account and user (and agent): it sees only that user's
sessions, tasks and memories; anyone else's answer NOT_FOUND. An admin key sees all.
With no keys configured the server is open, and then it only listens on loopback.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from viking_mcp.errors import InvalidArgument, Unauthenticated
from viking_mcp.models import Owner, validate_id


@dataclass(frozen=True)
class KeyRing:
    users: dict[str, Owner] = field(default_factory=dict)
    admins: frozenset[str] = frozenset()

    @property
    def enabled(self) -> bool:
        return bool(self.users or self.admins)

    def authenticate(self, presented: str | None) -> Owner | None:
        """The caller's identity for a presented key: an Owner, or None for an admin (or
        when no keys are configured). Raises UNAUTHENTICATED for a missing or wrong key."""
        if not self.enabled:
            return None
        if not presented:
            raise Unauthenticated("missing API key: send it as X-API-Key or Authorization: Bearer")
        # Compare against every key in constant time, so timing says nothing about which is close.
        users = [owner for key, owner in self.users.items() if hmac.compare_digest(key.encode(), presented.encode())]
        if any([hmac.compare_digest(key.encode(), presented.encode()) for key in self.admins]):  # a list: all compared
            return None
        if not users:
            raise Unauthenticated("invalid API key")
        return users[-1]


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """X-API-Key, or Authorization: Bearer (header names are case-insensitive)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if key := lowered.get("x-api-key"):
        return key.strip()
    scheme, _, token = lowered.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _owner(spec: Any, where: str) -> Owner:
    if not isinstance(spec, dict):
        raise InvalidArgument(f"{where}: each key maps to an object like {{'user_id': 'ada'}}")
    values = {name: spec.get(name, "default") for name in ("account_id", "user_id", "agent_id")}
    for name, value in values.items():
        validate_id(value, f"{where}.{name}")
    return Owner(**values)


def keyring_from_config(config: Mapping[str, Any], where: str) -> KeyRing:
    users_spec = config.get("keys", {})
    admins_spec = config.get("admin_keys", [])
    if not isinstance(users_spec, dict) or not isinstance(admins_spec, list):
        raise InvalidArgument(f"{where}: expected {{'keys': {{key: {{user_id: ...}}}}, 'admin_keys': [key, ...]}}")
    users = {}
    for key, spec in users_spec.items():
        if not isinstance(key, str) or len(key) < 16:
            raise InvalidArgument(f"{where}: API keys must be strings of 16 characters or more")
        users[key] = _owner(spec, f"{where} key …{key[-4:]}")
    admins = [a for a in admins_spec if isinstance(a, str)]
    if any(len(a) < 16 for a in admins) or len(admins) != len(admins_spec):
        raise InvalidArgument(f"{where}: admin keys must be strings of 16 characters or more")
    return KeyRing(users=users, admins=frozenset(admins))


def keyring_from_env(environ: Mapping[str, str] = os.environ) -> KeyRing:
    sources: list[tuple[Any, str]] = []
    if path := environ.get("VIKING_MCP_KEYS_FILE"):
        try:
            sources.append((json.loads(Path(path).expanduser().read_text()), f"VIKING_MCP_KEYS_FILE={path}"))
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"VIKING_MCP_KEYS_FILE={path}: cannot read it as JSON ({exc})") from None
    if inline := environ.get("VIKING_MCP_API_KEYS"):
        try:
            sources.append((json.loads(inline), "VIKING_MCP_API_KEYS"))
        except ValueError as exc:
            raise InvalidArgument(f"VIKING_MCP_API_KEYS is not JSON ({exc})") from None
    rings = [keyring_from_config(data, where) for data, where in sources]
    users = {k: v for ring in rings for k, v in ring.users.items()}
    admins = {a for ring in rings for a in ring.admins}
    if admin := environ.get("VIKING_MCP_ADMIN_KEY"):
        if len(admin) < 16:
            raise InvalidArgument("VIKING_MCP_ADMIN_KEY must be 16 characters or more")
        admins.add(admin)
    return KeyRing(users=users, admins=frozenset(admins))
