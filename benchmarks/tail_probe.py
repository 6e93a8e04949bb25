"""Why the engine face's p99 is tens of times its p50: time thousands of calls, and match
each slow one to what ran inside it (a garbage collection, a WAL checkpoint).

    python -m benchmarks.tail_probe                  # about 45 s on 2 cores
    python -m benchmarks.tail_probe --no-settle      # as before viking_mcp.heap: nothing frozen
    python -m benchmarks.tail_probe --calls 500 --appends 2000 --json /tmp/probe.json

It builds the sessions the suite reads (`fixtures.build`: ctx_0 and ctx_1000, 200 live
messages each), opens the engine face on a copy, warms it up as `face_scenarios` does,
then times `--calls` get_context calls on each session and `--appends` add_message calls
to one growing session, with `time.perf_counter_ns` around each await, as the suite does.
Meanwhile `gc.callbacks` logs every collection (start, stop, generation) and the WAL index
(the database's -shm file) is read before and after each call: its checkpoint counter
(nBackfill) moving means a checkpoint ran inside that call.

By default the process holds what the suite's process holds when it measures the engine
face (`--heap bench`: the benchmark modules and the MCP client imported); `--heap engine`
imports only the engine, as a host embedding it would. The engine face settles the heap
once started (`viking_mcp.heap.settle`, as the servers do); `--no-settle` skips that.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import mmap
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import fixtures
from benchmarks.common import message_texts, role_of
from benchmarks.scenarios import CONTEXT_BUDGET

clock = time.perf_counter_ns
SIZES = replace(
    fixtures.QUICK, growth=0, context_archives=(0, 1_000), expand_messages=100, commit_small=0, commit_large=0
)


class Events:
    """Every collection while recording: (start ns, stop ns, generation, collected)."""

    def __init__(self) -> None:
        self.collections: list[tuple[int, int, int, int]] = []
        self._started: tuple[int, int] | None = None
        self.recording = False

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if not self.recording:
            return
        if phase == "start":
            self._started = (clock(), info["generation"])
        elif self._started is not None:
            self.collections.append((self._started[0], clock(), self._started[1], info.get("collected", 0)))
            self._started = None


class WalIndex:
    """The WAL index header in the -shm file: mxFrame (frames in the WAL), nBackfill (checkpointed)."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - kept open for the probe's life
        self._map = mmap.mmap(self._file.fileno(), 136, access=mmap.ACCESS_READ)

    def read(self) -> tuple[int, int]:
        data = self._map[:136]
        return int.from_bytes(data[16:20], sys.byteorder), int.from_bytes(data[96:100], sys.byteorder)


def percentile(ordered: list[float], p: float) -> float:
    """Nearest rank, as benchmarks.common.summary_ms."""
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


Call = tuple[int, int, int, tuple[int, int], tuple[int, int]]  # begin, end, CPU ns, WAL index before, after


def windows_over(durations: list[float], size: int) -> tuple[int, int]:
    """Of the consecutive windows of `size` calls (the suite's samples: 50 reads, 100 appends),
    how many have a p99 (nearest rank, as the suite reports it) over 5x their own p50."""
    windows = [sorted(durations[i : i + size]) for i in range(0, len(durations) - size + 1, size)]
    over = sum(1 for w in windows if percentile(w, 99) > 5 * statistics.median(w))
    return over, len(windows)


