"""`${NAME}` secrets: resolved from the worker's environment, allow-listed, redacted."""

from __future__ import annotations

import pytest

from agentruns.engine.tools.secrets import ResolvedSecrets, parse_allowlist, secret_names
from agentruns.errors import ToolError

ENV = {"CRM_TOKEN": "tok-123", "GITHUB_TOKEN": "ghp-abc", "EMPTY": ""}


def test_names_and_allowlists() -> None:
    assert secret_names("Bearer ${CRM_TOKEN} and ${X}") == ["CRM_TOKEN", "X"]
    assert secret_names("$CRM_TOKEN {CRM_TOKEN} ${1BAD}") == []
    assert parse_allowlist(" CRM_TOKEN, GITHUB_*,,") == ("CRM_TOKEN", "GITHUB_*")


def test_resolve_and_redact() -> None:
    secrets = ResolvedSecrets(("CRM_TOKEN", "GITHUB_*"), ENV)
    resolved = secrets.resolve_map({"A": "Bearer ${CRM_TOKEN}", "B": "${GITHUB_TOKEN}:x"})
    assert resolved == {"A": "Bearer tok-123", "B": "ghp-abc:x"}
    assert (
        secrets.redact("echo: Bearer tok-123 / ghp-abc") == "echo: Bearer [redacted] / [redacted]"
    )
    assert secrets.resolve("no refs") == "no refs"


def test_refused_and_missing_secrets_are_tool_errors() -> None:
    with pytest.raises(ToolError, match="not allowed"):
        ResolvedSecrets(("CRM_TOKEN",), ENV).resolve("${GITHUB_TOKEN}")
    with pytest.raises(ToolError, match="not set on this worker"):
        ResolvedSecrets(None, ENV).resolve("${MISSING}")
    trusted = ResolvedSecrets(None, ENV)
    assert trusted.resolve("${GITHUB_TOKEN}") == "ghp-abc"
    assert trusted.resolve("${EMPTY}") == "" and trusted.redact("x") == "x"


def test_a_secret_cut_at_the_size_limit_leaks_no_prefix() -> None:
    resolved = ResolvedSecrets(None, {"TOKEN": "s3cr3t-value-123"})
    resolved.resolve("Bearer ${TOKEN}")
    cut = "echo: Bearer s3cr3t-va"
    assert resolved.redact(cut, cut=True) == "echo: Bearer [redacted]"
    assert "s3cr3t" not in resolved.redact('{"h": "s3cr3t-value-123"}')


def test_json_escaped_secret_is_hidden() -> None:
    resolved = ResolvedSecrets(None, {"TOKEN": 'quote"and\\slash'})
    resolved.resolve("${TOKEN}")
    assert resolved.redact('{"echo": "quote\\"and\\\\slash"}') == '{"echo": "[redacted]"}'
