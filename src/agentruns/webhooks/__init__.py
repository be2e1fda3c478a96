"""Webhooks: the dispatcher that drains the outbox, and how each attempt is signed and judged.

    dispatcher   claim due deliveries, send, record the attempt, schedule the retry
    sender       one HTTP attempt through the SSRF guard; success / retry / give up
    retry        the backoff schedule, jitter, Retry-After
    signing      Standard Webhooks headers

The outbox itself (secrets, deliveries, attempts) lives in `agentruns.store.webhooks`.
"""

from agentruns.webhooks.dispatcher import Dispatcher

__all__ = ["Dispatcher"]