def analyse(name: str, calls: list[Call], events: Events, window: int) -> dict[str, Any]:
    durations = [(end - begin) / 1e6 for begin, end, _, _, _ in calls]
    ordered = sorted(durations)
    p50 = statistics.median(ordered)
    slow_limit = 5 * p50
    slow = {"n": 0, "gen2": 0, "gen1": 0, "checkpoint": 0, "off_cpu": 0, "nothing": 0}
    inside_gen2: list[float] = []
    gen2_ms: list[float] = []
    slowest: list[tuple[float, float, str]] = []  # wall ms, CPU ms, what ran inside
    for (begin, end, cpu, before, after), ms in zip(calls, durations, strict=True):
        inside = [c for c in events.collections if c[0] < end and c[1] > begin]
        gens = {c[2] for c in inside}
        checkpointed = after[1] > before[1]
        what = ",".join(
            [f"gen{g}" for g in sorted(gens)]
            + (["checkpoint"] if checkpointed else [])
            + ([f"WAL restart at {before[0]} frames"] if after[0] < before[0] else [])
        )
        slowest.append((round(ms, 3), round(cpu / 1e6, 3), what))
        if 2 in gens:
            inside_gen2.append(ms)
            gen2_ms += [(c[1] - c[0]) / 1e6 for c in inside if c[2] == 2]
        if ms <= slow_limit:
            continue
        slow["n"] += 1
        if 2 in gens:
            slow["gen2"] += 1
        elif checkpointed:
            slow["checkpoint"] += 1
        elif 1 in gens:
            slow["gen1"] += 1
        elif cpu < (end - begin) / 2:  # waiting, not working: I/O, or another process had the core
            slow["off_cpu"] += 1
        else:
            slow["nothing"] += 1
    return {
        "operation": name,
        "n": len(durations),
        "p50_ms": round(p50, 3),
        "p95_ms": round(percentile(ordered, 95), 3),
        "p99_ms": round(percentile(ordered, 99), 3),
        "max_ms": round(ordered[-1], 3),
        "p99_over_p50": round(percentile(ordered, 99) / p50, 1),
        "slow_calls": slow,  # over 5x p50, by what ran inside them (gen2 first, then checkpoint, gen1)
        "calls_with_gen2": len(inside_gen2),
        "calls_with_gen2_median_ms": round(statistics.median(inside_gen2), 2) if inside_gen2 else None,
        "gen2_median_ms": round(statistics.median(gen2_ms), 2) if gen2_ms else None,
        "checkpoints": sum(1 for _, _, _, b, a in calls if a[1] > b[1]),
        "checkpoint_median_ms": round(statistics.median(ck), 2)
        if (ck := [ms for (_, _, _, b, a), ms in zip(calls, durations, strict=True) if a[1] > b[1]])
        else None,
        "wal_frames_max": max(a[0] for _, _, _, _, a in calls),
        "wal_restarts": sum(1 for _, _, _, b, a in calls if a[0] < b[0]),
        "slowest": sorted(slowest, reverse=True)[:40],
        "window": window,
        "windows_p99_over_5x": windows_over(durations, window),
    }


