"""The `agentruns` command.

Operator commands (`serve`, `worker`, `migrate`, `keys`) work on the local service and its
database. Everything else talks to a server over HTTP through the SDK, never touching the
database, so it works against any deployment: `--base-url` / `--api-key`, else
`AGENTRUNS_BASE_URL` / `AGENTRUNS_API_KEY`, else the credentials `agentruns serve` saved.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

from agentruns.cli_render import EventPrinter, print_json, print_table, short
from agentruns.errors import AgentRunsError

# The SDK and PyYAML are imported by the commands that use them: `serve` and `worker`
# would otherwise carry them, unused, for the life of the server.
if TYPE_CHECKING:
    from agentruns.client import AgentRunsClient, RunEvent, ToolHandler
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
Migrate = Annotated[
    bool,
    typer.Option(
        "--migrate/--no-migrate",
        help="Apply database migrations at start (--no-migrate: `agentruns migrate` did).",
    ),
]
ToolHandlers = Annotated[
    list[str] | None,
    typer.Option(
        "--tool-handler",
        "-t",
        help=(
            "Answer a client-side tool with a local function: NAME=module:function, called"
            " with (args, agent_id, run_id), async or not; repeatable. Implies --follow."
        ),
        show_default=False,
    ),
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
    from agentruns.client import AgentRunsClient

    return AgentRunsClient(base_url=base_url, api_key=api_key)


@contextmanager
def remote(base_url: str | None, api_key: str | None) -> Iterator[AgentRunsClient]:
    """A client whose failures end the command with a one-line error instead of a traceback."""
    from agentruns.client import APIError

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
    migrate: Migrate = True,
) -> None:
    """Run the API server (with an embedded worker unless --no-worker)."""
    from agentruns import service

    service.serve(load_settings(), host=host, port=port, with_worker=worker, run_migrations=migrate)


@app.command("worker")
def worker_command(migrate: Migrate = True) -> None:
    """Run a worker that executes queued runs."""
    from agentruns import service

    service.run_worker(load_settings(), run_migrations=migrate)


@app.command("migrate")
def migrate_command() -> None:
    """Apply the database migrations, then exit (safe to run from several machines at once)."""
    from agentruns import service

    settings = load_settings()
    service.migrate(settings)
    info.print("the database schema is up to date", highlight=False)


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
    import yaml

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


def event_printer(as_json: bool) -> Callable[[RunEvent], None]:
    """Shows each event: as the agent's live text and progress lines, or as JSON lines."""
    printer = EventPrinter(out, info)

    def show(event: RunEvent) -> None:
        if as_json:
            line = {"id": event.id, "type": event.type, "data": event.data}
            out.print(
                json.dumps(line, ensure_ascii=False), markup=False, highlight=False, soft_wrap=True
            )
        else:
            printer(event)

    return show


def follow_run(
    client: AgentRunsClient,
    run_id: str,
    *,
    after: int | None,
    as_json: bool,
    tools: dict[str, ToolHandler] | None = None,
) -> None:
    """Print the run's events until it ends; exit 1 unless it completed."""
    if tools:
        follow_answering_tools(client, run_id, after=after, as_json=as_json, tools=tools)
        return
    show = event_printer(as_json)
    final = None
    for event in client.runs.follow(run_id, after=after):
        show(event)
        if event.is_terminal:
            final = event.data
    if final is None:  # the run had already ended before `after`
        final = client.runs.get(run_id)
        if not as_json:
            EventPrinter(out, info).final(final)
    if final.get("status") != "completed":
        raise typer.Exit(1)


def follow_answering_tools(
    client: AgentRunsClient,
    run_id: str,
    *,
    after: int | None,
    as_json: bool,
    tools: dict[str, ToolHandler],
) -> None:
    """`follow_run` that also runs the local handlers of the run's client-side tool calls."""
    from agentruns.client import MissingToolHandler, RunError

    show = event_printer(as_json)

    def on_event(event: RunEvent) -> None:
        # execute_agent replays the run from its start; show only what was asked for.
        if after is None or event.id > after:
            show(event)

    try:
        client.execute_agent(resume_run_id=run_id, tools=tools, on_event=on_event)
    except MissingToolHandler as exc:
        names = ", ".join(exc.tool_names)
        fail(
            f"run {run_id} waits for {names}, which has no --tool-handler; the run stays"
            f" paused: answer it with `agentruns runs follow {run_id} --tool-handler"
            f" {exc.tool_names[0]}=module:function`"
        )
    except RunError:
        raise typer.Exit(1) from None  # the final status line was printed with its event


def load_tool_handlers(specs: list[str]) -> dict[str, ToolHandler]:
    """`--tool-handler NAME=module:function` options as a `set_tools` mapping."""
    handlers: dict[str, ToolHandler] = {}
    for spec in specs:
        name, _, target = spec.partition("=")
        module_name, _, attribute = target.partition(":")
        if not (name and module_name and attribute):
            raise typer.BadParameter(
                f"expected NAME=module:function, got {spec!r}", param_hint="--tool-handler"
            )
        # `python -m agentruns` puts the working directory on sys.path, the `agentruns`
        # script does not; the handlers' module usually sits where the command is run.
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            target_object: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                target_object = getattr(target_object, part)
        except Exception as exc:
            raise typer.BadParameter(
                f"cannot load {target}: {type(exc).__name__}: {exc}", param_hint="--tool-handler"
            ) from exc
        if not callable(target_object):
            raise typer.BadParameter(f"{target} is not callable", param_hint="--tool-handler")
        handlers[name] = target_object
    return handlers


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
    tool_handler: ToolHandlers = None,
    as_json: AsJson = False,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Start a run of an agent and print its id (or follow it with --follow)."""
    variables = parse_vars(var or [])
    tools = load_tool_handlers(tool_handler or [])
    follow = follow or bool(tools)
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
        follow_run(client, run["id"], after=None, as_json=as_json, tools=tools)


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
    tool_handler: ToolHandlers = None,
    as_json: AsJson = False,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Stream a run's events (from the start, or after --after) until it ends.

    With --tool-handler, also answer its client-side tool calls (re-attach to a paused run).
    """
    tools = load_tool_handlers(tool_handler or [])
    with remote(base_url, api_key) as client:
        follow_run(client, run_id, after=after, as_json=as_json, tools=tools)
