"""End-to-end fixtures: real `agentruns serve` processes and a fake OpenAI-compatible model."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from agentruns.testing import fake_openai
from agentruns.testing.process import ServerProcess
from agentruns.testing.server import FakeServer, start_in_thread


@pytest.fixture
def fake_model() -> Iterator[FakeServer]:
    with start_in_thread(fake_openai.create_app()) as server:
        yield server


def server_env(fake: FakeServer) -> dict[str, str]:
    return {
        "OPENAI_BASE_URL": fake.url,
        "OPENAI_API_KEY": "sk-fake",
        "AGENTRUNS_DEFAULT_MODEL": "openai:fake-model",
        "AGENTRUNS_LEASE_SECONDS": "2",
        "AGENTRUNS_POLL_INTERVAL_S": "0.2",
        "AGENTRUNS_SSE_HEARTBEAT_S": "1",
        # Webhook receivers in the tests listen on 127.0.0.1.
        "AGENTRUNS_WEBHOOK_ALLOW_PRIVATE": "true",
    }


@pytest.fixture
def server(tmp_path: Path, fake_model: FakeServer) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path, env=server_env(fake_model)) as process:
        yield process


class Api:
    """A tiny `requests` wrapper bound to one server and key, as a user would write."""

    def __init__(self, server: ServerProcess, key: str | None = None) -> None:
        self.base = server.url
        self.headers = {"Authorization": f"Bearer {key or server.api_key}"}

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return requests.request(method, self.base + path, headers=headers, timeout=10, **kwargs)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.call(method, path, **kwargs)
        assert response.status_code in (200, 201), response.text
        return response.json()["data"]

    def agent(self, **fields: Any) -> dict[str, Any]:
        return self.ok("POST", "/v1/agents", json={"name": "agent", **fields})

    def wait(
        self,
        run_id: str,
        until: Callable[[dict[str, Any]], bool] | None = None,
        timeout_s: float = 20,
    ) -> dict[str, Any]:
        done = until or (lambda run: run["status"] in ("completed", "failed", "cancelled"))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.ok("GET", f"/v1/agent-runs/{run_id}")
            if done(run):
                return run
            time.sleep(0.05)
        raise AssertionError(f"run {run_id} did not get there in {timeout_s} s: {run}")


@pytest.fixture
def api(server: ServerProcess) -> Api:
    return Api(server)
