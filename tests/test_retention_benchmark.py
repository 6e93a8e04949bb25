"""benchmarks/retention.py, run the way a person runs it, on one LoCoMo conversation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LOCOMO = REPO.parent / "shared" / "data" / "locomo10.zip"


@pytest.mark.slow
def test_retention_benchmark_scores_one_conversation_within_budget(tmp_path: Path) -> None:
    if not LOCOMO.exists():
        pytest.skip(f"{LOCOMO} not present")
    run = subprocess.run(
        [sys.executable, "benchmarks/retention.py", "--conversations", "1", "--budgets", "1000,4000",
         "--out-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "### 1,000 tokens" in run.stdout and "| last N tokens |" in run.stdout
    assert "conversation 26" in run.stderr  # progress goes to stderr, the table to stdout

    result = json.loads((tmp_path / "retention.json").read_text())
    assert result["budgets"] == [1000, 4000]
    for name in ("mcp", "ours", "truncation", "ceiling"):
        for budget in ("1000", "4000"):
            overall = result["totals"][name][budget]["overall"]
            assert overall["questions"] > 50 and 0 <= overall["retained"] <= overall["questions"]
            assert set(result["totals"][name][budget]["per_category"]) == {"1", "2", "3", "4"}
    assert result["totals"]["ceiling"]["1000"]["overall"]["rate"] == 1.0  # only answerable questions count
    for budget, checks in result["conversations"]["26"]["budgets"].items():
        assert 0 < checks["payload_tokens"] <= int(budget)
        assert 0 < checks["rendered_tokens"] <= int(budget)  # what the model reads over MCP
        assert checks["overview_tokens"] > 0
        named = checks["attribution"]
        assert named["checked"] > 0 and named["correct"] == named["checked"], named["mistakes"]
    assert set(result["speaker_attribution"]) == {"1000", "4000"}
    assert "| speaker attribution |" in run.stdout

    markdown = (tmp_path / "retention.md").read_text()
    assert "## Sample: conversation 26 at 4,000 tokens" in markdown
    assert "```text\n<context session=" in markdown and "<overview>" in markdown
