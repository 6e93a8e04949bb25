"""What does VIKING_MCP_DURABILITY=full cost over the default (normal)?

    python benchmarks/durability.py                  # 2,000 appends per mode, under a minute
    python benchmarks/durability.py --appends 500 --dir /mnt/ssd --out /tmp/durability.json

Runs the engine in-process (`viking_mcp.engine.Engine`, the embedded SQLite store, WAL
mode) twice over: `durability="normal"` (synchronous=NORMAL, the default) and
`durability="full"` (synchronous=FULL: SQLite fsyncs the WAL on every commit). Each
mode appends the same N messages (20-80 words, seeded) to one session and times every
`add_message` call with `time.perf_counter_ns`. The modes take turns in rounds of
N/4 appends, so that load from other processes falls on both alike.

The store lives in a temporary directory under `--dir` (default: the system's
temporary directory). Measure on the disk you care about: on tmpfs an fsync is free
and the two modes cost the same.

What each mode promises: with normal, every acknowledged write survives the process
being killed (the WAL is in the OS page cache), and a power loss or OS crash may lose
the last transactions, never corrupt the database; with full, an acknowledged write
also survives power loss, if the disk honours fsync.

Prints a markdown table; writes JSON (default benchmarks/results/durability.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from viking_mcp.config import DurabilityMode, Settings
from viking_mcp.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from append_cost import environment, message_texts, percentiles_ms

MODES: tuple[DurabilityMode, ...] = ("normal", "full")
ROUNDS = 4
WARMUP = 200
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "durability.json"


def run(appends: int, base_dir: str | None) -> dict[str, Any]:
    texts = message_texts(appends)
    timings: dict[str, list[int]] = {mode: [] for mode in MODES}
    walls: dict[str, float] = dict.fromkeys(MODES, 0.0)
    with tempfile.TemporaryDirectory(prefix="viking-durability-", dir=base_dir) as root:
        engines = {mode: Engine(Settings(home=Path(root) / mode, durability=mode)) for mode in MODES}
        try:
            for engine in engines.values():
                engine.tokens.warm_up()
                for text in texts[:WARMUP]:
                    engine.add_message("warmup", "user", content=text)
            size = -(-appends // ROUNDS)
            clock = time.perf_counter_ns
            for start in range(0, appends, size):
                for mode, engine in engines.items():
                    began = time.perf_counter()
                    for index in range(start, min(start + size, appends)):
                        role = "user" if index % 2 == 0 else "assistant"
                        t0 = clock()
                        engine.add_message("bench", role, content=texts[index])
                        timings[mode].append(clock() - t0)
                    walls[mode] += time.perf_counter() - began
            counts = {mode: engine.get_session("bench").message_count for mode, engine in engines.items()}
        finally:
            for engine in engines.values():
                engine.close()
    results: dict[str, Any] = {
        mode: {
            **percentiles_ms(timings[mode]),
            "appends": len(timings[mode]),
            "stored": counts[mode],
            "appends_per_second": round(len(timings[mode]) / walls[mode], 1),
        }
        for mode in MODES
    }
    normal, full = results["normal"], results["full"]
    results["full_over_normal"] = {
        "p50": round(full["p50_ms"] / normal["p50_ms"], 2),
        "p95": round(full["p95_ms"] / normal["p95_ms"], 2),
    }
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| durability | appends | p50 ms | p95 ms | p99 ms | mean ms | appends/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        r = results[mode]
        lines.append(
            f"| {mode} | {r['appends']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['mean_ms']} "
            f"| {r['appends_per_second']} |"
        )
    ratio = results["full_over_normal"]
    lines.append(f"\nfull / normal: p50 x{ratio['p50']}, p95 x{ratio['p95']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--appends", type=int, default=2_000, help="appends per mode (default 2000)")
    parser.add_argument("--dir", default=None, help="where the temporary stores go (default: system temp dir)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = parser.parse_args()
    if args.appends < ROUNDS:
        parser.error(f"--appends must be at least {ROUNDS}")
    results = run(args.appends, args.dir)
    report = {"benchmark": "durability", "environment": environment(), **results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(results))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
