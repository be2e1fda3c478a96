"""Server-side secrets in tool specs: `${NAME}` is replaced by the worker's environment variable.

A spec stores the reference, never the value, so the API shows only `${NAME}`.
The value exists in memory while a tool runs; tools redact it from whatever
they hand back (a server that echoes its headers must not leak them into
events and results). Which names API clients may reference is the operator's
choice (`AGENTRUNS_TOOL_SECRETS`): otherwise any key holder could send
`${OPENAI_API_KEY}` to a URL of their own.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Mapping

import orjson

from agentruns.errors import ToolError

SECRET_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
REDACTED = "[redacted]"


def secret_names(value: str) -> list[str]:
    """The names referenced as `${NAME}` in `value`, in order."""
    return SECRET_REF.findall(value)


def parse_allowlist(text: str) -> tuple[str, ...]:
    """`"MY_TOKEN, GITHUB_*"` as the tuple of names and glob patterns it lists."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def is_allowed(name: str, allowlist: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in allowlist)


class ResolvedSecrets:
    """Substitutes `${NAME}` references and remembers the values, to redact them later."""

    def __init__(
        self,
        allowlist: Iterable[str] | None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        # None means trusted (the operator's own config file): any variable may be used.
        self._allowlist = None if allowlist is None else tuple(allowlist)
        self._environ = os.environ if environ is None else environ
        self.values: set[str] = set()

    def resolve(self, value: str) -> str:
        """`value` with each reference replaced; ToolError names a missing or refused one."""

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if self._allowlist is not None and not is_allowed(name, self._allowlist):
                raise ToolError(
                    f"the secret ${{{name}}} is not allowed on this server "
                    "(the operator lists usable names in AGENTRUNS_TOOL_SECRETS)"
                )
            secret = self._environ.get(name)
            if secret is None:
                raise ToolError(f"the secret ${{{name}}} is not set on this worker")
            if secret:
                self.values.add(secret)
            return secret

        return SECRET_REF.sub(substitute, value)

    def resolve_map(self, values: Mapping[str, str]) -> dict[str, str]:
        return {key: self.resolve(value) for key, value in values.items()}

    def redact(self, text: str, *, cut: bool = False) -> str:
        """`text` with every secret value hidden; with `cut`, also a secret's start at its end.

        A text cut at a size limit may end inside a secret: that partial value must go too.
        JSON-escaped forms of a value are hidden as well, as an echoing server may send them.
        """
        forms = {form for secret in self.values for form in (secret, _json_escaped(secret))}
        # Longest first, so a secret that contains another is hidden whole.
        for secret in sorted(forms, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        if cut:
            for secret in forms:
                for size in range(len(secret) - 1, 0, -1):
                    if text.endswith(secret[:size]):
                        text = text[:-size] + REDACTED
                        break
        return text


def _json_escaped(value: str) -> str:
    return orjson.dumps(value).decode()[1:-1]
