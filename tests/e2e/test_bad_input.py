"""Every bad input gets a clear error, and nothing stored changes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest
import requests

from agentruns.testing.process import ServerProcess
from e2e.conftest import Api


def snapshot(api: Api) -> Any:
    return (api.ok("GET", "/v1/agents"), api.ok("GET", "/v1/agent-runs?limit=100"))


@pytest.fixture
def seeded(api: Api) -> tuple[dict[str, Any], dict[str, Any]]:
    agent = api.agent(prompt="hello")
    run = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"]})
    api.wait(run["id"])
    return agent, api.ok("GET", f"/v1/agent-runs/{run['id']}")


def other_project_key(server: ServerProcess) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "agentruns", "keys", "create", "--project", "other"],
        env=server.env,
        cwd=server.workdir,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    key = out.stdout.strip()
    assert key.startswith("ar_") and "\n" not in key  # only the key on stdout
    return key


def test_bad_inputs_answer_clearly_and_change_nothing(
    server: ServerProcess, api: Api, seeded: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    agent, run = seeded
    runs_url = "/v1/agent-runs"
    before = snapshot(api)
    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        (
            "POST",
            runs_url,
            {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
            "",
        ),
        ("POST", runs_url, {"json": {"chat_id": agent["id"], "bogus": 1}}, 422, "bogus"),
        ("POST", runs_url, {"json": {"vars": {}}}, 422, "chat_id"),
        ("POST", runs_url, {"json": {"chat_id": agent["id"], "vars": []}}, 422, "vars"),
        (
            "POST",
            runs_url,
            {"json": {"chat_id": agent["id"], "environment": "prod"}},
            422,
            "environment",
        ),
        (
            "POST",
            runs_url,
            {"json": {"chat_id": agent["id"], "callback_url": "ftp://x"}},
            422,
            "callback_url",
        ),
        ("POST", runs_url, {"json": {"chat_id": "no-such-agent"}}, 404, "no-such-agent"),
        (
            "POST",
            runs_url,
            {"json": {"chat_id": agent["id"], "message": "x" * (1024 * 1024 + 1)}},
            413,
            "",
        ),
        ("GET", runs_url + "?status=done", {}, 422, "status"),
        ("GET", runs_url + "?after=nope", {}, 422, "after"),
        ("GET", runs_url + "?limit=0", {}, 422, "limit"),
        ("GET", f"{runs_url}/no-such-run", {}, 404, "no-such-run"),
        ("PUT", f"{runs_url}/{run['id']}", {"json": {"message": ""}}, 422, "message"),
        ("PUT", f"{runs_url}/{run['id']}", {"json": {}}, 422, "message"),
        ("POST", f"{runs_url}/{run['id']}/cancel", {}, 409, "completed"),
        ("POST", "/v1/agents", {"json": {"name": "x", "model": "nosuch:model"}}, 422, "model"),
        (
            "POST",
            "/v1/agents",
            {"json": {"name": "x", "tools": [{"type": "builtin", "name": "nope"}]}},
            422,
            "nope",
        ),
        ("POST", "/v1/agents", {"json": {"name": "x", "max_steps": 0}}, 422, "max_steps"),
        ("POST", "/v1/agents", {"json": {"instructions": "no name"}}, 422, "name"),
        ("PATCH", f"/v1/agents/{agent['id']}", {"json": {"name": None}}, 422, "name"),
        ("PATCH", "/v1/agents/no-such-agent", {"json": {"name": "y"}}, 404, "no-such-agent"),
        ("POST", f"/v1/agents/{agent['id']}/publish", {"json": {"version": 9}}, 422, "version"),
    ]
    for method, path, kwargs, status, mentions in cases:
        response = api.call(method, path, **kwargs)
        assert response.status_code == status, (method, path, response.text)
        error = response.json()["error"]
        assert set(error) == {"type", "message", "details"}, error
        assert mentions in error["message"] + str(error["details"]), (path, error)
    assert snapshot(api) == before


def test_auth_and_project_scoping(
    server: ServerProcess, api: Api, seeded: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    agent, run = seeded
    before = snapshot(api)
    url = f"{server.url}/v1/agent-runs/{run['id']}"
    assert requests.get(url, timeout=5).status_code == 401
    wrong = requests.get(url, headers={"Authorization": "Bearer ar_wrong"}, timeout=5)
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"

    other = Api(server, other_project_key(server))
    for method, path, body in [
        ("GET", f"/v1/agent-runs/{run['id']}", None),
        ("PUT", f"/v1/agent-runs/{run['id']}", {"message": "hi"}),
        ("POST", f"/v1/agent-runs/{run['id']}/cancel", None),
        ("GET", f"/v1/agent-runs/{run['id']}/events", None),
        ("GET", f"/v1/agents/{agent['id']}", None),
        ("DELETE", f"/v1/agents/{agent['id']}", None),
        ("POST", "/v1/agent-runs", {"chat_id": agent["id"]}),
    ]:
        response = other.call(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)
    assert other.ok("GET", "/v1/agent-runs") == []
    assert snapshot(api) == before


def test_idempotency_key_over_http(api: Api, seeded: tuple[dict[str, Any], dict[str, Any]]) -> None:
    agent, _ = seeded
    body = {"chat_id": agent["id"], "message": "once"}
    key = {"Idempotency-Key": "order-42"}
    first = api.ok("POST", "/v1/agent-runs", json=body, headers=key)
    second = api.ok("POST", "/v1/agent-runs", json=body, headers=key)
    assert first["id"] == second["id"]
    api.wait(first["id"])  # the run's own progress would change the snapshot
    before = snapshot(api)
    clash = api.call("POST", "/v1/agent-runs", json={**body, "message": "twice"}, headers=key)
    assert clash.status_code == 409 and "Idempotency-Key" in clash.json()["error"]["message"]
    assert snapshot(api) == before


def test_revoked_key_is_refused(server: ServerProcess) -> None:
    key = other_project_key(server)
    assert requests.get(
        f"{server.url}/v1/agents", headers={"Authorization": f"Bearer {key}"}, timeout=5
    ).ok
    env = {**os.environ, **server.env}
    listed = subprocess.run(
        [sys.executable, "-m", "agentruns", "keys", "list"],
        env=env,
        cwd=server.workdir,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert key[:10] in listed and key not in listed
    subprocess.run(
        [sys.executable, "-m", "agentruns", "keys", "revoke", key[:10]],
        env=env,
        cwd=server.workdir,
        check=True,
        capture_output=True,
        timeout=60,
    )
    # A server remembers a valid key for AGENTRUNS_AUTH_CACHE_S (5 s by default).
    deadline = time.monotonic() + 8
    while True:
        refused = requests.get(
            f"{server.url}/v1/agents", headers={"Authorization": f"Bearer {key}"}, timeout=5
        )
        if refused.status_code == 401 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert refused.status_code == 401
