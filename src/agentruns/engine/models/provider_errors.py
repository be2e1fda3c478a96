"""Turning provider failures into `ModelError`s a user can act on.

Shared by the HTTP adapters: both providers report errors as
`{"error": {"type": ..., "message": ...}}` (OpenAI-compatible servers vary:
some send a bare string or `{"detail": ...}`), and both use the same
statuses for the same things.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from agentruns.errors import ModelError

# 408/409 are transient on both providers (timeout, lock conflict); 529 is
# Anthropic's "overloaded".
_RETRYABLE_STATUSES = frozenset({408, 409, 429})
_PERMANENT_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
    }
)
_MAX_MESSAGE_CHARS = 500


def is_retryable_status(status: int) -> bool:
    return status in _RETRYABLE_STATUSES or status >= 500


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms` or `Retry-After` (seconds or HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def provider_message(body: bytes) -> str:
    """The human part of an error body, whatever shape the server chose."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", errors="replace").strip()[:_MAX_MESSAGE_CHARS]
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:_MAX_MESSAGE_CHARS]
        if isinstance(error, str):
            return error[:_MAX_MESSAGE_CHARS]
        for key in ("message", "detail"):
            if isinstance(data.get(key), str):
                return str(data[key])[:_MAX_MESSAGE_CHARS]
    return body.decode("utf-8", errors="replace").strip()[:_MAX_MESSAGE_CHARS]


def error_from_response(
    response: httpx.Response,
    body: bytes,
    *,
    endpoint: str,
    model: str,
    key_env: str,
    has_key: bool,
) -> ModelError:
    """Map a non-2xx response to a `ModelError`; `endpoint` names the server for the user."""
    status = response.status_code
    detail = _as_sentence(provider_message(body) or response.reason_phrase or "no details")
    if status == 401:
        if has_key:
            text = f"{endpoint} rejected the API key (401): {detail}"
        else:
            text = f"{endpoint} requires an API key and none was set (401): {detail}"
        text += f" Set {key_env} or model_settings.api_key_env."
    elif status == 403:
        text = (
            f"{endpoint} refused access (403): {detail}"
            f" Check that the API key may use model '{model}'."
        )
    elif status == 404:
        text = (
            f"{endpoint} has no model '{model}' or no such route (404): {detail}"
            " Check the model name and model_settings.base_url."
        )
    elif status == 429:
        text = f"{endpoint} is rate limiting requests (429): {detail}"
    elif status == 529:
        text = f"{endpoint} is overloaded (529): {detail}"
    elif is_retryable_status(status):
        text = f"{endpoint} failed ({status}): {detail}"
    else:
        text = f"{endpoint} rejected the request ({status}): {detail}"
    return ModelError(
        text,
        retryable=is_retryable_status(status),
        status_code=status,
        retry_after=parse_retry_after(response.headers),
    )


def _as_sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def error_from_stream(error: object, *, endpoint: str) -> ModelError:
    """Map an error reported inside a stream (after a 200) to a `ModelError`."""
    if not isinstance(error, dict):
        return ModelError(f"{endpoint} reported an error mid-stream: {error}", retryable=True)
    message = str(error.get("message") or error.get("type") or "unknown error")
    code = error.get("code")
    status = code if isinstance(code, int) else None
    if status is not None:
        retryable = is_retryable_status(status) or status < 400
    else:
        retryable = error.get("type") not in _PERMANENT_ERROR_TYPES
    return ModelError(
        f"{endpoint} reported an error mid-stream: {message}",
        retryable=retryable,
        status_code=status,
    )


def error_from_transport(
    exc: httpx.TransportError, *, endpoint: str, timeout_s: float
) -> ModelError:
    """Connection failures and timeouts are always worth another try."""
    if isinstance(exc, httpx.TimeoutException):
        text = f"{endpoint} did not answer within {timeout_s:g}s ({type(exc).__name__})."
    else:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        text = f"{endpoint} could not be reached or dropped the connection ({reason})."
    return ModelError(text, retryable=True)


def incomplete_stream(endpoint: str) -> ModelError:
    return ModelError(
        f"{endpoint} closed the stream before the response was complete.", retryable=True
    )
