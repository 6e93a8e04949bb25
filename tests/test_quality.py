"""Lint, format and type checks run with the tests, so CI and a developer see the same."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

BIN = Path(sys.executable).parent


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    executable = BIN / tool
    if not executable.exists():
        found = shutil.which(tool)
        if found is None:
            pytest.skip(f"{tool} is not installed (pip install -e '.[dev]')")
        executable = Path(found)
    return subprocess.run([str(executable), *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_lint_is_clean() -> None:
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    result = run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_types_check_strictly() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
