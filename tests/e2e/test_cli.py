"""The CLI in subprocesses against a real server: agents, runs, live output, saved credentials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from agentruns.testing.process import ServerProcess
from agentruns.testing.server import FakeServer
from e2e.conftest import Api

SLOW = " ".join(f"tok{i}" for i in range(30))


def cli(server: ServerProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # No key in the environment: the CLI must find what `serve` saved on its first start.
    env = {k: v for k, v in server.env.items() if not k.startswith("AGENTRUNS_API")}
    return subprocess.run(
        [sys.executable, "-m", "agentruns", *args],
        env=env,
        cwd=server.workdir,
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
    )


def test_agents_and_runs_through_the_cli(
    server: ServerProcess, tmp_path: Path, fake_model: FakeServer
) -> None:
    spec = tmp_path / "agent.yaml"
    spec.write_text("name: greeter\ninstructions: Greet people.\nprompt: Say hello to {{name}}\n")
    agent_id = cli(server, "agents", "create", "-f", str(spec)).stdout.strip()
    assert "greeter" in cli(server, "agents", "list").stdout
    assert json.loads(cli(server, "agents", "show", agent_id).stdout)["name"] == "greeter"

    run_id = cli(server, "run", agent_id, "--var", "name=Ada").stdout.strip()
    Api(server).wait(run_id)
    shown = json.loads(cli(server, "runs", "show", run_id).stdout)
    assert shown["last_agent_message"] == "echo: Say hello to Ada"
    assert run_id[:8] in cli(server, "runs", "list", "--status", "completed").stdout

    continued = cli(server, "runs", "continue", run_id, "--message", "again", "--follow")
    assert continued.stdout.strip() == "echo: again"

    missing = cli(server, "run", agent_id, check=False)
    assert missing.returncode == 1
    assert "name" in missing.stderr and "Traceback" not in missing.stderr


def test_run_follow_prints_tokens_live(server: ServerProcess, fake_model: FakeServer) -> None:
    fake_model.script({"text": SLOW, "token_delay_s": 0.05})
    api = Api(server)
    agent = api.agent(prompt="stream please")
    env = {k: v for k, v in server.env.items() if not k.startswith("AGENTRUNS_API")}
    process = subprocess.Popen(
        [sys.executable, "-m", "agentruns", "run", agent["id"], "--follow"],
        env=env,
        cwd=server.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    # The first words arrive while the model is still streaming, not all at the end.
    first = os.read(process.stdout.fileno(), 4)  # unbuffered: communicate() reads the rest
    first_at = time.monotonic()
    rest, err = process.communicate(timeout=60)
    finished_at = time.monotonic()
    assert process.returncode == 0, err
    assert (first + rest).decode().strip() == SLOW
    assert finished_at - first_at > 0.5


def test_cancel_through_the_cli(server: ServerProcess, fake_model: FakeServer) -> None:
    fake_model.script({"text": "late", "first_token_delay_s": 5})
    api = Api(server)
    agent = api.agent(prompt="slow")
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
    cli(server, "runs", "cancel", run["id"])
    assert api.ok("GET", f"/v1/agent-runs/{run['id']}")["status"] == "cancelled"
    again = cli(server, "runs", "cancel", run["id"], check=False)
    assert again.returncode == 1 and "conflict" in again.stderr
