"""Signatures, the receiver's check (`verify_webhook`), and the retry schedule."""

from __future__ import annotations

import random
import time

import pytest
from standardwebhooks.webhooks import Webhook

from agentruns.client.webhooks import WebhookVerificationError, verify_webhook
from agentruns.store.webhooks import new_secret
from agentruns.webhooks.retry import MAX_RETRY_AFTER_S, parse_retry_after, retry_delay
from agentruns.webhooks.signing import signature_headers

BODY = b'{"type":"run.completed","data":{"id":"r1","status":"completed"}}'


def test_signatures_verify_with_the_reference_library() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    headers = signature_headers("d1", BODY, [secret])
    assert headers["webhook-id"] == "d1"
    assert Webhook(secret).verify(BODY, headers) == {
        "type": "run.completed",
        "data": {"id": "r1", "status": "completed"},
    }


def test_after_a_rotation_both_secrets_sign() -> None:
    new, old = new_secret(), new_secret()
    headers = signature_headers("d1", BODY, [new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(BODY, headers)
    Webhook(old).verify(BODY, headers)
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(new_secret()).verify(BODY, headers)


def test_verify_webhook_returns_the_event() -> None:
    secret = new_secret()
    headers = {k.title(): v for k, v in signature_headers("d1", BODY, [secret]).items()}
    event = verify_webhook(BODY, headers, secret)
    assert event == {"type": "run.completed", "data": {"id": "r1", "status": "completed"}}
    # A receiver in the middle of a rotation may hold two secrets.
    assert verify_webhook(BODY.decode(), headers, [new_secret(), secret]) == event
    not_an_event = b'["run.completed"]'
    with pytest.raises(WebhookVerificationError, match="not an event"):
        verify_webhook(not_an_event, signature_headers("d1", not_an_event, [secret]), secret)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h, b: (h, b.replace(b"completed", b"cancelled")), "No matching signature"),
        (lambda h, b: ({**h, "webhook-id": "other"}, b), "No matching signature"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b), "Missing"),
        (lambda h, b: ({**h, "webhook-timestamp": str(int(time.time()) - 3600)}, b), "too old"),
    ],
)
def test_verify_webhook_refuses_what_is_not_authentic(change, message) -> None:  # type: ignore[no-untyped-def]
    secret = new_secret()
    headers, body = change(signature_headers("d1", BODY, [secret]), BODY)
    with pytest.raises(WebhookVerificationError, match=message):
        verify_webhook(body, headers, secret)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, signature_headers("d1", BODY, [secret]), new_secret())


def test_retry_after_header() -> None:
    assert parse_retry_after("3") == 3
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-4") == 0
    assert parse_retry_after("99999999") == MAX_RETRY_AFTER_S
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_retry_delays_follow_the_schedule_with_jitter() -> None:
    rng = random.Random(7)
    schedule = [5, 30, 120]
    for attempt, base in enumerate(schedule, start=1):
        delay = retry_delay(schedule, attempt, rng=rng)
        assert delay is not None and 0.8 * base <= delay <= 1.2 * base
    assert retry_delay(schedule, 4, rng=rng) is None  # the schedule is spent: give up
    assert retry_delay(schedule, 1, retry_after=60, rng=rng) == 60  # the receiver's wish wins
    delay = retry_delay(schedule, 2, retry_after=1, rng=rng)
    assert delay is not None and delay >= 24  # ... but never shortens the schedule
