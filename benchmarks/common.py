"""What every measurement shares: message text, percentiles, the machine, process memory."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
# The peer client and OpenViking's published figures (see benchmarks/README.md).
BENCH_CLIENT = Path(os.environ.get("VIKING_BENCH_SCRIPT", REPO.parent / "shared" / "bench" / "session_api_bench.py"))

_VOCABULARY = """
the a we I you it they this that with for on in at to from about after before
flight hotel train booking dinner meeting budget schedule deadline report draft review
Lisbon Porto Kyoto Oslo Berlin Nairobi Denver Monday Tuesday Friday March April June
Ada Grace Linus Maya Tomas Priya think need want booked moved changed confirmed asked
maybe probably definitely tomorrow yesterday morning evening 9:30 14:00 2025-06-12 42
euros dollars tickets seats window aisle vegetarian allergy passport visa museum beach
could should would will can remember prefer cheaper earlier later quiet close central
"""
_WORDS = _VOCABULARY.split()


def message_texts(count: int, seed: int = 20250612) -> list[str]:
    """`count` deterministic messages of 20-80 words each (append_cost.py and durability.py use it too)."""
    import random

    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        words = rng.choices(_WORDS, k=rng.randint(20, 80))
        words[0] = words[0].capitalize()
        texts.append(" ".join(words) + rng.choice([".", "?", "!"]))
    return texts


def role_of(index: int) -> str:
    return "user" if index % 2 else "assistant"


def summary_ms(samples_ns: list[int]) -> dict[str, Any]:
    """n, p50/p95/p99 (nearest rank) and mean of nanosecond samples, in milliseconds."""
    if not samples_ns:
        return {"n": 0}
    ordered = sorted(samples_ns)

    def rank(p: float) -> float:
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return ordered[index] / 1e6

    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) / 1e6, 4),
        "p95_ms": round(rank(95), 4),
        "p99_ms": round(rank(99), 4),
        "mean_ms": round(statistics.fmean(ordered) / 1e6, 4),
    }


def rss_mib(pid: int) -> float | None:
    """Resident memory of one process (VmRSS), in MiB; None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(parent: int, needle: str) -> list[int]:
    """This process's children whose command line contains `needle` (the spawned stdio server)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            with open(f"/proc/{name}/cmdline", "rb") as cmdline:
                if needle.encode() in cmdline.read():
                    found.append(int(name))
        except OSError:
            continue
    return found


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "os": platform.platform(),
        "git_commit": _git_commit(),
        "viking_mcp": version("viking-mcp"),
        "mcp": version("mcp"),
        "load_average_at_start": load,
        "executable": sys.executable,
    }


def server_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment for a spawned server: this one without VIKING_MCP_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIKING_MCP_")}
    env.update({"VIKING_MCP_HOME": str(home), "VIKING_MCP_LOG_LEVEL": "WARNING", **extra})
    return env
