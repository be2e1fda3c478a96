"""Fast JSON responses (orjson) and the `{"data": ...}` envelopes."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse as _StarletteJSONResponse


class JSONResponse(_StarletteJSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def envelope(data: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse({"data": data}, status_code=status_code)


def list_envelope(items: list[Any], next_cursor: str | None) -> JSONResponse:
    return JSONResponse(
        {"data": items, "has_more": next_cursor is not None, "next_cursor": next_cursor}
    )
