"""Standard Webhooks signatures (https://www.standardwebhooks.com), by the reference library."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook


def signature_headers(
    message_id: str, body: bytes, secrets: Sequence[str], *, timestamp: int | None = None
) -> dict[str, str]:
    """`webhook-id`, `webhook-timestamp` and `webhook-signature` for `body`.

    With several secrets (just after a rotation) the signature header carries
    one `v1,...` signature per secret, space-separated, as the spec allows:
    receivers holding either secret accept the message.
    """
    if not secrets:
        raise ValueError("at least one secret is needed to sign a webhook")
    ts = int(time.time()) if timestamp is None else timestamp
    when = datetime.fromtimestamp(ts, UTC)
    text = body.decode()
    signatures = [Webhook(secret).sign(message_id, when, text) for secret in secrets]
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(signatures),
    }
