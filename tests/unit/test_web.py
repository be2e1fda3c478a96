"""The dashboard's pages and files, without a browser: routes, headers, escaping, packaging."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from agentruns.web import mount
from agentruns.web.routes import HERE

ROOT = Path(__file__).resolve().parents[2]
PAGES = {
    "/": "runs",
    "/signin": "signin",
    "/runs/abc": "run",
    "/agents": "agents",
    "/agents/new": "agent_edit",
    "/agents/abc": "agent",
    "/agents/abc/edit": "agent_edit",
}


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    mount(app)
    return TestClient(app)


@pytest.mark.parametrize(("path", "script"), PAGES.items())
def test_every_page_is_a_shell_with_its_script_and_strict_headers(
    client: TestClient, path: str, script: str
) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    html = response.text
    [src] = re.findall(r'<script type="module" src="([^"?]+)', html)
    assert src == f"/static/js/{script}.js"
    served = client.get(src)
    assert served.status_code == 200 and "javascript" in served.headers["content-type"]


@pytest.mark.parametrize("path", PAGES)
def test_pages_have_no_inline_script_style_or_handlers(client: TestClient, path: str) -> None:
    # The CSP forbids them; one slipping in would simply not work in the browser.
    html = client.get(path).text
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert not re.search(r"\son[a-z]+=", html)
    assert " style=" not in html and "<style" not in html


def test_ids_from_the_path_are_escaped(client: TestClient) -> None:
    html = client.get('/runs/"><img src=x onerror=alert(1)>').text
    assert "<img" not in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html


def test_static_files_stay_inside_the_package(client: TestClient) -> None:
    assert client.get("/static/app.css").status_code == 200
    assert client.get("/static/../routes.py").status_code == 404
    assert client.get("/static/%2e%2e/routes.py").status_code == 404


def test_js_modules_import_only_files_that_exist() -> None:
    scripts = HERE / "static" / "js"
    for module in scripts.glob("*.js"):
        for target in re.findall(r'from "\./([\w.]+)"', module.read_text()):
            assert (scripts / target).is_file(), f"{module.name} imports missing {target}"


def test_every_dashboard_file_is_package_data() -> None:
    # A template or script left out of package-data works from a checkout and 404s when
    # installed from a wheel.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["agentruns"]
    package = HERE.parent
    files = [p for p in HERE.rglob("*") if p.is_file() and p.suffix != ".py"]
    files = [p for p in files if "__pycache__" not in p.parts]
    assert files
    for path in files:
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatchcase(relative, pattern) for pattern in patterns), relative
