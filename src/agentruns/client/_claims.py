"""Claims on tool calls: which of several attached processes runs a handler.

Before a handler runs, the SDK claims its call on the server
(`POST /v1/agent-runs/{run}/tool-calls/{call}/claim`) for a lease, renewed every third of
the lease while the handler runs. A call another claimant holds is run by another process:
the SDK skips it, and a runner tries it again later, in case that process died (its lease
then expires and the call can be claimed again: a handler runs at least once after a crash).

Each `run_agent` / `process_webhook_tools` call claims under an id of its own rather than
one per client: a re-claim by the same claimant succeeds (it extends the lease), so a shared
client (the README's webhook receiver getting a retried delivery while the first one still
runs) would otherwise run a handler twice.
"""

from __future__ import annotations

import logging
import uuid

from ._base import MIN_CLAIM_LEASE_S, JSONObject, path
from .errors import APIError, Conflict, ValidationError

__all__ = [
    "CLAIM_REFUSED",
    "RELEASE_LEASE_S",
    "HeldBackoff",
    "claim_request",
    "held_by_another",
    "log_renewal_failure",
    "new_claimant",
]

log = logging.getLogger("agentruns.client")

# The server's shortest lease: a claim cut down to it is as good as released.
RELEASE_LEASE_S = MIN_CLAIM_LEASE_S
# What the server answers a claim it will not give (409 refused, 422 not pending).
CLAIM_REFUSED = (Conflict, ValidationError)


def new_claimant() -> str:
    return f"sdk-{uuid.uuid4()}"


def claim_request(
    run_id: str, call_id: str, claimant: str, lease_s: float
) -> tuple[str, JSONObject]:
    """URL and body of a claim; sending it again renews it (or cuts it short)."""
    url = path("agent-runs", run_id, "tool-calls", call_id, "claim")
    return url, {"claimant": claimant, "lease_s": lease_s}


def held_by_another(exc: APIError) -> bool:
    """Whether a refused claim means another process runs the call now; otherwise nobody
    needs to (it was answered, the run moved on, or the call is no longer pending)."""
    details = exc.details
    return (
        isinstance(exc, Conflict)
        and isinstance(details, dict)
        and details.get("reason") == "claimed"
    )


def log_renewal_failure(run_id: str, call_id: str, exc: Exception) -> None:
    """A renewal that failed: a lost claim is worth a warning, a call just answered is not."""
    if isinstance(exc, CLAIM_REFUSED) and not held_by_another(exc):
        return
    # Held by another: the handler outlived its lease with no renewal getting through, so
    # another process may be running the call too.
    log.warning("could not renew the claim on tool call %s of run %s: %s", call_id, run_id, exc)


class HeldBackoff:
    """Pauses between tries of the calls another process holds.

    The run waits for those calls, so nothing else happens meanwhile; the first tries are
    quick because the other process usually answers soon, later ones slower.
    """

    def __init__(self, first: float = 0.25, most: float = 2.0) -> None:
        self._next = first
        self._most = most

    def delay(self) -> float:
        delay = self._next
        self._next = min(self._most, self._next * 2)
        return delay
