"""Measure every face of viking-mcp and judge the targets of issue #6.

    python -m benchmarks            # the full run, about 5 minutes on 2 cores
    python -m benchmarks --quick    # a smoke run with small sizes, about 1 minute
    python -m benchmarks --repeat 3 # three full runs, each target judged on their median

Writes benchmarks/results/latest.json (every figure, the machine) and latest.md (the
tables), and prints the markdown. See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import fixtures, recall_latency
from benchmarks.common import RESULTS, machine
from benchmarks.faces import EngineFace, Face, HttpFace, McpFace
from benchmarks.scenarios import (
    CONTEXT_BUDGET,
    cold_starts,
    face_scenarios,
    http_throughput,
    log,
    peer_bench_client,
    scratch_dir,
    stdio_round_trips,
)

FACES = ("engine", "mcp_in_process", "mcp_stdio", "http")

# OpenViking 0.5.2, from ../shared/bench/README.md (same client, a 2-core machine of this kind).
OPENVIKING = {
    "source": "../shared/bench/README.md: OpenViking 0.5.2, 2 cores, loopback, zero-latency fake model provider",
    "create_session_p50_ms": 28.4,
    "add_message_first_100_p50_ms": 11.6,
    "add_message_first_100_p99_ms": 23.2,
    "add_message_last_100_p50_ms": 41.9,
    "add_message_last_100_p99_ms": 65.1,
    "commit_phase1_p50_ms": 42.6,
    "get_session_context_p50_ms": {"0": 10.1, "10": 13.5, "50": 15.0},
    "get_session_context_all_live_p50_ms": 117.0,
    "start_to_health_seconds": 9.6,
    "rss_idle_mib": 469,
}


def make_face(name: str, home: Path, workdir: Path) -> Face:
    if name == "engine":
        return EngineFace(home)
    if name == "mcp_in_process":
        return McpFace(home, "memory")
    if name == "mcp_stdio":
        return McpFace(home, "stdio")
    return HttpFace(home, workdir / "http-face-server.log")


async def measure(args: argparse.Namespace, sizes: fixtures.Sizes, workdir: Path) -> dict[str, Any]:
    report: dict[str, Any] = {
        "benchmark": "viking-mcp faces",
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "sizes": vars(sizes),
        "context_token_budget": CONTEXT_BUDGET,
        "openviking": OPENVIKING,
    }
    began = time.perf_counter()

    log("cold start: ours and the bare MCPServer, alternately")
    report["cold_start"] = cold_starts(sizes, workdir)
    log("tool round trip over stdio: add_message and the bare server's no-op, in turns")
    report["stdio_round_trip"] = await stdio_round_trips(sizes, workdir)

    template = workdir / "template"
    log("building the data directory every face starts from")
    report["fixture_build_seconds"] = fixtures.build(template, sizes)

    report["faces"] = {}
    for name in args.faces:
        home = workdir / f"home-{name}"
        fixtures.copy_to(template, home)
        face = make_face(name, home, workdir)
        log(f"face: {face.label}")
        await face.start()
        try:
            report["faces"][name] = await face_scenarios(face, sizes)
        finally:
            await face.close()

    log("HTTP throughput")
    try:
        report["http_throughput"] = await http_throughput(sizes, workdir)
    except Exception as exc:  # the rest of the report is still worth writing
        report["http_throughput"] = {"failed": f"{type(exc).__name__}: {exc}"}
    log("the OpenViking bench client against our HTTP server")
    try:
        peer = await asyncio.to_thread(peer_bench_client, sizes, workdir)
    except Exception as exc:
        peer = {"failed": f"{type(exc).__name__}: {exc}"}
    report["peer_bench_client"] = peer.get("summary", peer)
    report["peer_bench_client_raw"] = peer.get("raw")
    log("search: a 10,000-message session and 100 LoCoMo sessions (issue #17)")
    try:
        report["recall"] = await asyncio.to_thread(recall_latency.measure, workdir, args.quick)
    except Exception as exc:
        report["recall"] = {"failed": f"{type(exc).__name__}: {exc}"}
    report["total_seconds"] = round(time.perf_counter() - began, 1)
    report["targets"] = judge(report)
    return report


# --- the targets ----------------------------------------------------------------------------------------------


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def judge(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target of issue #6: what it asks, what was measured, met or not."""
    rows: list[dict[str, Any]] = []
    sizes = report["sizes"]
    big, small = sizes["windows"][-1], sizes["windows"][0]

    def row(key: str, target: str, measured: float | None, limit: float, unit: str, at_most: bool = True) -> None:
        rows.append(
            {
                "id": key,
                "target": target,
                "measured": _shown(measured, unit),
                "value": measured,
                "verdict": _verdict(measured, limit, at_most),
                "limit": limit,
                "at_most": at_most,
                "unit": unit,
            }
        )

    cold = report["cold_start"]
    ours_s, bare_s = cold["ours"]["seconds_median"], cold["bare"]["seconds_median"]
    row(
        "cold_start_ratio",
        "cold start to first tools/list (stdio) <= 1.3x the bare server's",
        round(ours_s / bare_s, 3),
        1.3,
        "x",
    )
    row("cold_start_seconds", "cold start to first tools/list (stdio) <= 1.5 s", ours_s, 1.5, " s")
    ours_rss, bare_rss = cold["ours"]["rss_mib_median"], cold["bare"]["rss_mib_median"]
    row(
        "idle_rss",
        "idle resident memory <= the bare server's + 25 MB (extra MiB shown)",
        None if ours_rss is None or bare_rss is None else round(ours_rss - bare_rss, 1),
        25 * 1e6 / 2**20,
        " MiB",
    )

    stdio = _get(report, "stdio_round_trip", "add_message", "p50_ms")
    bare = _get(report, "stdio_round_trip", "bare_noop", "p50_ms")
    row(
        "stdio_add_message_ratio",
        "add_message over stdio: p50 <= 1.5x the bare server's no-op round trip",
        None if stdio is None or not bare else round(stdio / bare, 3),
        1.5,
        "x",
    )
    engine_windows = _get(report, "faces", "engine", "add_message") or {}
    engine_p50 = max((w["p50_ms"] for k, w in engine_windows.items() if k != "all"), default=None)
    row(
        "engine_add_message_p50",
        "add_message (engine): p50 <= 0.3 ms at every measured message",
        engine_p50,
        0.3,
        " ms",
    )
    for face in ("engine", "mcp_stdio"):
        row(
            f"{face}_growth_ratio",
            f"add_message ({face}): p50 of messages {big - 99:,}-{big:,} <= 1.2x that of a new session's "
            f"first {small}, appended in turns",
            _get(report, "faces", face, "add_message_growth_ratio"),
            1.2,
            "x",
        )
    row(
        "commit_phase1_large",
        f"commit Phase 1 (engine): p50 <= 20 ms at {big:,} live messages",
        _get(report, "faces", "engine", "commit_large", "phase1", "p50_ms"),
        20,
        " ms",
    )
    most = str(max(sizes["context_archives"]))
    row(
        "get_context_archives",
        f"get_context (engine), {int(most):,} archives + {sizes['live_messages']} live messages: p50 <= 10 ms",
        _get(report, "faces", "engine", "get_context", most, "p50_ms"),
        10,
        " ms",
    )
    engine_cpu = _get(report, "faces", "engine", "get_context", most, "cpu_p50_ms")
    if engine_cpu is not None:
        rows[-1]["measured"] += f" (CPU {engine_cpu:.3f} ms)"
    # Tail latency: the slowest calls in a hundred against the typical one.
    tails = [("add_message", "all", f"add_message (engine), all {big:,} messages")] + [
        ("get_context", str(n), f"get_context (engine), {n:,} archives + {sizes['live_messages']} live")
        for n in sizes["context_archives"]
    ]
    for operation, key, label in tails:
        entry = _get(report, "faces", "engine", operation, key) or {}
        p50, p99 = entry.get("p50_ms"), entry.get("p99_ms")
        row(
            f"tail_{operation}_{key}",
            f"{label}: p99 <= 5x p50",
            round(p99 / p50, 2) if p50 and p99 is not None else None,
            5,
            "x",
        )

    throughput = report["http_throughput"]
    row(
        "http_throughput_16",
        "HTTP add_message, 16 clients on distinct sessions: >= 1,000/s",
        _get(throughput, "16-distinct", "messages_per_second"),
        1000,
        "/s",
        at_most=False,
    )
    lost = sum(v["lost"] for k, v in throughput.items() if isinstance(v, dict) and "lost" in v)
    row(
        "http_no_message_lost",
        "HTTP: no message lost (shared and distinct sessions, every configuration)",
        lost,
        0,
        " lost",
    )

    peer = report["peer_bench_client"]
    last = _get(peer, "add_message_last_100", "p50_ms")
    last_range = peer.get("add_message_last_range") if isinstance(peer, dict) else None
    row(
        "bench_client_add_message",
        f"bench client: add_message p50 <= 2 ms at messages {last_range or '1901-2000'}",
        last,
        2,
        " ms",
    )
    contexts = _get(peer, "get_session_context") or {}
    most_archives = max(contexts, key=int, default=None)
    row(
        "bench_client_context",
        f"bench client: get_session_context p50 <= 5 ms at {most_archives or 50} archives",
        _get(contexts, most_archives, "p50_ms") if most_archives else None,
        5,
        " ms",
    )
    recall = report.get("recall") or {}
    store = recall.get("store") or {}
    for face, label in (("engine", "engine"), ("mcp_in_process", "MCP in process")):
        for scenario, what in SEARCH_SCENARIOS.items():
            if scenario == "locomo_user" and face != "engine":
                continue
            row(
                f"search_{face}_{scenario}",
                f"search ({label}), {what.format(**store) if store else what}: p50 <= 10 ms",
                _get(recall, face, scenario, "p50_ms"),
                10,
                " ms",
            )
    return rows  # fmt: skip


