"""The web dashboard: server-rendered page shells at `/`, plain JS that calls the JSON API.

Pages hold no project data: the browser keeps the API key in sessionStorage and every
figure on screen comes from a `/v1` call made with it, so tenancy is the API's own.
"""

from agentruns.web.routes import mount

__all__ = ["mount"]
