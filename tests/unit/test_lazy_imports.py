"""What `agentruns serve` imports before its first request: not the heavy libraries that only
some requests need (they would cost every idle server their memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

LAZY = [
    "mcp",  # the MCP SDK, when a run first uses an MCP server
    "mcp_types",
    "httpx2",
    "alembic",  # when a migration is due
    "jsonschema",  # at the first tool schema to check
    "jinja2",  # at the first dashboard page
    "prometheus_client",  # at the first scrape of /metrics
    "yaml",  # with a config file, or `agents create`
    "agentruns.client",  # the SDK, for the CLI's remote commands
]

BUILD_THE_SERVER = """
import json, sys
from agentruns import cli, service
from agentruns.api.app import create_app
from agentruns.config import Settings
create_app(Settings(), with_worker=True)
print(json.dumps(sorted(sys.modules)))
"""


def test_building_the_server_leaves_the_heavy_libraries_unimported(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "AGENTRUNS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'agentruns.db'}",
        "AGENTRUNS_STATE_DIR": str(tmp_path / "state"),
    }
    env.pop("AGENTRUNS_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-c", BUILD_THE_SERVER],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = json.loads(done.stdout)
    early = [m for m in loaded if any(m == name or m.startswith(name + ".") for name in LAZY)]
    assert early == []