# What each search scenario of benchmarks/recall_latency.py is, for the targets' table.
SEARCH_SCENARIOS = {
    "session_10k": "in a 10,000-message session",
    "locomo_session": "in one LoCoMo session",
    "locomo_store": "over every session of {sessions} ({messages:,} messages)",
    "locomo_user": "over one user's sessions (tenant filter) of {sessions}",
}


def _verdict(measured: float | None, limit: float, at_most: bool) -> str:
    if measured is None:
        return "not measured"
    return "met" if (measured <= limit if at_most else measured >= limit) else "NOT MET"


def _shown(measured: float | None, unit: str) -> str:
    return "-" if measured is None else f"{measured:,.3f}".rstrip("0").rstrip(".") + unit


def judge_runs(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of a report; of several runs (`--repeat`), each judged on the median of
    the runs' values, with every run's value shown."""
    runs = [judge(one) for one in (report, *report.get("other_runs", []))]
    if len(runs) == 1:
        return runs[0]
    combined = []
    for rows in zip(*runs, strict=True):
        first = rows[0]
        values = [r["value"] for r in rows if r["value"] is not None]
        median = round(statistics.median(values), 3) if values else None
        each = ", ".join(_shown(r["value"], "") for r in rows)
        combined.append(
            {
                **first,
                "measured": f"{_shown(median, first['unit'])} (runs: {each})",
                "value": median,
                "verdict": _verdict(median, first["limit"], first["at_most"]),
            }
        )
    return combined


# --- markdown -------------------------------------------------------------------------------------------------


def _ms(entry: Any, key: str = "p50_ms") -> str:
    value = _get(entry, key)
    return "-" if value is None else f"{value:.3f}"


def _repeat_note(report: dict[str, Any]) -> list[str]:
    others = report.get("other_runs", [])
    if not others:
        return []
    starts = "; ".join(
        f"{r['machine']['date']}, load average {r['machine']['load_average_at_start']}, {r['total_seconds']} s"
        for r in others
    )
    return [
        f"**{len(others) + 1} runs** (`--repeat {len(others) + 1}`; the others: {starts}). Each target is judged "
        "on the median of the runs' values, every run's value in brackets; the tables below are the first run's.",
        "",
    ]


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    sizes = report["sizes"]
    faces = report["faces"]
    names = [n for n in FACES if n in faces]
    lines = [
        f"# viking-mcp benchmarks ({report['mode']} run)",
        "",
        f"{m['date']}; {m['cpu_count']} CPUs ({m['cpu_model']}), {m['os']}; Python {m['python']}, "
        f"SQLite {m['sqlite']}, mcp {m['mcp']}; viking-mcp {m['viking_mcp']} at {m['git_commit']}; "
        f"load average at start {m['load_average_at_start']}; {report['total_seconds']} s in all.",
        "",
        *_repeat_note(report),
        "## Targets",
        "",
        "| target | measured | verdict |",
        "|---|---:|---|",
        *(f"| {t['target']} | {t['measured']} | {t['verdict']} |" for t in report["targets"]),
        "",
        "## Latency by face (ms: p50 / p95 / p99)",
        "",
        "| operation | " + " | ".join(faces[n]["face"] for n in names) + " |",
        "|---|" + "---:|" * len(names),
    ]

    def cells(*path: str) -> str:
        out = []
        for name in names:
            entry = _get(faces[name], *path)
            out.append("-" if not entry else f"{_ms(entry)} / {_ms(entry, 'p95_ms')} / {_ms(entry, 'p99_ms')}")
        return " | ".join(out)

    for end in sizes["windows"]:
        lines.append(f"| add_message, messages {end - 99:,}-{end:,} | {cells('add_message', f'{end - 99}-{end}')} |")
    lines.append(f"| add_message, all {sizes['growth']:,} | {cells('add_message', 'all')} |")
    lines.append(
        "| add_message, messages 1-100 of a new session, in turns with the last window | "
        + cells("add_message_first_100_alongside")
        + " |"
    )
    lines.append(
        "| add_message p50, last window / a new session's first 100 | "
        + " | ".join(f"{faces[n]['add_message_growth_ratio']:.2f}" for n in names)
        + " |"
    )
    lines.append(f"| commit Phase 1, 100 live messages | {cells('commit_100', 'phase1')} |")
    lines.append(f"| commit Phase 1, {sizes['growth']:,} live messages | {cells('commit_large', 'phase1')} |")
    lines.append(f"| commit Phase 2 (offline summariser), 100 messages | {cells('commit_100', 'phase2')} |")
    lines.append(
        f"| commit Phase 2 (offline summariser), {sizes['growth']:,} messages | {cells('commit_large', 'phase2')} |"
    )
    lines.append(f"| expand_archive, {sizes['expand_messages']:,} messages | {cells('expand_archive')} |")
    for count in sizes["context_archives"]:
        lines.append(
            f"| get_context, {count:,} archives + {sizes['live_messages']} live | {cells('get_context', str(count))} |"
        )
    cold = report["cold_start"]
    trips = report["stdio_round_trip"]
    lines += [
        "",
        f"Phase 2 of a server face is measured from the commit's answer until get_task reports it completed "
        f"(polled every 5 ms); the engine face runs it in the calling thread. get_context spends a budget of "
        f"{report['context_token_budget']:,} tokens (the MCP default).",
        "",
        "## Process: start, memory, the bare MCP server",
        "",
        "| | viking-mcp | bare MCPServer (one no-op tool) |",
        "|---|---:|---:|",
        f"| cold start to first tools/list over stdio, median of {cold['runs']} (s) | "
        f"{cold['ours']['seconds_median']:.3f} | {cold['bare']['seconds_median']:.3f} |",
        f"| CPU time to first tools/list, median (s) | {cold['ours']['cpu_seconds_median']:.3f} | "
        f"{cold['bare']['cpu_seconds_median']:.3f} |",
        f"| resident memory, idle 1 s after tools/list (MiB) | {cold['ours']['rss_mib_median']} | "
        f"{cold['bare']['rss_mib_median']} |",
        f"| tool round trip over stdio, in turns, p50 / p99 (ms) | "
        f"{_ms(trips['add_message'])} / {_ms(trips['add_message'], 'p99_ms')} (add_message) | "
        f"{_ms(trips['bare_noop'])} / {_ms(trips['bare_noop'], 'p99_ms')} (no-op) |",
    ]
    for name in ("mcp_stdio", "http"):
        if name in faces:
            f = faces[name]
            lines.append(
                f"| {f['face']} server resident memory: start / after a {sizes['growth']:,}-message session / "
                f"at the end (MiB) | {f.get('rss_mib_at_start')} / {f.get('rss_mib_after_growth')} / "
                f"{f.get('rss_mib_at_end')} | |"
            )
    lines += [
        "",
        "## HTTP throughput of add_message (one keep-alive connection per client)",
        "",
        "| clients | sessions | messages/s | server CPU ms per message | sent | stored | lost |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for entry in report["http_throughput"].values():
        if isinstance(entry, dict):
            lines.append(
                f"| {entry['clients']} | {'one shared' if entry['shared_session'] else 'distinct'} | "
                f"{entry['messages_per_second']:,.0f} | {entry['server_cpu_ms_per_message']:.3f} | "
                f"{entry['messages_sent']:,} | {entry['messages_stored']:,} | {entry['lost']} |"
            )
    recall = report.get("recall") or {}
    lines += ["", "## Search (benchmarks/recall_latency.py; ms: p50 / p95 / p99)", ""]
    if "engine" in recall:
        store = recall["store"]
        lines += [
            f"A store of {store['sessions']} sessions, {store['messages']:,} messages (built in {store['seconds']} s); "
            f"{recall['limit']} results within {recall['token_budget']:,} tokens per search."
            + (f" The figures were {recall['measured_separately']}." if recall.get("measured_separately") else ""),
            "",
            "| search | engine | MCP in process |",
            "|---|---:|---:|",
        ]
        for scenario, what in SEARCH_SCENARIOS.items():
            shown = []
            for face in ("engine", "mcp_in_process"):
                entry = recall.get(face, {}).get(scenario)
                shown.append("-" if not entry else f"{_ms(entry)} / {_ms(entry, 'p95_ms')} / {_ms(entry, 'p99_ms')}")
            lines.append(f"| {what.format(**store)} | {' | '.join(shown)} |")
    else:
        lines.append(f"Not run: {recall}")
    peer = report["peer_bench_client"]
    ov = report["openviking"]
    lines += ["", "## The OpenViking bench client (session_api_bench.py): ours and OpenViking 0.5.2", ""]
    if "summary" in peer or "add_message_first_100" in peer:
        ctx = peer.get("get_session_context") or {}
        rss = peer.get("server_rss_kib") or {}
        lines += [
            f"Ours: `{peer.get('mode')}` mode, {peer.get('http_errors')} HTTP errors, "
            f"{peer.get('total_wall_seconds')} s. OpenViking: {ov['source']}.",
            "",
            "| operation | viking-mcp p50 / p99 (ms) | OpenViking p50 / p99 (ms) |",
            "|---|---:|---:|",
            f"| create_session | {_ms(peer.get('create_session'))} / {_ms(peer.get('create_session'), 'p99_ms')} | "
            f"{ov['create_session_p50_ms']} / - |",
            f"| add_message, messages 1-100 | {_ms(peer.get('add_message_first_100'))} / "
            f"{_ms(peer.get('add_message_first_100'), 'p99_ms')} | {ov['add_message_first_100_p50_ms']} / "
            f"{ov['add_message_first_100_p99_ms']} |",
            f"| add_message, messages {peer.get('add_message_last_range')} (OpenViking: 1901-2000) | "
            f"{_ms(peer.get('add_message_last_100'))} / {_ms(peer.get('add_message_last_100'), 'p99_ms')} | "
            f"{ov['add_message_last_100_p50_ms']} / {ov['add_message_last_100_p99_ms']} |",
            f"| commit (Phase 1 call), 100-message session | {_ms(peer.get('commit_phase1'))} / "
            f"{_ms(peer.get('commit_phase1'), 'p99_ms')} | {ov['commit_phase1_p50_ms']} / 131.1 |",
            *(
                f"| get_session_context, {n} archives + 20 live | {_ms(v)} / {_ms(v, 'p99_ms')} | "
                f"{ov['get_session_context_p50_ms'].get(n, '-')} / - |"
                for n, v in sorted(ctx.items(), key=lambda kv: int(kv[0]))
            ),
            f"| get_session_context, all messages live | {_ms(peer.get('get_session_context_all_live'))} / - | "
            f"{ov['get_session_context_all_live_p50_ms']} / - |",
            f"| start to first /health 200 (s) | {peer.get('start_to_health_seconds')} | "
            f"{ov['start_to_health_seconds']} |",
            f"| server resident memory before / after the run (MiB) | "
            f"{round(rss['before'] / 1024) if rss.get('before') else '-'} / "
            f"{round(rss['after'] / 1024) if rss.get('after') else '-'} | {ov['rss_idle_mib']} (idle) |",
        ]
    else:
        lines.append(f"Not run: {peer}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every measurement")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help=f"where latest.json/.md go (default {RESULTS})")
    parser.add_argument(
        "--faces", default=",".join(FACES), help=f"comma list of faces to measure (default all: {','.join(FACES)})"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (data, server logs)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run everything N times and judge each target on the median of the runs (a busy machine)",
    )
    parser.add_argument(
        "--render", action="store_true", help="measure nothing: judge and write latest.md again from latest.json"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.render:
        report = json.loads((args.out_dir / "latest.json").read_text())
        report["targets"] = judge_runs(report)
        (args.out_dir / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out_dir / "latest.md").write_text(markdown(report))
        sys.stdout.write(markdown(report))
        return 0
    args.faces = [f.strip() for f in args.faces.split(",") if f.strip()]
    unknown = set(args.faces) - set(FACES)
    if unknown:
        parser.error(f"unknown faces {sorted(unknown)}; use {', '.join(FACES)}")
    sizes = fixtures.QUICK if args.quick else fixtures.FULL
    reports = []
    for run in range(args.repeat):
        if args.repeat > 1:
            log(f"run {run + 1} of {args.repeat}")
        workdir = Path(scratch_dir())
        try:
            reports.append(asyncio.run(measure(args, sizes, workdir)))
        finally:
            if args.keep:
                log(f"scratch directory kept: {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    report = reports[0]
    if len(reports) > 1:  # the first run's tables; targets judged on the median of all
        report = {**report, "repeat": len(reports), "other_runs": reports[1:]}
        report["targets"] = judge_runs(report)
    text = markdown(report)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / "latest.md").write_text(text)
    sys.stdout.write(text)
    log(f"wrote {args.out_dir / 'latest.json'} and {args.out_dir / 'latest.md'}")
    return 0
