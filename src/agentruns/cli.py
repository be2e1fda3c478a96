"""The `agentruns` command.

Operator commands (`serve`, `worker`, `keys`) work on the local service and its database.
Everything else talks to a server over HTTP through the SDK, never touching the database, so
it works against any deployment: `--base-url` / `--api-key`, else `AGENTRUNS_BASE_URL` /
`AGENTRUNS_API_KEY`, else the credentials `agentruns serve` saved.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console

from agentruns.cli_render import EventPrinter, print_json, print_table, short
from agentruns.client import AgentRunsClient, APIError
from agentruns.errors import AgentRunsError

if TYPE_CHECKING:
    from agentruns.config import Settings

app = typer.Typer(
    name="agentruns",
    help="Deploy LLM agents as an asynchronous HTTP API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(
    help="API keys (operator: works on the local database).", no_args_is_help=True
)
agents_app = typer.Typer(help="Agents on a server.", no_args_is_help=True)
runs_app = typer.Typer(help="Agent runs on a server.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(agents_app, name="agents")
app.add_typer(runs_app, name="runs")

out = Console()
info = Console(stderr=True)

BaseUrl = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        help=(
            "Server URL (default: $AGENTRUNS_BASE_URL, else saved credentials,"
            " else http://127.0.0.1:8000)"
        ),
        show_default=False,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        help="API key (default: $AGENTRUNS_API_KEY, else saved credentials)",
        show_default=False,
    ),
]
Follow = Annotated[
    bool, typer.Option("--follow", "-F", help="Stream the run's events until it ends.")
]
AsJson = Annotated[
    bool, typer.Option("--json", help="JSON output; with --follow, one event per line.")
]


def main() -> None:
    app()


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def load_settings() -> Settings:
    from pydantic import ValidationError

    from agentruns.config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        fail(f"invalid settings: {exc}")


def make_client(base_url: str | None, api_key: str | None) -> AgentRunsClient:
    """The client remote commands use; tests replace it to serve the CLI from a mock."""
    return AgentRunsClient(base_url=base_url, api_key=api_key)


@contextmanager
def remote(base_url: str | None, api_key: str | None) -> Iterator[AgentRunsClient]:
    """A client whose failures end the command with a one-line error instead of a traceback."""
    try:
        with make_client(base_url, api_key) as client:
            yield client
    except APIError as exc:
        if exc.details:
            typer.echo(f"error: {exc.type}: {exc.message}", err=True)
            fail(f"details: {json.dumps(exc.details, ensure_ascii=False, default=str)}")
        fail(f"{exc.type}: {exc.message}")
    except AgentRunsError as exc:
        fail(str(exc))


# -- operator commands --------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    worker: Annotated[
        bool, typer.Option("--worker/--no-worker", help="Also run a worker in this process.")
    ] = True,
) -> None:
    """Run the API server (with an embedded worker unless --no-worker)."""
    from agentruns import service

    service.serve(load_settings(), host=host, port=port, with_worker=worker)


@app.command("worker")
def worker_command() -> None:
    """Run a worker that executes queued runs."""
    from agentruns import service

    service.run_worker(load_settings())


@keys_app.command("create")
def keys_create(
    project: Annotated[str, typer.Option(help="Project the key belongs to.")] = "default",
) -> None:
    """Create an API key and print it (only the key, on stdout; it is not shown again)."""
    from agentruns import admin

    typer.echo(admin.create_api_key(load_settings(), project=project))


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (their prefixes; keys are stored only as hashes)."""
    from agentruns import admin

    keys = admin.list_api_keys(load_settings())
    print_table(out, ["id", "prefix", "project", "created_at", "revoked_at"], keys)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id.")]) -> None:
    """Revoke an API key: requests with it fail from now on."""
    from agentruns import admin

    if not admin.revoke_api_key(load_settings(), key_id):
        fail(f"no such key: {key_id}")
    info.print(f"revoked {key_id}", highlight=False)


# -- agents -------------------------------------------------------------------------------


def read_agent_file(file: str) -> dict[str, Any]:
    """Agent fields from a YAML or JSON file (JSON is YAML), or from stdin with `-`."""
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        fields = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        fail(f"cannot read {file}: {exc}")
    if not isinstance(fields, dict):
        fail(f"{file} must hold a mapping of agent fields")
    return fields


