"""Dashboard routes: one Jinja2 template per page, static files, strict security headers."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from agentruns import __version__

if TYPE_CHECKING:
    from fastapi.templating import Jinja2Templates

HERE = Path(__file__).parent


@cache
def templates() -> Jinja2Templates:
    """The page templates, loaded at the first page view: Jinja2 is not imported before."""
    from fastapi.templating import Jinja2Templates

    return Jinja2Templates(directory=HERE / "templates")


# No inline script or style anywhere: an injected tag could otherwise read the key
# from sessionStorage. Everything the pages load comes from this origin.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The shells are the same for everyone, but a stale one could load stale JS.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def page(request: Request, template: str, title: str, **context: object) -> HTMLResponse:
    """Render one page shell; ids from the path reach the JS as escaped data attributes."""
    return templates().TemplateResponse(
        request,
        template,
        # Each page has one script module, named like its template.
        {
            "title": title,
            "version": __version__,
            "script": template.removesuffix(".html"),
            **context,
        },
        headers=SECURITY_HEADERS,
    )


@router.get("/", response_class=HTMLResponse)
async def runs_page(request: Request) -> HTMLResponse:
    return page(request, "runs.html", "Runs", nav="runs")


@router.get("/signin", response_class=HTMLResponse)
async def signin_page(request: Request) -> HTMLResponse:
    return page(request, "signin.html", "Sign in", nav="")


@router.get("/runs", include_in_schema=False)
async def runs_redirect() -> RedirectResponse:
    return RedirectResponse("/")


@router.get("/runs/{run_id}", response_class=HTMLResponse)
async def run_page(request: Request, run_id: str) -> HTMLResponse:
    return page(request, "run.html", "Run", nav="runs", run_id=run_id)


@router.get("/agents", response_class=HTMLResponse)
async def agents_page(request: Request) -> HTMLResponse:
    return page(request, "agents.html", "Agents", nav="agents")


@router.get("/agents/new", response_class=HTMLResponse)
async def new_agent_page(request: Request) -> HTMLResponse:
    return page(request, "agent_edit.html", "New agent", nav="agents", agent_id="")


@router.get("/agents/{agent_id}", response_class=HTMLResponse)
async def agent_page(request: Request, agent_id: str) -> HTMLResponse:
    return page(request, "agent.html", "Agent", nav="agents", agent_id=agent_id)


@router.get("/agents/{agent_id}/edit", response_class=HTMLResponse)
async def edit_agent_page(request: Request, agent_id: str) -> HTMLResponse:
    return page(request, "agent_edit.html", "Edit agent", nav="agents", agent_id=agent_id)


def mount(app: FastAPI) -> None:
    """Serve the dashboard from `app`: pages at `/`, `/runs/`, `/agents/`, files at `/static`."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="dashboard-static")
