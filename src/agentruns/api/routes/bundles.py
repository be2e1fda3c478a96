"""`/v1/bundles`: named sets of server-side tools. `default` is the operator's and read-only.

Also the checks agents and runs share: tool specs and bundle names are
refused with a `422` when saved, not when a worker meets them.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, Request

from agentruns.api.auth import current_project
from agentruns.api.errors import APIError, not_found
from agentruns.api.responses import JSONResponse, envelope, list_envelope
from agentruns.api.schemas import BUNDLE_NAME, BundleBody, BundleCreate
from agentruns.config import Settings
from agentruns.engine.tools import ToolPolicy, ToolSpecError, validate_tool_specs
from agentruns.engine.tools.bundles import (
    DEFAULT_BUNDLE,
    default_bundle_specs,
    render_default_bundle,
)
from agentruns.engine.tools.specs import destination_urls
from agentruns.netguard import UnsafeURL, check_public_url
from agentruns.store import bundles

router = APIRouter(prefix="/v1/bundles", tags=["bundles"])


def default_bundle_from_settings(settings: Settings) -> dict[str, Any]:
    """The `default` bundle as the API shows it; ConfigurationError if the config file is bad."""
    return render_default_bundle(default_bundle_specs(settings.config))


def default_bundle(request: Request) -> dict[str, Any]:
    state = request.app.state
    if getattr(state, "default_bundle", None) is None:
        state.default_bundle = default_bundle_from_settings(state.settings)
    bundle: dict[str, Any] = state.default_bundle
    return bundle


def _invalid(field: str, message: str) -> APIError:
    return APIError(422, f"{field}: {message}", details=[{"field": field, "message": message}])


async def check_tool_specs(
    request: Request, specs: list[Any], *, field: str = "tools", server_side_only: bool = False
) -> None:
    """422 naming the first spec a worker could not or may not run."""
    settings = request.app.state.settings
    policy = ToolPolicy.from_settings(settings)
    try:
        validate_tool_specs(
            specs,
            field=field,
            server_side_only=server_side_only,
            allow_stdio=policy.allow_stdio,
            secrets_allowed=policy.secrets_allowed,
        )
    except ToolSpecError as exc:
        raise _invalid(exc.field, exc.message) from exc
    for where, url in destination_urls(specs, field):
        try:
            await check_public_url(url, allow_private=settings.tool_allow_private)
        except UnsafeURL as exc:
            raise _invalid(where, str(exc)) from exc


async def check_bundle_exists(request: Request, project: str, name: str | None) -> None:
    if name is None or name == DEFAULT_BUNDLE:
        return
    if await bundles.get_bundle(request.app.state.db, project, name) is None:
        raise _invalid("bundle", f"no bundle named {name!r} (create it with POST /v1/bundles)")


def _refuse_default(name: str, verb: str) -> None:
    if name == DEFAULT_BUNDLE:
        raise APIError(
            409,
            f"cannot {verb} the default bundle: the server's configuration defines it "
            "(the built-in tools and the MCP servers of AGENTRUNS_CONFIG)",
        )


@router.post("", status_code=201)
async def create_bundle(
    body: BundleCreate, request: Request, project: str = Depends(current_project)
) -> JSONResponse:
    _refuse_default(body.name, "create")
    await check_tool_specs(request, body.tools, server_side_only=True)
    created = await bundles.create_bundle(
        request.app.state.db, project, body.name, body.description, body.tools
    )
    if created is None:
        raise APIError(
            409, f"a bundle named {body.name!r} exists; PUT /v1/bundles/{body.name} replaces it"
        )
    return envelope(created, 201)


@router.get("")
async def list_bundles(request: Request, project: str = Depends(current_project)) -> JSONResponse:
    stored = await bundles.list_bundles(request.app.state.db, project)
    return list_envelope([default_bundle(request), *stored], None)


@router.get("/{name}")
async def get_bundle(
    name: str, request: Request, project: str = Depends(current_project)
) -> JSONResponse:
    if name == DEFAULT_BUNDLE:
        return envelope(default_bundle(request))
    bundle = await bundles.get_bundle(request.app.state.db, project, name)
    if bundle is None:
        raise not_found("bundle", name)
    return envelope(bundle)


@router.put("/{name}")
async def put_bundle(
    name: str, body: BundleBody, request: Request, project: str = Depends(current_project)
) -> JSONResponse:
    """Create the bundle, or replace its description and tools."""
    _refuse_default(name, "replace")
    if body.name is not None and body.name != name:
        raise _invalid("name", f"the body names {body.name!r} but the path {name!r}")
    if not re.fullmatch(BUNDLE_NAME, name):
        raise _invalid("name", "1-100 of A-Z a-z 0-9 _ . -")
    await check_tool_specs(request, body.tools, server_side_only=True)
    bundle, created = await bundles.put_bundle(
        request.app.state.db, project, name, body.description, body.tools
    )
    return envelope(bundle, 201 if created else 200)


@router.delete("/{name}")
async def delete_bundle(
    name: str, request: Request, project: str = Depends(current_project)
) -> JSONResponse:
    _refuse_default(name, "delete")
    if not await bundles.delete_bundle(request.app.state.db, project, name):
        raise not_found("bundle", name)
    return envelope({"name": name, "deleted": True})