@agents_app.command("create")
def agents_create(
    file: Annotated[str, typer.Option("--file", "-f", help="YAML or JSON file; - for stdin.")],
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Create an agent from a file and print its id."""
    fields = read_agent_file(file)
    with remote(base_url, api_key) as client:
        agent = client.agents.create(**fields)
    typer.echo(agent["id"])


@agents_app.command("list")
def agents_list(
    limit: Annotated[int | None, typer.Option(help="Show at most this many.")] = None,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """List agents."""
    with remote(base_url, api_key) as client:
        agents = list(client.agents.list(limit=limit))
    print_table(out, ["id", "name", "model", "version", "updated_at"], agents)


@agents_app.command("show")
def agents_show(agent_id: str, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Show an agent as JSON."""
    with remote(base_url, api_key) as client:
        print_json(out, client.agents.get(agent_id))


# -- runs ---------------------------------------------------------------------------------


def parse_vars(pairs: list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--var")
        values[name] = value
    return values


def follow_run(client: AgentRunsClient, run_id: str, *, after: int | None, as_json: bool) -> None:
    """Print the run's events until it ends; exit 1 unless it completed."""
    printer = EventPrinter(out, info)
    final = None
    for event in client.runs.follow(run_id, after=after):
        if as_json:
            line = {"id": event.id, "type": event.type, "data": event.data}
            out.print(
                json.dumps(line, ensure_ascii=False), markup=False, highlight=False, soft_wrap=True
            )
        else:
            printer(event)
        if event.is_terminal:
            final = event.data
    if final is None:  # the run had already ended before `after`
        final = client.runs.get(run_id)
        if not as_json:
            printer.final(final)
    if final.get("status") != "completed":
        raise typer.Exit(1)


@app.command("run")
def run_agent(
    agent_id: Annotated[str, typer.Argument(help="The agent (chat) id.")],
    var: Annotated[
        list[str] | None, typer.Option("--var", "-v", help="Template var NAME=VALUE; repeatable.")
    ] = None,
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="First user message.")
    ] = None,
    follow: Follow = False,
    as_json: AsJson = False,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Start a run of an agent and print its id (or follow it with --follow)."""
    variables = parse_vars(var or [])
    with remote(base_url, api_key) as client:
        run = client.runs.create(agent_id, variables or None, message=message)
        if not follow:
            if as_json:
                print_json(out, run)
            else:
                typer.echo(run["id"])
            return
        if not as_json:
            info.print(f"run {run['id']}", style="dim", highlight=False)
        follow_run(client, run["id"], after=None, as_json=as_json)


@runs_app.command("list")
def runs_list(
    status: Annotated[str | None, typer.Option(help="Only runs in this status.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only runs of this agent.")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many.")] = 20,
    as_json: AsJson = False,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """List runs, newest first."""
    with remote(base_url, api_key) as client:
        runs = list(client.runs.list(status=status, agent_id=agent, limit=limit))
    if as_json:
        print_json(out, runs)
        return
    rows = [
        {**run, "last_agent_message": short(run.get("last_agent_message") or "", 40)}
        for run in runs
    ]
    print_table(out, ["id", "agent_id", "status", "created_at", "last_agent_message"], rows)


@runs_app.command("show")
def runs_show(run_id: str, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Show a run as JSON."""
    with remote(base_url, api_key) as client:
        print_json(out, client.runs.get(run_id))


@runs_app.command("cancel")
def runs_cancel(run_id: str, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Cancel a run that has not ended."""
    with remote(base_url, api_key) as client:
        run = client.runs.cancel(run_id)
    typer.echo(run.get("status", "cancelled"))


@runs_app.command("continue")
def runs_continue(
    run_id: str,
    message: Annotated[str, typer.Option("--message", "-m", help="The next user message.")],
    follow: Follow = False,
    as_json: AsJson = False,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Send a completed run another message; it runs again with its whole context."""
    with remote(base_url, api_key) as client:
        after = None
        if follow and client.runs.get(run_id)["status"] == "completed":
            # Only what the continuation adds is shown: find where the history ends now.
            for event in client.runs.follow(run_id):
                after = event.id
        run = client.runs.continue_(run_id, message)
        if not follow:
            if as_json:
                print_json(out, run)
            else:
                typer.echo(run.get("status", "queued"))
            return
        follow_run(client, run_id, after=after, as_json=as_json)


@runs_app.command("follow")
def runs_follow(
    run_id: str,
    after: Annotated[int | None, typer.Option(help="Start after this event id.")] = None,
    as_json: AsJson = False,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Stream a run's events (from the start, or after --after) until it ends."""
    with remote(base_url, api_key) as client:
        follow_run(client, run_id, after=after, as_json=as_json)