async def probe(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.faces import EngineFace

    if args.heap == "bench":  # what the suite's process has imported by the time it measures the engine
        import mcp  # noqa: F401
        from mcp import Client, StdioServerParameters  # noqa: F401

        import benchmarks.run  # noqa: F401
    try:
        import viking_mcp.heap

        settles = not args.no_settle
        if args.no_settle:
            viking_mcp.heap.settle = lambda: None
    except ImportError:  # a tree from before it: nothing settles
        settles = False
    workdir = Path(tempfile.mkdtemp(prefix="viking-tail-"))
    started = time.perf_counter()
    fixtures.build(workdir / "template", SIZES)
    home = workdir / "home"
    fixtures.copy_to(workdir / "template", home)
    build_seconds = time.perf_counter() - started

    face = EngineFace(home)
    await face.start()
    texts = message_texts(max(args.appends, 2_000))
    # The suite's warm-up, untimed.
    for index in range(100):
        await face.add_message("warmup", role_of(index + 1), texts[index])
    await face.get_context("warmup", CONTEXT_BUDGET)
    await face.wait_task(await face.commit("warmup"))
    await face.expand_archive("warmup", "archive_001", 100)
    if args.threshold:
        gc.set_threshold(*(int(x) for x in args.threshold.split(",")))
    if args.wal_autocheckpoint is not None:  # this thread's connection: the one every call here uses
        face.engine.store._connect().execute(f"PRAGMA wal_autocheckpoint = {int(args.wal_autocheckpoint)}")  # type: ignore[attr-defined]
    wal = WalIndex(home / (fixtures.DB_NAME + "-shm"))
    heap: dict[str, float | None] = {
        "tracked_objects": len(gc.get_objects()),
        "frozen": gc.get_freeze_count(),
        "full_collection_ms": None,
    }
    events = Events()
    gc.callbacks.append(events)
    stats_before = gc.get_stats()
    events.recording = True
    results = []

    async def timed(name: str, operation: Any, count: int, window: int) -> None:
        calls: list[Call] = []
        for index in range(count):
            before = wal.read()
            begin, cpu = clock(), time.thread_time_ns()
            await operation(index)
            end, cpu = clock(), time.thread_time_ns() - cpu
            calls.append((begin, end, cpu, before, wal.read()))
        results.append(analyse(name, calls, events, window))

    for archives in (0, 1_000):
        session = f"ctx_{archives}"
        await timed(
            f"get_context, {archives:,} archives + 200 live",
            lambda _, s=session: face.get_context(s, CONTEXT_BUDGET),
            args.calls,
            50,  # the suite's reads of each session
        )
    await timed(
        "add_message, one growing session",
        lambda i: face.add_message("grow", role_of(i + 1), texts[i % len(texts)]),
        args.appends,
        100,  # the suite's windows of appends
    )
    events.recording = False
    stats_after = gc.get_stats()
    # What one full collection of this heap costs, measured last (outside every timing).
    began = clock()
    gc.collect()
    heap["full_collection_ms"] = round((clock() - began) / 1e6, 2)
    await face.close()
    gen2 = [(c[1] - c[0]) / 1e6 for c in events.collections if c[2] == 2]
    return {
        "python": sys.version.split()[0],
        "heap": args.heap,
        "settle": settles,
        "threshold": gc.get_threshold(),
        "wal_autocheckpoint": args.wal_autocheckpoint,
        "build_seconds": round(build_seconds, 1),
        "heap_at_start": heap,
        "collections": {str(g): stats_after[g]["collections"] - stats_before[g]["collections"] for g in range(3)},
        "gen2_ms_median": round(statistics.median(gen2), 2) if gen2 else None,
        "gen2_ms_max": round(max(gen2), 2) if gen2 else None,
        "operations": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2_000, help="get_context calls per session (default 2,000)")
    parser.add_argument("--appends", type=int, default=5_000, help="add_message calls (default 5,000)")
    parser.add_argument("--heap", choices=("bench", "engine"), default="bench")
    parser.add_argument("--no-settle", action="store_true", help="the engine face does not settle the heap")
    parser.add_argument("--threshold", help="gc.set_threshold(...) after the warm-up, e.g. 700,10,10")
    parser.add_argument("--wal-autocheckpoint", type=int, help="PRAGMA wal_autocheckpoint on the engine's connection")
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args(argv)
    report = asyncio.run(probe(args))
    heap = report["heap_at_start"]
    print(
        f"heap={report['heap']} settle={report['settle']} threshold={report['threshold']}: "
        f"{heap['tracked_objects']:,} tracked objects ({heap['frozen']:,} frozen), a full collection "
        f"{heap['full_collection_ms']} ms; collections gen0/1/2 while measuring: "
        f"{'/'.join(str(report['collections'][g]) for g in '012')}, gen2 median {report['gen2_ms_median']} ms, "
        f"max {report['gen2_ms_max']} ms"
    )
    print(
        "| operation | n | p50 | p95 | p99 | max | p99/p50 | windows with p99 > 5x p50 | "
        "calls > 5x p50: gen2 / checkpoint / gen1 / off-CPU / other |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in report["operations"]:
        s = r["slow_calls"]
        over, windows = r["windows_p99_over_5x"]
        print(
            f"| {r['operation']} | {r['n']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['max_ms']} | "
            f"{r['p99_over_p50']}x | {over} of {windows} (of {r['window']}) | "
            f"{s['n']}: {s['gen2']} / {s['checkpoint']} / {s['gen1']} / {s['off_cpu']} / {s['nothing']} |"
        )
    for r in report["operations"]:
        print(
            f"  {r['operation']}: {r['calls_with_gen2']} calls overlapped a gen2 collection (median call "
            f"{r['calls_with_gen2_median_ms']} ms, collection {r['gen2_median_ms']} ms); {r['checkpoints']} "
            f"WAL checkpoints inside calls (median call {r['checkpoint_median_ms']} ms); the WAL restarted "
            f"{r['wal_restarts']} times, at most {r['wal_frames_max']} frames"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
