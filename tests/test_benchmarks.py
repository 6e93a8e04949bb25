"""The benchmark suite runs, as a user runs it, and writes every row it promises.

No timing is asserted here: a test machine's speed is not the product's. This checks that
`python -m benchmarks --quick` measures every face and judges every target.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

TARGETS = {
    "cold_start_ratio",
    "cold_start_seconds",
    "idle_rss",
    "stdio_add_message_ratio",
    "engine_add_message_p50",
    "engine_growth_ratio",
    "mcp_stdio_growth_ratio",
    "commit_phase1_large",
    "get_context_archives",
    "http_throughput_16",
    "http_no_message_lost",
    "bench_client_add_message",
    "bench_client_context",
    "tail_add_message_all",
    "tail_get_context_0",
    "tail_get_context_10",
    "tail_get_context_100",
    "tail_get_context_1000",
    *(f"search_engine_{s}" for s in ("session_10k", "locomo_session", "locomo_store", "locomo_user")),
    *(f"search_mcp_in_process_{s}" for s in ("session_10k", "locomo_session", "locomo_store")),
}


@pytest.mark.slow
def test_quick_run_writes_every_row(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((tmp_path / "latest.json").read_text())
    table = (tmp_path / "latest.md").read_text()
    assert completed.stdout == table

    assert report["mode"] == "quick"
    assert {"cpu_count", "cpu_model", "python", "sqlite", "os", "git_commit"} <= report["machine"].keys()
    assert {row["id"] for row in report["targets"]} == TARGETS
    for row in report["targets"]:
        assert row["verdict"] in ("met", "NOT MET"), row  # every target was measured
        assert f"| {row['target']} | {row['measured']} | {row['verdict']} |" in table

    for name in ("engine", "mcp_in_process", "mcp_stdio", "http"):
        face = report["faces"][name]
        assert set(face["add_message"]) == {"1-100", "401-500", "901-1000", "all"}
        assert face["commit_large"]["task_statuses"] == ["completed"]
        assert face["commit_100"]["task_statuses"] == ["completed"]
        assert face["expand_archive"]["messages"] == 1000
        for count in ("0", "10", "100", "1000"):
            assert face["get_context"][count]["stats"]["totalArchives"] == int(count)
    assert report["faces"]["mcp_stdio"]["rss_mib_after_growth"] > 0

    throughput = report["http_throughput"]
    for clients in (1, 4, 16):
        for sessions in ("distinct", "shared"):
            entry = throughput[f"{clients}-{sessions}"]
            assert entry["lost"] == 0 and entry["messages_stored"] == entry["messages_sent"] > 0
    assert report["peer_bench_client"]["http_errors"] == 0
