"""The README's two set-up commands are true: CI runs the test command verbatim, and the
install command, on a fresh copy in a fresh venv, gives a working stdio server."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import REPO, server_env

README = REPO / "README.md"


def readme_command(marker: str) -> str:
    match = re.search(rf"<!-- readme:{marker} -->\s*```sh\n(.+?)\n```", README.read_text(), re.DOTALL)
    assert match, f"README has no command marked readme:{marker}"
    command = match.group(1).strip()
    assert "\n" not in command, "each set-up step is one command"
    return command


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert readme_command("test") in ci


def test_the_install_command_ends_by_running_the_server() -> None:
    command = readme_command("install-and-run")
    assert command.endswith("&& .venv/bin/viking-mcp")


@pytest.mark.slow
@pytest.mark.anyio
async def test_install_command_on_a_fresh_copy_gives_a_working_server(tmp_path: Path) -> None:
    copy = tmp_path / "viking-mcp"
    shutil.copytree(
        REPO,
        copy,
        ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "__pycache__", ".*_cache"),
    )
    install, run = readme_command("install-and-run").rsplit(" && ", 1)
    # python3 is whatever the machine has (3.11 on CI); the venv is new and empty.
    result = subprocess.run(
        install, shell=True, cwd=copy, capture_output=True, text=True, timeout=900, env=server_env(tmp_path / "h")
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    server = copy / run
    assert server.exists()

    params = StdioServerParameters(command=str(server), args=[], env=server_env(tmp_path / "home"), cwd=str(copy))
    async with Client(params) as client:
        added = await client.call_tool("add_message", {"session_id": "readme", "role": "user", "content": "It works."})
        assert not added.is_error and added.structured_content is not None
        committed = await client.call_tool("commit", {"session_id": "readme", "wait": True})
        assert committed.structured_content is not None
        assert committed.structured_content["task_status"] == "completed"
        context = await client.call_tool("get_context", {"session_id": "readme", "token_budget": 500})
        assert context.structured_content is not None
        text = context.structured_content["context"]
        assert "<overview>\n## archive_001, " in text and "1 archive (" in text


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_the_readme_curl_examples_work(tmp_path: Path) -> None:
    import json
    import sys
    import time
    import urllib.request

    block = re.search(r"<!-- readme:curl -->\s*```sh\n(.+?)\n```", README.read_text(), re.DOTALL)
    assert block, "README has no curl examples marked readme:curl"
    setup, *calls = block.group(1).strip().splitlines()
    key = re.search(r"KEY=(\S+);", setup)
    assert key
    port = _free_port()
    keys = {"keys": {key.group(1): {"account_id": "acme", "user_id": "ada", "agent_id": "claude"}}}
    env = server_env(tmp_path / "home", VIKING_MCP_API_KEYS=json.dumps(keys))
    server = subprocess.Popen(
        [sys.executable, "-m", "viking_mcp", "serve", "--transport", "http", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        script = setup.replace(":1933", f":{port}")
        for call in calls:
            out = subprocess.run(
                ["bash", "-c", f"{script}\n{call}"], capture_output=True, text=True, timeout=60, env=env
            )
            assert out.returncode == 0, (call, out.stderr)
            answer = json.loads(out.stdout)
            assert answer["status"] == "ok", (call, answer)
    finally:
        server.terminate()
        server.wait(timeout=30)
