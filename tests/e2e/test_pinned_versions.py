"""A new run pins its agent's current version even when another API process changed the
agent a moment before: each process remembers the version it last pinned, and the insert
checks it (PostgreSQL, two `serve --no-worker` processes)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from e2e.pg_cluster import FakeModelProcess, cluster_env, running_cluster

pytestmark = pytest.mark.postgres


def test_runs_pin_the_version_another_api_process_just_made(
    tmp_path: Path, postgres_url: str
) -> None:
    fake = FakeModelProcess(token_delay_s=0.0)
    try:
        with running_cluster(tmp_path, cluster_env(postgres_url, fake), apis=2, workers=0) as c:
            headers = {"Authorization": f"Bearer {c.key}"}
            first = httpx.Client(base_url=c.apis[0].url, headers=headers, timeout=10)
            other = httpx.Client(base_url=c.apis[1].url, headers=headers, timeout=10)
            with first, other:

                def run(environment: str = "playground") -> httpx.Response:
                    body = {"agent_id": agent_id, "environment": environment}
                    return first.post("/v1/agent-runs", json=body)

                created = first.post("/v1/agents", json={"name": "pinned", "prompt": "v1"})
                agent_id = created.json()["data"]["id"]
                assert run().json()["data"]["agent_version"] == 1
                # Changed through the other process: the first one's memory is stale.
                other.patch(f"/v1/agents/{agent_id}", json={"prompt": "v2"}).raise_for_status()
                assert run().json()["data"]["agent_version"] == 2
                assert run().json()["data"]["agent_version"] == 2

                other.post(f"/v1/agents/{agent_id}/publish").raise_for_status()
                assert run("production").json()["data"]["agent_version"] == 2
                other.patch(f"/v1/agents/{agent_id}", json={"prompt": "v3"}).raise_for_status()
                other.post(f"/v1/agents/{agent_id}/publish").raise_for_status()
                assert run("production").json()["data"]["agent_version"] == 3

                other.delete(f"/v1/agents/{agent_id}").raise_for_status()
                gone = run()
                assert gone.status_code == 404, gone.text
                assert run("production").status_code == 404
                # Nothing was created for the deleted agent.
                listed = first.get("/v1/agent-runs", params={"agent_id": agent_id}).json()
                assert len(listed["data"]) == 5
    finally:
        fake.stop()
