"""Checking the arguments a model produced against the tool's JSON Schema.

A bad call goes back to the model as a tool error asking it to try again; it
never reaches a tool or a client. Each retry costs a model step, so
`max_steps` bounds them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson

# jsonschema (with referencing, attrs and rpds) is imported by the functions that use it,
# not at start: a server that has not yet checked a tool schema needs none of it.
if TYPE_CHECKING:
    from jsonschema import Draft202012Validator


class InvalidArguments(ValueError):
    """The arguments are not a JSON object matching the tool's schema; the text says why."""


@lru_cache(maxsize=1024)
def _validator(schema_json: bytes) -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(orjson.loads(schema_json))


def parse_arguments(name: str, arguments: str | None, schema: dict[str, Any]) -> dict[str, Any]:
    """The arguments as a dict, or InvalidArguments with a message meant for the model."""
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError as exc:
        raise InvalidArguments(
            f"error: the arguments for {name} are not valid JSON ({exc}); call it again "
            "with a JSON object"
        ) from exc
    if not isinstance(value, dict):
        raise InvalidArguments(
            f"error: the arguments for {name} must be a JSON object; call it again"
        )
    from jsonschema.exceptions import best_match

    validator = _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    problem = best_match(validator.iter_errors(value))
    if problem is not None:
        where = "/".join(str(p) for p in problem.absolute_path) or "(the arguments)"
        raise InvalidArguments(
            f"error: invalid arguments for {name} at {where}: {problem.message}; call it again "
            "with arguments matching its schema"
        )
    return value


def check_schema(schema: Any) -> None:
    """Raise ValueError if `schema` is not a usable JSON Schema for tool parameters."""
    if not isinstance(schema, dict):
        raise ValueError("parameters must be a JSON Schema object")
    from jsonschema import Draft202012Validator

    try:
        Draft202012Validator.check_schema(schema)
    except Exception as exc:
        raise ValueError(f"parameters is not a valid JSON Schema: {exc}") from exc
