"""`/v1/agent-runs`: create (idempotently), read, list, continue, cancel, answer tool calls."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request

from agentruns.api.auth import current_project
from agentruns.api.errors import APIError, not_found
from agentruns.api.responses import JSONResponse, envelope, list_envelope
from agentruns.api.routes.bundles import check_bundle_exists
from agentruns.api.schemas import RunContinue, RunCreate, ToolCallClaim, ToolResponses
from agentruns.engine.templating import MissingVars, render_all
from agentruns.netguard import UnsafeURL, check_public_url
from agentruns.store import agents, runs, tool_calls
from agentruns.store.clock import iso
from agentruns.store.runs import AgentChanged, IdempotencyConflict, NewRun, StateConflict

router = APIRouter(prefix="/v1/agent-runs", tags=["agent runs"])

RUN_STATUSES = ("queued", "in_progress", "awaiting_tool_calls", "completed", "failed", "cancelled")


async def _pinned_spec(
    request: Request, project: str, agent_id: str, environment: str, cached: bool
) -> tuple[int, dict[str, Any]]:
    """The agent version a new run pins: latest (playground) or published (production)."""
    version, spec = await agents.get_pinned_spec(
        request.app.state.db,
        project,
        agent_id,
        published=environment == "production",
        cached=cached,
    )
    if spec is None:
        raise not_found("agent", agent_id)
    if version is None:
        raise APIError(
            422,
            f"agent {agent_id} has no published version; publish one with "
            f"POST /v1/agents/{agent_id}/publish or use environment=playground",
            details=[{"field": "environment", "message": "no published version"}],
        )
    return version, spec


async def _check_callback_url(request: Request, url: str | None, from_agent: bool) -> None:
    """The SSRF guard at the door (it runs again, after DNS, at every send)."""
    if url is None:
        return
    settings = request.app.state.settings
    try:
        await check_public_url(url, allow_private=settings.webhook_allow_private)
    except UnsafeURL as exc:
        where = "the agent's default callback_url" if from_agent else "callback_url"
        message = (
            f"{where} is refused: {exc}. Webhooks go only to public http(s) addresses "
            "(the operator can allow private ones with AGENTRUNS_WEBHOOK_ALLOW_PRIVATE=true)"
        )
        raise APIError(
            422, message, details=[{"field": "callback_url", "message": str(exc)}]
        ) from exc


def _first_messages(
    spec: dict[str, Any], values: dict[str, Any], message: str | None
) -> list[dict[str, Any]]:
    templates = [spec.get("instructions") or None, None if message else spec.get("prompt")]
    try:
        instructions, prompt = render_all(templates, values)
    except MissingVars as exc:
        raise APIError(
            422,
            f"missing template vars: {', '.join(exc.names)} (give them in vars)",
            details={"missing_vars": exc.names},
        ) from exc
    user_text = message or prompt
    if not user_text:
        raise APIError(
            422,
            "message: required, because the agent has no prompt",
            details=[{"field": "message", "message": "required when the agent has no prompt"}],
        )
    first: list[dict[str, Any]] = []
    if instructions:
        first.append({"role": "system", "content": instructions})
    first.append({"role": "user", "content": user_text})
    return first


async def _new_run(request: Request, project: str, body: RunCreate, *, cached: bool) -> NewRun:
    """The run `body` asks for, from the agent version it pins."""
    agent_id = body.target_agent
    version, spec = await _pinned_spec(request, project, agent_id, body.environment, cached)
    values = {**(spec.get("vars") or {}), **body.vars}
    bundle = body.bundle or spec.get("bundle")
    await check_bundle_exists(request, project, bundle)
    callback_url = body.callback_url or spec.get("callback_url")
    await _check_callback_url(request, callback_url, from_agent=not body.callback_url)
    return NewRun(
        project_id=project,
        agent_id=agent_id,
        agent_version=version,
        messages=_first_messages(spec, values, body.message),
        results=[],
        timeout_s=float(spec.get("timeout_s") or 600),
        vars=values,
        callback_url=callback_url,
        bundle=bundle,
        environment=body.environment,
        metadata=body.metadata,
        tool_response_timeout_s=body.tool_response_timeout_s,
    )


@router.post("")
async def create_run(
    body: RunCreate,
    request: Request,
    project: str = Depends(current_project),
    idempotency_key: str | None = Header(None, max_length=255),
) -> JSONResponse:
    db = request.app.state.db
    request_hash = None
    if idempotency_key is not None:
        canonical = orjson.dumps(body.model_dump(), option=orjson.OPT_SORT_KEYS)
        request_hash = hashlib.sha256(canonical).hexdigest()
        try:
            replayed = await runs.find_replayed_run(db, project, idempotency_key, request_hash)
        except IdempotencyConflict as exc:
            raise APIError(409, str(exc)) from exc
        if replayed is not None:
            return envelope(replayed)
    # The agent's version comes from this process's memory when it can: the insert checks
    # that it is still the one pinned, and a stale one is read again.
    for cached in (True, False, False):
        new = await _new_run(request, project, body, cached=cached)
        try:
            run, _created = await runs.create_run(
                db, new, idempotency_key=idempotency_key, request_hash=request_hash
            )
        except IdempotencyConflict as exc:
            raise APIError(409, str(exc)) from exc
        except AgentChanged:
            continue
        break
    else:
        raise APIError(409, f"agent {body.target_agent} kept changing; retry the request")
    return envelope(run)


@router.get("")
async def list_runs(
    request: Request,
    project: str = Depends(current_project),
    status: str | None = Query(None),
    agent_id: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    after: str | None = None,
) -> JSONResponse:
    if status is not None and status not in RUN_STATUSES:
        raise APIError(
            422,
            f"status: must be one of {', '.join(RUN_STATUSES)}",
            details=[{"field": "status", "message": "unknown status"}],
        )
    try:
        items, cursor = await runs.list_runs(
            request.app.state.db,
            project,
            status=status,
            agent_id=agent_id,
            limit=limit,
            after=after,
        )
    except LookupError as exc:
        raise APIError(422, f"after: unknown cursor {after!r}") from exc
    return list_envelope(items, cursor)


@router.get("/{run_id}")
async def get_run(
    run_id: str, request: Request, project: str = Depends(current_project)
) -> JSONResponse:
    run = await runs.get_run(request.app.state.db, project, run_id)
    if run is None:
        raise not_found("run", run_id)
    return envelope(run)


@router.put("/{run_id}")
async def continue_run(
    run_id: str, body: RunContinue, request: Request, project: str = Depends(current_project)
) -> JSONResponse:
    try:
        run = await runs.continue_run(request.app.state.db, project, run_id, body.message)
    except StateConflict as exc:
        raise APIError(409, str(exc)) from exc
    if run is None:
        raise not_found("run", run_id)
    return envelope(run)


@router.post("/{run_id}/cancel")
async def cancel_run(
    run_id: str, request: Request, project: str = Depends(current_project)
) -> JSONResponse:
    try:
        run = await runs.cancel_run(request.app.state.db, project, run_id)
    except StateConflict as exc:
        raise APIError(409, f"cannot cancel: {exc}") from exc
    if run is None:
        raise not_found("run", run_id)
    return envelope(run)


@router.post("/{run_id}/tool-responses")
async def submit_tool_responses(
    run_id: str, body: ToolResponses, request: Request, project: str = Depends(current_project)
) -> JSONResponse:
    """Answer a paused run's client-side tool calls; it resumes when all are answered."""
    answers = [(r.tool_call_id, r.output) for r in body.tool_responses]
    try:
        run = await tool_calls.submit_tool_responses(request.app.state.db, project, run_id, answers)
    except tool_calls.UnknownToolCall as exc:
        raise APIError(
            422,
            f"tool_responses: the run is not waiting for a tool call with id {exc}",
            details=[{"field": "tool_responses.tool_call_id", "message": f"unknown id {exc}"}],
        ) from exc
    except StateConflict as exc:
        raise APIError(409, str(exc)) from exc
    if run is None:
        raise not_found("run", run_id)
    return envelope(run)


@router.post("/{run_id}/tool-calls/{tool_call_id}/claim")
async def claim_tool_call(
    run_id: str,
    tool_call_id: str,
    body: ToolCallClaim,
    request: Request,
    project: str = Depends(current_project),
) -> JSONResponse:
    """Take (or extend) the right to run a pending call's handler, so that of several
    processes attached to the run only one runs it. Answers are accepted from anyone."""
    db = request.app.state.db
    try:
        claim = await tool_calls.claim_tool_call(
            db, project, run_id, tool_call_id, body.claimant, body.lease_s
        )
    except tool_calls.UnknownToolCall as exc:
        raise APIError(
            422,
            f"the run is not waiting for a tool call with id {exc}",
            details=[{"field": "tool_call_id", "message": f"unknown id {exc}"}],
        ) from exc
    except tool_calls.ClaimRefused as exc:
        # `reason` lets a client tell "someone else runs it" from "nobody needs to".
        details: dict[str, Any] = {"reason": exc.reason}
        if exc.claimed_until is not None:
            details["claimed_until"] = iso(exc.claimed_until)
        raise APIError(409, str(exc), details=details) from exc
    if claim is None:
        raise not_found("run", run_id)
    return envelope(claim)
