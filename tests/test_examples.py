"""The example and the benchmark run as documented: as scripts, in their own processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_script(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    # No VIKING_MCP_* settings from the caller's environment leak into the run.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIKING_MCP_")}
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
def test_agent_loop_example_commits_and_rebuilds_context(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = run_script("examples/agent_loop.py", "--home", str(home), timeout=50)
    assert done.returncode == 0, done.stderr
    out = done.stdout

    assert "[commit] archive_001:" in out
    assert "[task] session_commit completed" in out
    assert "[context] rebuilt within" in out
    # A rebuilt context shows the latest archive's overview, with its text; a later one
    # carries the earlier archive forward.
    assert out.count("<overview>\n  | ## archive_001, ") >= 4  # after each of the four commits
    assert "  | ## archive_004, " in out
    # The first archive reads back in full, from the start of the conversation.
    expanded = out.split("=== expand_archive archive_001", 1)[1].replace("\n  | ", " ")  # unwrapped
    assert "/history/archive_001): completed, 10 messages " in expanded
    assert "] user: Hi! I'm Maya." in expanded
    # The data went where --home said.
    assert (home / "viking.db").exists()


@pytest.mark.slow
def test_append_cost_benchmark_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "append_cost.json"
    done = run_script("benchmarks/append_cost.py", "--messages", "300", "--out", str(out), timeout=50)
    assert done.returncode == 0, done.stderr
    assert "| session | appends | p50 ms | p95 ms | p99 ms |" in done.stdout

    report = json.loads(out.read_text())
    assert report["benchmark"] == "append_cost"
    assert report["messages"] == 300
    assert {"date", "python", "platform", "cpu_count"} <= report["environment"].keys()
    for name in ("live", "with_commits"):
        section = report[name]
        assert section["messages"] == 300
        assert section["p50_ratio_last_over_first"] > 0
        for window in ("first", "last"):
            assert {"appends", "p50_ms", "p95_ms", "p99_ms"} <= section[window].keys()
            assert 0 < section[window]["p50_ms"] <= section[window]["p95_ms"] <= section[window]["p99_ms"]
    assert report["live"]["first"]["appends"] == "1-100"
    assert report["live"]["last"]["appends"] == "201-300"
    # 300 messages is under one commit interval: no commits, but the final Phase 1 is timed.
    assert report["with_commits"]["commits"] == []
    assert report["commit_phase1"]["status"] == "accepted"
    assert report["commit_phase1"]["archived_messages"] == 300
    assert report["commit_phase1"]["ms"] > 0
