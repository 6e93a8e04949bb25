"""benchmarks/recall.py, run the way a person runs it, on one LoCoMo conversation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LOCOMO = REPO.parent / "shared" / "data" / "locomo10.zip"


@pytest.mark.slow
def test_recall_benchmark_scores_one_conversation_within_budget(tmp_path: Path) -> None:
    if not LOCOMO.exists():
        pytest.skip(f"{LOCOMO} not present")
    run = subprocess.run(
        [sys.executable, "benchmarks/recall.py", "--conversations", "1", "--out-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]  # it exits non-zero when any reading is over its budget
    assert "conversation 26" in run.stderr and "## Targets" in run.stdout and "## Per category" in run.stdout

    result = json.loads((tmp_path / "recall.json").read_text())
    totals = result["totals"]
    names = {"search", "search_mcp", "bm25_500", "bm25_dated_500"} | {
        f"{kind}_{budget}" for kind in ("context_query", "context", "bm25", "bm25_dated") for budget in (1000, 2000)
    }
    assert set(totals) == names
    questions = totals["search"]["overall"]["questions"]
    assert questions > 50
    for name in names:
        overall = totals[name]["overall"]
        assert overall["questions"] == questions and 0 <= overall["retained"] <= questions
    # What search and get_context with the question find is more than recency alone keeps.
    assert totals["search"]["overall"]["rate"] > totals["bm25_500"]["overall"]["rate"]
    assert totals["context_query_1000"]["overall"]["rate"] > totals["context_1000"]["overall"]["rate"]
    markdown = (tmp_path / "recall.md").read_text()
    assert "| search, 500 tokens |" in markdown and "BM25 over dated turns" in markdown
