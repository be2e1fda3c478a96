"""Choosing a model adapter from an agent's model spec and settings."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from agentruns.engine.models import (
    AnthropicModel,
    OpenAIChatModel,
    TestModel,
    resolve_model,
    validate_model_spec,
)
from agentruns.errors import ModelError


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # No request is ever sent: building adapters does no I/O.
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(500))) as c:
        yield c


def test_known_specs_are_valid() -> None:
    for spec in ("test", "openai:gpt-4.1-mini", "anthropic:claude-sonnet-4-5", "openai:org/m:7b"):
        validate_model_spec(spec)


@pytest.mark.parametrize("spec", ["", "gpt-4", "openai:", "openai: ", "cohere:command", "Test"])
def test_unknown_specs_are_refused_with_a_hint(spec: str) -> None:
    with pytest.raises(ValueError, match="model"):
        validate_model_spec(spec)


async def test_test_spec_gives_the_offline_model(client: httpx.AsyncClient) -> None:
    model = resolve_model("test", {}, client=client, env={})
    assert isinstance(model, TestModel)
    assert model.name == "test"


async def test_openai_defaults_come_from_the_environment(client: httpx.AsyncClient) -> None:
    env = {"OPENAI_BASE_URL": "http://vllm:8000/v1/", "OPENAI_API_KEY": "sk-env"}
    model = resolve_model("openai:llama-3", {}, client=client, env=env)

    assert isinstance(model, OpenAIChatModel)
    assert model.name == "openai:llama-3"
    assert model._url == "http://vllm:8000/v1/chat/completions"
    assert model._headers["authorization"] == "Bearer sk-env"


async def test_openai_without_settings_or_env_targets_openai_without_a_key(
    client: httpx.AsyncClient,
) -> None:
    model = resolve_model("openai:gpt-4.1-mini", {}, client=client, env={})

    assert isinstance(model, OpenAIChatModel)
    assert model._url == "https://api.openai.com/v1/chat/completions"
    assert "authorization" not in model._headers


async def test_agent_settings_override_the_environment(client: httpx.AsyncClient) -> None:
    env = {"OPENAI_API_KEY": "sk-default", "GROQ_KEY": "gsk-agent"}
    settings = {"base_url": "https://api.groq.com/openai/v1", "api_key_env": "GROQ_KEY"}
    model = resolve_model("openai:llama", settings | {"timeout_s": 9}, client=client, env=env)

    assert isinstance(model, OpenAIChatModel)
    assert model._url == "https://api.groq.com/openai/v1/chat/completions"
    assert model._headers["authorization"] == "Bearer gsk-agent"
    assert model._timeout_s == 9.0


async def test_a_missing_api_key_env_is_a_clear_model_error(client: httpx.AsyncClient) -> None:
    with pytest.raises(ModelError, match="MY_KEY") as raised:
        resolve_model("openai:m", {"api_key_env": "MY_KEY"}, client=client, env={})
    assert not raised.value.retryable


async def test_anthropic_uses_its_own_variables(client: httpx.AsyncClient) -> None:
    env = {"ANTHROPIC_API_KEY": "sk-ant", "OPENAI_API_KEY": "sk-openai"}
    model = resolve_model("anthropic:claude-sonnet-4-5", {}, client=client, env=env)

    assert isinstance(model, AnthropicModel)
    assert model._url == "https://api.anthropic.com/v1/messages"
    assert model._headers["x-api-key"] == "sk-ant"

    proxied = resolve_model(
        "anthropic:c", {}, client=client, env={"ANTHROPIC_BASE_URL": "http://proxy/v1"}
    )
    assert isinstance(proxied, AnthropicModel)
    assert proxied._url == "http://proxy/v1/messages"


async def test_runs_share_an_adapter_until_its_endpoint_or_key_changes(
    client: httpx.AsyncClient,
) -> None:
    cache: dict = {}
    env = {"OPENAI_API_KEY": "sk-one"}
    first = resolve_model("openai:m", {}, client=client, env=env, cache=cache)
    assert resolve_model("openai:m", {}, client=client, env=env, cache=cache) is first
    rotated = resolve_model(
        "openai:m", {}, client=client, env={"OPENAI_API_KEY": "sk-two"}, cache=cache
    )
    assert rotated is not first and rotated._headers["authorization"] == "Bearer sk-two"
    for settings in ({"base_url": "http://elsewhere/v1"}, {"timeout_s": 5}):
        assert resolve_model("openai:m", settings, client=client, env=env, cache=cache) is not first
    assert resolve_model("openai:other", {}, client=client, env=env, cache=cache) is not first
    claude = resolve_model("anthropic:m", {}, client=client, env=env, cache=cache)
    assert isinstance(claude, AnthropicModel)
