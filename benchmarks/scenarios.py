"""The measurements. Each returns plain JSON-able dicts; run.py judges them against the targets."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BENCH_CLIENT,
    REPO,
    cpu_seconds,
    message_texts,
    role_of,
    rss_mib,
    server_env,
    summary_ms,
)
from benchmarks.faces import VALIDATE_OUTPUT, Face, HttpServer, JsonClient
from benchmarks.fixtures import Sizes

CONTEXT_BUDGET = 20_000  # the MCP default: what an agent's get_context spends
BARE_SERVER = Path(__file__).resolve().parent / "bare_server.py"
clock = time.perf_counter_ns


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# --- one face, every operation ------------------------------------------------------------------


async def face_scenarios(face: Face, sizes: Sizes) -> dict[str, Any]:
    """add_message growth, commit (Phase 1 and 2), expand_archive and get_context through one face."""
    texts = message_texts(max(sizes.growth, 2_000))
    out: dict[str, Any] = {"face": face.label}
    if face.pid:
        out["rss_mib_at_start"] = rss_mib(face.pid)

    # Warm-up, untimed: the tokenizer, SQLite's caches and every code path once.
    for index in range(100):
        await face.add_message("warmup", role_of(index + 1), texts[index])
    await face.get_context("warmup", CONTEXT_BUDGET)
    await face.wait_task(await face.commit("warmup"))
    await face.expand_archive("warmup", "archive_001", 100)

    # add_message as one session grows. Its last 100 appends take turns with the first 100
    # of a new session, so that the two windows the growth ratio compares see the same
    # machine: measured minutes apart, a neighbour's load alone moved it by a third.
    timings: list[int] = []
    alongside: list[int] = []
    started = time.perf_counter()
    for index in range(sizes.growth):
        if index >= sizes.growth - 100:
            fresh = index - (sizes.growth - 100)
            begin = clock()
            await face.add_message("fresh", role_of(fresh + 1), texts[fresh])
            alongside.append(clock() - begin)
        begin = clock()
        await face.add_message("grow", role_of(index + 1), texts[index])
        timings.append(clock() - begin)
    out["growth_seconds"] = round(time.perf_counter() - started, 2)
    out["add_message"] = {
        f"{end - 99}-{end}": summary_ms(timings[end - 100 : end]) for end in sizes.windows if end <= len(timings)
    }
    out["add_message"]["all"] = summary_ms(timings)
    out["add_message_first_100_alongside"] = summary_ms(alongside)
    last = sizes.windows[-1]
    out["add_message_growth_ratio"] = round(
        out["add_message"][f"{last - 99}-{last}"]["p50_ms"] / out["add_message_first_100_alongside"]["p50_ms"], 3
    )
    if face.pid:
        out["rss_mib_after_growth"] = rss_mib(face.pid)

    # Commit: Phase 1 (the call) and Phase 2 (until its task completes, offline summariser).
    async def commit(session_ids: list[str]) -> dict[str, Any]:
        phase1: list[int] = []
        phase2: list[int] = []
        statuses = []
        for session_id in session_ids:
            begin = clock()
            task_id = await face.commit(session_id)
            middle = clock()
            statuses.append(await face.wait_task(task_id))
            phase1.append(middle - begin)
            phase2.append(clock() - middle)
        return {"phase1": summary_ms(phase1), "phase2": summary_ms(phase2), "task_statuses": sorted(set(statuses))}

    out["commit_large"] = {
        "live_messages": sizes.growth,
        **await commit(["grow", *(f"c10k_{i}" for i in range(sizes.commit_large))]),
    }
    out["commit_100"] = {"live_messages": 100, **await commit([f"c100_{i}" for i in range(sizes.commit_small)])}

    # expand_archive of one archive of 1,000 messages.
    samples = []
    returned = 0
    for _ in range(sizes.reads):
        begin = clock()
        returned = await face.expand_archive("expand", "archive_001", sizes.expand_messages)
        samples.append(clock() - begin)
    out["expand_archive"] = {"messages": returned, **summary_ms(samples)}

    # get_context with 0 / 10 / 100 / 1,000 completed archives and 200 live messages.
    out["get_context"] = {}
    for count in sizes.context_archives:
        samples = []
        cpu: list[int] = []  # the engine's own CPU time, which a busy machine does not inflate
        stats: dict[str, Any] = {}
        for _ in range(sizes.reads):
            begin, cpu_begin = clock(), time.thread_time_ns()
            stats = await face.get_context(f"ctx_{count}", CONTEXT_BUDGET)
            samples.append(clock() - begin)
            cpu.append(time.thread_time_ns() - cpu_begin)
        out["get_context"][str(count)] = {"stats": stats, **summary_ms(samples)}
        if face.name == "engine":
            out["get_context"][str(count)]["cpu_p50_ms"] = summary_ms(cpu)["p50_ms"]
    if face.pid:
        out["rss_mib_at_end"] = rss_mib(face.pid)
    return out


# --- cold start and idle memory, ours and the bare server ------------------------------------------


def _cold_start(command: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Spawn a stdio server, time it to its first tools/list answer, then its memory 1 s later."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=cwd
    )
    assert process.stdin is not None and process.stdout is not None
    try:

        def send(message: dict[str, Any]) -> None:
            assert process.stdin is not None
            process.stdin.write(json.dumps(message).encode() + b"\n")
            process.stdin.flush()

        def answer(request_id: int) -> dict[str, Any]:
            assert process.stdout is not None
            while True:
                line = process.stdout.readline()
                if not line:
                    raise RuntimeError(f"{command} closed stdout before answering")
                message: dict[str, Any] = json.loads(line)
                if message.get("id") == request_id:
                    return message

        client_info = {"name": "viking-bench", "version": "1"}
        params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": client_info}
        send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params})
        answer(1)
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        tools = answer(2)["result"]["tools"]
        seconds = time.perf_counter() - started
        cpu = cpu_seconds(process.pid)  # robust to a busy machine, unlike `seconds`
        time.sleep(1.0)
        return {"seconds": round(seconds, 4), "cpu_seconds": cpu, "rss_mib": rss_mib(process.pid), "tools": len(tools)}
    finally:
        process.kill()
        process.wait()


def cold_starts(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """Alternate ours and the bare server, so that both see the same machine."""
    ours_runs: list[dict[str, Any]] = []
    bare_runs: list[dict[str, Any]] = []
    for attempt in range(sizes.cold_starts + 1):
        home = workdir / f"cold-{attempt}"  # a new data directory each time: the first start of all
        bare = _cold_start([sys.executable, str(BARE_SERVER)], server_env(home), workdir)
        ours = _cold_start([sys.executable, "-m", "viking_mcp"], server_env(home), workdir)
        if attempt:  # the first pair only warms the OS's file cache
            bare_runs.append(bare)
            ours_runs.append(ours)

    def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "seconds_median": round(statistics.median(float(r["seconds"]) for r in runs), 4),
            "cpu_seconds_median": round(statistics.median(float(r["cpu_seconds"]) for r in runs), 4),
            "rss_mib_median": round(statistics.median(float(r["rss_mib"]) for r in runs), 1),
            "tools": runs[0]["tools"],
            "all": runs,
        }

    return {"runs": sizes.cold_starts, "ours": summary(ours_runs), "bare": summary(bare_runs)}


async def stdio_round_trips(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """add_message on viking-mcp and the bare server's no-op tool, both over stdio, same client.

    Both servers run at once and take turns call by call, so that a busy machine weighs on
    both alike; the no-op takes add_message's arguments.
    """
    from mcp import Client, StdioServerParameters

    def params(args: list[str], home: Path) -> StdioServerParameters:
        return StdioServerParameters(command=sys.executable, args=args, env=server_env(home), cwd=str(workdir))

    texts = message_texts(sizes.round_trips + 50)
    samples: dict[str, list[int]] = {"ours": [], "bare": []}
    async with (
        Client(params(["-m", "viking_mcp"], workdir / "round-trip-home")) as ours,
        Client(params([str(BARE_SERVER)], workdir / "round-trip-bare")) as bare,
    ):
        if not VALIDATE_OUTPUT:  # as in the faces: the client's own schema check is not measured
            for client in (ours, bare):
                listed = await client.list_tools()
                client.session._tool_output_schemas.update(dict.fromkeys(t.name for t in listed.tools))
        for index, text in enumerate(texts):
            arguments = {"session_id": "round-trip", "role": role_of(index + 1), "content": text}
            for name, client, tool in (("ours", ours, "add_message"), ("bare", bare, "noop")):
                begin = clock()
                result = await client.call_tool(tool, arguments)
                elapsed = clock() - begin
                assert not result.is_error, result.content
                if index >= 50:  # the first 50 of each warm up
                    samples[name].append(elapsed)
    return {"add_message": summary_ms(samples["ours"]), "bare_noop": summary_ms(samples["bare"])}


# --- HTTP throughput ------------------------------------------------------------------------------------


async def _client(port: int, session_id: str, count: int, texts: list[str]) -> None:
    """One keep-alive connection appending `count` messages, each after the previous answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for index in range(count):
            body = json.dumps({"role": role_of(index + 1), "content": texts[index % len(texts)]}).encode()
            head = (
                f"POST /api/v1/sessions/{session_id}/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
            headers = await reader.readuntil(b"\r\n\r\n")
            if not headers.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"add_message answered {headers[:60]!r}")
            length = next(
                int(line.split(b":", 1)[1])
                for line in headers.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
    finally:
        writer.close()


async def http_throughput(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """add_message/s with 1, 4 and 16 concurrent clients, on distinct sessions and on one shared session."""
    server = HttpServer(workdir / "throughput-home", workdir / "throughput-server.log")
    server.start()
    texts = message_texts(500)
    out: dict[str, Any] = {}
    try:
        checker = JsonClient(server.port)
        # Warm-up: the tokenizer and the server's thread pool.
        await asyncio.gather(*(_client(server.port, f"warm-{i}", 50, texts) for i in range(4)))
        for clients in (1, 4, 16):
            for shared in (False, True):
                per_client = max(1, sizes.throughput_messages // clients)
                tag = f"{clients}-{'shared' if shared else 'distinct'}"
                sessions = [f"tp-{tag}" if shared else f"tp-{tag}-{i}" for i in range(clients)]
                cpu_before = cpu_seconds(server.pid)
                started = time.perf_counter()
                await asyncio.gather(*(_client(server.port, sessions[i], per_client, texts) for i in range(clients)))
                seconds = time.perf_counter() - started
                cpu = cpu_seconds(server.pid) - cpu_before
                sent = clients * per_client
                stored = sum(
                    int(checker.request("GET", f"/api/v1/sessions/{session}")["message_count"])
                    for session in sorted(set(sessions))
                )
                out[tag] = {
                    "clients": clients,
                    "shared_session": shared,
                    "messages_sent": sent,
                    "messages_stored": stored,
                    "lost": sent - stored,
                    "seconds": round(seconds, 3),
                    "messages_per_second": round(sent / seconds, 1),
                    "server_cpu_ms_per_message": round(cpu * 1000 / sent, 3),
                }
        checker.close()
        out["server_rss_mib_at_end"] = rss_mib(server.pid)
    finally:
        server.stop()
    return out


# --- the OpenViking bench client against our HTTP server ---------------------------------------------------------


def peer_bench_client(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """Run ../shared/bench/session_api_bench.py against a fresh `viking-mcp serve --transport http`."""
    if not BENCH_CLIENT.exists():
        return {"skipped": f"{BENCH_CLIENT} is not here (set VIKING_BENCH_SCRIPT)"}
    server = HttpServer(workdir / "peer-home", workdir / "peer-server.log")
    start_seconds = server.start()
    out_file = workdir / "session_api_bench.json"
    command = [
        sys.executable, str(BENCH_CLIENT), "--base-url", f"http://127.0.0.1:{server.port}", "--out", str(out_file),
        "--server-pid", str(server.pid), "--max-seconds", "400", "--task-timeout", "60",
    ]  # fmt: skip
    if sizes.bench_quick:
        command.append("--quick")
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=480, cwd=workdir)
    finally:
        server.stop()
    if not out_file.exists():
        return {"failed": f"exit {completed.returncode}: {completed.stderr[-2000:]}"}
    raw: dict[str, Any] = json.loads(out_file.read_text())

    def p(entry: dict[str, Any] | None, key: str = "p50_ms") -> float | None:
        return None if not entry else entry.get(key)

    growth = raw.get("b_add_message_growth", {})
    contexts = raw.get("d_get_session_context") or {}
    archives = raw.get("e_get_session_archive") or {}
    biggest = max((int(k.split("_")[1]) for k in archives), default=None)
    summary: dict[str, Any] = {
        "mode": raw.get("mode"),
        "http_errors": raw.get("http", {}).get("errors"),
        "start_to_health_seconds": round(start_seconds, 3),
        "create_session": raw.get("a_create_session", {}).get("latency") or raw.get("a_create_session"),
        "add_message_first_100": growth.get("first_100"),
        "add_message_last_100": growth.get("last_100"),
        "add_message_last_range": growth.get("last_100_range"),
        "commit_phase1": raw.get("c_commit", {}).get("phase1_commit_call"),
        "commit_to_task_terminal": raw.get("c_commit", {}).get("commit_to_task_terminal"),
        "get_session_context": {k.split("_")[1]: v.get("latency") for k, v in contexts.items() if isinstance(v, dict)},
        "get_session_context_all_live": growth.get("get_context_with_all_messages_live"),
        "get_session_archive_newest": p(archives.get(f"archives_{biggest}", {}).get("newest"), "latency")
        if biggest
        else None,
        "server_rss_kib": raw.get("server_rss_kb"),
        "total_wall_seconds": raw.get("total_wall_seconds"),
    }
    summary["raw_file"] = "session_api_bench.json"
    return {"summary": summary, "raw": raw}


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="viking-bench-", dir=os.environ.get("VIKING_BENCH_TMP")))


__all__ = ["REPO"]
