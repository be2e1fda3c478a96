"""Model adapters behind one interface, chosen by an agent's model spec.

Specs: `test`, `openai:<model>` (any OpenAI-compatible endpoint),
`anthropic:<model>`. Per-agent `model_settings` may set `base_url`,
`api_key_env` (the name of the environment variable holding the key) and
`timeout_s`; the other keys are sampling settings passed to the provider.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from agentruns.engine.models.anthropic import DEFAULT_BASE_URL as ANTHROPIC_DEFAULT_BASE_URL
from agentruns.engine.models.anthropic import AnthropicModel
from agentruns.engine.models.base import (
    Finish,
    Message,
    Model,
    ModelEvent,
    TextDelta,
    ToolCall,
    ToolDefinition,
    Usage,
)
from agentruns.engine.models.offline import TEST_MODEL_NAME, TestModel
from agentruns.engine.models.openai import OpenAIChatModel
from agentruns.engine.models.retrying import stream_with_retries
from agentruns.engine.models.transport import ModelClient
from agentruns.errors import ModelError

__all__ = [
    "PROVIDERS",
    "AnthropicModel",
    "Finish",
    "Message",
    "Model",
    "ModelEvent",
    "OpenAIChatModel",
    "TestModel",
    "TextDelta",
    "ToolCall",
    "ToolDefinition",
    "Usage",
    "resolve_model",
    "stream_with_retries",
    "validate_model_spec",
]

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
_CACHED_MODELS = 256
PROVIDERS = ("openai", "anthropic")
# provider -> (base URL variable, API key variable, default base URL)
_PROVIDER_ENV = {
    "openai": ("OPENAI_BASE_URL", "OPENAI_API_KEY", OPENAI_DEFAULT_BASE_URL),
    "anthropic": ("ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", ANTHROPIC_DEFAULT_BASE_URL),
}


def validate_model_spec(spec: str) -> None:
    """Raise `ValueError` with a helpful message unless `spec` names a known model."""
    _parse_spec(spec)


def resolve_model(
    spec: str,
    model_settings: Mapping[str, Any],
    *,
    client: ModelClient,
    env: Mapping[str, str] = os.environ,
    cache: dict[tuple[Any, ...], Model] | None = None,
) -> Model:
    """Build the adapter for `spec`; `ValueError` for an unknown spec.

    Raises a non-retryable `ModelError` when `model_settings.api_key_env`
    names a variable that is not set, so the run fails with that reason.
    With a `cache`, runs with the same model, endpoint and key share one adapter
    (adapters keep no state between calls) instead of each run holding its own.
    """
    provider, model_name = _parse_spec(spec)
    if provider == TEST_MODEL_NAME:
        return TestModel()
    base_url_var, key_var, default_base_url = _PROVIDER_ENV[provider]
    base_url = model_settings.get("base_url") or env.get(base_url_var) or default_base_url
    key_env = model_settings.get("api_key_env") or key_var
    api_key = env.get(key_env) or None
    if model_settings.get("api_key_env") and api_key is None:
        raise ModelError(
            f"model_settings.api_key_env is {key_env!r}, but no such environment variable"
            " is set where the worker runs."
        )
    options: dict[str, Any] = {"api_key_env": key_env}
    if model_settings.get("timeout_s"):
        options["timeout_s"] = float(model_settings["timeout_s"])
    key = (provider, model_name, base_url, api_key, *options.values())
    if cache is not None and (model := cache.get(key)) is not None:
        return model
    model = (OpenAIChatModel if provider == "openai" else AnthropicModel)(
        model_name, base_url=base_url, api_key=api_key, client=client, **options
    )
    if cache is not None:
        if len(cache) >= _CACHED_MODELS:
            cache.clear()
        cache[key] = model
    return model


def _parse_spec(spec: str) -> tuple[str, str]:
    if spec == TEST_MODEL_NAME:
        return TEST_MODEL_NAME, ""
    provider, sep, model_name = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or provider not in PROVIDERS:
        raise ValueError(
            f"Unknown model {spec!r}: use 'test', 'openai:<model>' (any OpenAI-compatible"
            " endpoint, e.g. 'openai:gpt-4.1-mini') or 'anthropic:<model>'"
            " (e.g. 'anthropic:claude-sonnet-4-5')."
        )
    if not model_name.strip():
        raise ValueError(f"Model {spec!r} names no model after '{provider}:'.")
    return provider, model_name
