"""Run limits (max_steps, timeout_s) and model providers, through real server processes.

Every test talks HTTP to a real `agentruns serve` subprocess whose model is a
fake provider server running in this process, so each test can script what
the "provider" answers and inspect what it was sent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentruns.testing import fake_anthropic, fake_openai
from agentruns.testing.process import ServerProcess
from agentruns.testing.server import FakeServer, start_in_thread
from e2e.conftest import Api, server_env
from e2e.sse_reader import Event, read_events

TIME_TOOL = {"type": "builtin", "name": "get_current_time"}


def start_run(api: Api, agent: dict[str, Any], **fields: Any) -> dict[str, Any]:
    run: dict[str, Any] = api.ok("POST", "/v1/agent-runs", json={"agent_id": agent["id"], **fields})
    assert run["status"] == "queued"
    return run


def events_of(server: ServerProcess, run_id: str) -> list[Event]:
    """Every stored event of a finished run (the stream closes after the terminal one)."""
    assert server.api_key is not None
    events = list(read_events(server.url, run_id, server.api_key, timeout_s=10))
    assert [e.id for e in events] == list(range(1, len(events) + 1)), "event ids have gaps"
    return events


def assert_failed(server: ServerProcess, run: dict[str, Any], kind: str) -> dict[str, Any]:
    """The run failed with `kind`, said so last in `results`, and its stream ends `run.failed`."""
    assert run["status"] == "failed", run
    assert run["error"]["type"] == kind, run["error"]
    assert run["completed_at"]
    assert run["results"][-1] == {"type": "error", "error": run["error"]}
    events = events_of(server, run["id"])
    assert [e.type for e in events][-2:] == ["run.status", "run.failed"]
    assert events[-1].data["error"] == run["error"]
    error: dict[str, Any] = run["error"]
    return error


# --- limits -------------------------------------------------------------------------------


def test_max_steps_stops_a_model_that_never_stops_calling_tools(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    fake_model.script(
        *({"tool_calls": [{"name": "get_current_time", "arguments": {}}]} for _ in range(6))
    )
    agent = api.agent(prompt="loop forever", tools=[TIME_TOOL], max_steps=2)
    run = start_run(api, agent)

    done = api.wait(run["id"], timeout_s=10)
    error = assert_failed(server, done, "max_steps")
    assert "max_steps (2)" in error["message"]

    # Two model steps, both answered with a tool call that was executed; then no third call.
    assert len(fake_model.requests()) == 2
    kinds = [r["type"] for r in done["results"]]
    assert kinds == ["tool_call", "tool_output", "tool_call", "tool_output", "error"]
    assert done["usage"]["requests"] == 2
    assert done["last_agent_message"] is None
    types = [e.type for e in events_of(server, run["id"])]
    assert types.count("tool_call.completed") == 2
    assert "run.completed" not in types


@pytest.fixture
def single_slot_server(tmp_path: Path, fake_model: FakeServer) -> Iterator[ServerProcess]:
    """A server whose worker runs one run at a time, so a stuck run would block the next."""
    env = {**server_env(fake_model), "AGENTRUNS_WORKER_CONCURRENCY": "1"}
    with ServerProcess(tmp_path, env=env) as process:
        yield process


def test_timeout_fails_a_slow_run_and_frees_the_worker(
    single_slot_server: ServerProcess, fake_model: FakeServer
) -> None:
    server, api = single_slot_server, Api(single_slot_server)
    fake_model.script({"text": "much too late", "first_token_delay_s": 5})
    slow = api.agent(prompt="slow", timeout_s=1)
    started = time.monotonic()
    run = start_run(api, slow)

    done = api.wait(run["id"], timeout_s=6)
    elapsed = time.monotonic() - started
    error = assert_failed(server, done, "timeout")
    assert "timeout_s (1 s)" in error["message"]
    assert elapsed < 4, f"the 1 s timeout took {elapsed:.1f} s to fail the run"
    assert done["results"] == [{"type": "error", "error": error}]
    assert done["last_agent_message"] is None

    # The abandoned model call does not hold the worker's only slot: a new run completes
    # at once, while the timed-out call would still be waiting for its first token.
    quick = start_run(api, api.agent(prompt="quick"))
    other = api.wait(quick["id"], timeout_s=3)
    assert other["status"] == "completed" and other["last_agent_message"] == "echo: quick"
    assert time.monotonic() - started < 5

    # The failed run stays failed: nothing was written after its terminal event.
    again = api.ok("GET", f"/v1/agent-runs/{run['id']}")
    assert again["status"] == "failed" and again["updated_at"] == done["updated_at"]


def test_timeout_mid_stream_keeps_the_streamed_text_exact(
    tmp_path: Path, fake_model: FakeServer
) -> None:
    """Timeouts that strike while deltas are being written: no text is sent twice.

    Every token is its own write here, so many of these timeouts land inside a
    commit; before the fix, the failure re-sent the text that commit had stored.
    """
    text = " ".join(f"w{i}" for i in range(400))
    env = {**server_env(fake_model), "AGENTRUNS_DELTA_FLUSH_INTERVAL_S": "0"}
    with ServerProcess(tmp_path, env=env) as server:
        api = Api(server)
        count = 12
        fake_model.script(*({"text": text, "token_delay_s": 0.003} for _ in range(count)))
        runs = [
            start_run(api, api.agent(prompt="slow", timeout_s=0.5 + k * 0.0137))
            for k in range(count)
        ]
        for run in runs:
            done = api.wait(run["id"], timeout_s=8)
            assert_failed(server, done, "timeout")
            events = events_of(server, run["id"])
            streamed = "".join(e.data["delta"] for e in events if e.type == "message.delta")
            assert streamed and text.startswith(streamed), streamed[-80:]
            assert "message.completed" not in [e.type for e in events]
            assert done["results"] == [{"type": "error", "error": done["error"]}]
        assert "Traceback" not in server.logs()


# --- provider errors ----------------------------------------------------------------------


def test_rejected_api_key_fails_the_run_with_advice(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    fake_model.script({"error": {"status": 401, "message": "Incorrect API key provided."}})
    run = start_run(api, api.agent(prompt="hello"))

    done = api.wait(run["id"], timeout_s=10)
    error = assert_failed(server, done, "model_error")
    assert "API key" in error["message"] and "401" in error["message"]
    assert "OPENAI_API_KEY" in error["message"]
    assert "Incorrect API key provided." in error["message"]
    assert len(fake_model.requests()) == 1, "a 401 must not be retried"


def test_server_error_is_retried_then_the_run_completes(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    fake_model.script({"error": {"status": 500, "message": "boom"}}, {"text": "second try"})
    run = start_run(api, api.agent(prompt="hello"))

    done = api.wait(run["id"], timeout_s=10)
    assert done["status"] == "completed", done
    assert done["last_agent_message"] == "second try"
    assert done["error"] is None
    assert [r["type"] for r in done["results"]] == ["message"]
    requests = fake_model.requests()
    assert len(requests) == 2
    assert requests[0]["messages"] == requests[1]["messages"]
    types = [e.type for e in events_of(server, run["id"])]
    assert types.count("message.completed") == 1 and types[-1] == "run.completed"


def test_rate_limit_honours_retry_after_then_completes(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    fake_model.script(
        {"error": {"status": 429, "message": "slow down", "retry_after": 1.2}},
        {"text": "after the wait"},
    )
    started = time.monotonic()
    run = start_run(api, api.agent(prompt="hello"))

    done = api.wait(run["id"], timeout_s=10)
    # The computed backoff before a second attempt is at most 0.5 s: waiting longer
    # shows the provider's Retry-After was honoured.
    assert time.monotonic() - started >= 1.2
    assert done["status"] == "completed", done
    assert done["last_agent_message"] == "after the wait"
    assert len(fake_model.requests()) == 2


def test_persistent_server_errors_fail_the_run_after_the_retries(
    server: ServerProcess, api: Api, fake_model: FakeServer
) -> None:
    fake_model.script(*({"error": {"status": 503, "message": "down"}} for _ in range(4)))
    run = start_run(api, api.agent(prompt="hello"))

    done = api.wait(run["id"], timeout_s=12)
    error = assert_failed(server, done, "model_error")
    assert "503" in error["message"] and "gave up after 4 attempts" in error["message"]
    assert len(fake_model.requests()) == 4


# --- providers and per-agent model settings -----------------------------------------------


@pytest.fixture
def fake_claude() -> Iterator[FakeServer]:
    with start_in_thread(fake_anthropic.create_app(require_key="sk-ant-fake")) as fake:
        yield fake


def test_anthropic_agent_calls_a_tool_and_sends_back_a_tool_result(
    tmp_path: Path, fake_model: FakeServer, fake_claude: FakeServer
) -> None:
    fake_claude.configure(mode="tools")
    env = {
        **server_env(fake_model),
        "ANTHROPIC_BASE_URL": fake_claude.url,
        "ANTHROPIC_API_KEY": "sk-ant-fake",  # the fake refuses any other x-api-key
    }
    with ServerProcess(tmp_path, env=env) as server:
        api = Api(server)
        agent = api.agent(
            prompt="what time is it?", model="anthropic:claude-test", tools=[TIME_TOOL]
        )
        run = start_run(api, agent)
        done = api.wait(run["id"], timeout_s=10)
        events = events_of(server, run["id"])

    assert done["status"] == "completed", done
    assert [r["type"] for r in done["results"]] == ["tool_call", "tool_output", "message"]
    call, output = done["results"][0], done["results"][1]
    assert call["name"] == "get_current_time" and call["id"].startswith("toolu_")
    assert done["last_agent_message"] == "done: " + output["output"]
    assert fake_model.requests() == [], "the OpenAI fake must not be used"

    first, second = fake_claude.requests()
    assert first["model"] == "claude-test" and first["stream"] is True
    assert [t["name"] for t in first["tools"]] == ["get_current_time"]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert second["messages"][1]["content"][-1]["type"] == "tool_use"
    (result,) = second["messages"][2]["content"]
    assert result["type"] == "tool_result"
    assert result["tool_use_id"] == call["id"]
    assert output["output"] in str(result["content"])
    assert [e.type for e in events].count("tool_call.completed") == 1


def test_per_agent_base_url_and_api_key_env(tmp_path: Path, fake_model: FakeServer) -> None:
    # A second OpenAI-compatible endpoint that only accepts the agent's own key.
    with start_in_thread(fake_openai.create_app(require_key="sk-agent-own")) as other:
        env = {**server_env(fake_model), "MY_KEY_VAR": "sk-agent-own"}
        with ServerProcess(tmp_path, env=env) as server:
            api = Api(server)
            own = api.agent(
                prompt="hi there",
                model="openai:other-model",
                model_settings={"base_url": other.url, "api_key_env": "MY_KEY_VAR"},
            )
            # Same endpoint, but the server-wide key (OPENAI_API_KEY=sk-fake): refused.
            default_key = api.agent(
                prompt="hi there",
                model="openai:other-model",
                model_settings={"base_url": other.url},
            )
            unset = api.agent(
                prompt="hi there",
                model="openai:other-model",
                model_settings={"base_url": other.url, "api_key_env": "NO_SUCH_KEY_VAR"},
            )
            ok = api.wait(start_run(api, own)["id"], timeout_s=10)
            refused = api.wait(start_run(api, default_key)["id"], timeout_s=10)
            missing = api.wait(start_run(api, unset)["id"], timeout_s=10)

            assert ok["status"] == "completed", ok
            assert ok["last_agent_message"] == "echo: hi there"

            error = assert_failed(server, refused, "model_error")
            assert "401" in error["message"] and "OPENAI_API_KEY" in error["message"]

            error = assert_failed(server, missing, "model_error")
            assert "NO_SUCH_KEY_VAR" in error["message"]

    # The agent's endpoint got the calls (with its model name); the server default got none.
    assert fake_model.requests() == []
    assert [r["model"] for r in other.requests()] == ["other-model", "other-model"]
