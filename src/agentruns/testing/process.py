"""Real `agentruns` server processes for end-to-end tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

__all__ = ["ServerProcess", "free_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`agentruns serve` (or another subcommand) in a subprocess, on a free port.

    The first start on a fresh database prints the new API key as the first
    line of stdout; `api_key` keeps it across restarts.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = args if args is not None else ["serve"]
        self.env = {
            **os.environ,
            "AGENTRUNS_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'agentruns.db'}",
            "AGENTRUNS_STATE_DIR": str(workdir / "state"),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.api_key: str | None = None
        self.process: subprocess.Popen[str] | None = None
        self._log_path = workdir / f"server-{self.port}.log"

    def start(self, timeout_s: float = 30.0) -> ServerProcess:
        command = [sys.executable, "-m", "agentruns", *self.args]
        if self.args[:1] == ["serve"]:
            command += ["--host", "127.0.0.1", "--port", str(self.port)]
        log = self._log_path.open("a")
        self.process = subprocess.Popen(
            command,
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        log.close()
        if self.args[:1] == ["serve"]:
            self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout_s
        if self.api_key is None:
            line = self.process.stdout.readline().strip()
            if not line.startswith("ar_"):
                raise RuntimeError(f"server printed no API key first: {line!r}\n{self.logs()}")
            self.api_key = line
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}\n{self.logs()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {timeout_s} s\n{self.logs()}")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def logs(self) -> str:
        return self._log_path.read_text() if self._log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self._close_pipes()

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
