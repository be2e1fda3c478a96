"""The CLI's saved connection: the base URL and API key `agentruns serve` wrote on first start."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from agentruns.errors import ConfigurationError

__all__ = ["Credentials", "credentials_path", "load_credentials", "save_credentials"]


@dataclass(frozen=True)
class Credentials:
    base_url: str
    api_key: str


def credentials_path(state_dir: Path) -> Path:
    return state_dir / "credentials.json"


def save_credentials(state_dir: Path, *, base_url: str, api_key: str) -> Path:
    """Write the credentials readable by the owner only; returns the file's path."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = credentials_path(state_dir)
    tmp = path.with_name(path.name + ".tmp")
    # Created 0600 rather than chmod-ed afterwards, so the key is never readable by others,
    # and renamed into place so a reader never sees half a file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump({"base_url": base_url, "api_key": api_key}, file, indent=2)
        file.write("\n")
    os.chmod(tmp, 0o600)  # a stale tmp file may have had wider permissions
    os.replace(tmp, path)
    return path


def load_credentials(state_dir: Path) -> Credentials | None:
    """The saved credentials, or None when there are none."""
    path = credentials_path(state_dir)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read saved credentials {path}: {exc}") from exc
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("base_url"), str)
        or not isinstance(raw.get("api_key"), str)
    ):
        raise ConfigurationError(f"saved credentials {path} lack a base_url or api_key")
    return Credentials(base_url=raw["base_url"], api_key=raw["api_key"])
