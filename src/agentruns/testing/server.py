"""Serving the fake providers: in a background thread for tests, or from the command line."""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from agentruns.testing.fake_provider import MODES, FakeProviderState

__all__ = ["FakeServer", "serve_from_command_line", "start_in_thread"]

_STARTUP_TIMEOUT_S = 10.0


class FakeServer:
    """A fake provider running in a background thread. `url` is the base URL an adapter uses."""

    def __init__(self, app: Starlette, server: uvicorn.Server, thread: threading.Thread, port: int):
        self.app = app
        self.root_url = f"http://127.0.0.1:{port}"
        self.url = self.root_url + getattr(app.state, "base_path", "")
        self.port = port
        self._server = server
        self._thread = thread

    @property
    def state(self) -> FakeProviderState:
        state: FakeProviderState = self.app.state.fake
        return state

    def script(self, *responses: dict[str, Any]) -> None:
        self.state.script(list(responses))

    def configure(self, **options: Any) -> None:
        self.state.configure(**options)

    def requests(self) -> list[Any]:
        return list(self.state.requests)

    def reset(self) -> None:
        self.state.reset()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_in_thread(app: Starlette, *, port: int = 0) -> FakeServer:
    """Serve `app` on 127.0.0.1 (a free port by default) until `.stop()`."""
    sock = _bind("127.0.0.1", port)
    server = uvicorn.Server(_config(app))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="fake-provider", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the fake provider server did not start")
        time.sleep(0.005)
    return FakeServer(app, server, thread, sock.getsockname()[1])


def serve_from_command_line(
    create_app: Callable[..., Starlette], argv: list[str] | None, *, description: str
) -> None:
    """`python -m agentruns.testing.fake_openai --port N`: prints one line, then serves."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--require-key", default=None, help="only accept this API key")
    parser.add_argument("--mode", choices=list(MODES), default="echo")
    parser.add_argument("--token-delay-s", type=float, default=0.0)
    parser.add_argument("--first-token-delay-s", type=float, default=0.0)
    parser.add_argument(
        "--no-record", action="store_true", help="keep no request bodies (long benchmarks)"
    )
    args = parser.parse_args(argv)
    app = create_app(require_key=args.require_key)
    app.state.fake.configure(
        mode=args.mode,
        token_delay_s=args.token_delay_s,
        first_token_delay_s=args.first_token_delay_s,
        record_requests=not args.no_record,
    )
    sock = _bind(args.host, args.port)
    print(f"listening on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(_config(app)).run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so; without it
    # Nagle holds a response's first body chunk back for a delayed ACK (~40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _config(app: Starlette) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        ws="none",
        timeout_graceful_shutdown=1,
    )
