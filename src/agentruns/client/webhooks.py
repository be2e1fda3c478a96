"""Receiving agentruns webhooks: check the signature, get the event.

    event = verify_webhook(await request.body(), request.headers, secret)
    if event["type"] == "run.awaiting_tool_calls": ...   # event["data"] is the run

`secret` is the project's `whsec_...` secret (`GET /v1/webhook-secret`); give a
list of secrets while you switch after a rotation. The `webhook-id` header is
the same on every retry of one delivery: dedupe on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as _LibraryError

from agentruns.client.errors import AgentRunsClientError

__all__ = ["EVENT_TYPES", "WebhookVerificationError", "verify_webhook"]

EVENT_TYPES = ("run.awaiting_tool_calls", "run.completed", "run.failed", "run.cancelled")


class WebhookVerificationError(AgentRunsClientError):
    """The request is not an authentic, fresh agentruns webhook: refuse it (answer 400)."""


def verify_webhook(
    body: bytes | str, headers: Mapping[str, str], secret: str | Sequence[str]
) -> dict[str, Any]:
    """Verify the Standard Webhooks signature of `body`; the event `{"type", "data"}`.

    `body` must be the raw request body, byte for byte (not re-serialized JSON);
    `headers` any mapping (Starlette's, Flask's, a dict). Raises
    `WebhookVerificationError` if a header is missing, the timestamp is more than
    five minutes off, no signature matches, or the body is not an event. The
    event can be passed as it is to `process_webhook_tools`.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise WebhookVerificationError("no webhook secret given")
    failure = ""
    for candidate in secrets:
        try:
            Webhook(candidate).verify(body, lowered, json_parse=False)
        except _LibraryError as exc:
            failure = str(exc)
            continue
        except Exception as exc:  # a malformed header or secret is a refusal too
            failure = f"malformed webhook: {exc}"
            continue
        return _parse(body)
    raise WebhookVerificationError(f"webhook verification failed: {failure}")


def _parse(body: bytes | str) -> dict[str, Any]:
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise WebhookVerificationError(f"the webhook body is not JSON: {exc}") from exc
    if not (
        isinstance(event, dict)
        and isinstance(event.get("type"), str)
        and isinstance(event.get("data"), dict)
    ):
        raise WebhookVerificationError('the webhook body is not an event {"type", "data"}')
    return event
