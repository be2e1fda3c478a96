"""How the CLI shows things: tables, JSON, and a run's events as they arrive."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from agentruns.client import RunEvent

__all__ = ["EventPrinter", "print_json", "print_table", "short"]

STATUS_STYLES = {
    "queued": "cyan",
    "in_progress": "blue",
    "awaiting_tool_calls": "magenta",
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
}


def print_json(console: Console, value: Any) -> None:
    # Plain text, not rich's highlighter: scripts parse this output.
    console.print(
        json.dumps(value, indent=2, ensure_ascii=False, default=str),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(console: Console, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """One row per object; a `status` column is coloured."""
    table = Table(*columns, box=None, header_style="bold", pad_edge=False)
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column)
            cell = "" if value is None else str(value)
            style = STATUS_STYLES.get(cell, "") if column == "status" else ""
            cells.append(Text(cell, style=style))
        table.add_row(*cells)
    console.print(table)


class EventPrinter:
    """Shows a run's events: the assistant's text on `out` as it streams, the rest on `info`.

    Keeping progress lines off `out` leaves it holding only the agent's answer when piped.
    """

    def __init__(self, out: Console, info: Console) -> None:
        self.out = out
        self.info = info
        self._mid_line = False  # whether `out` has text not yet ended by a newline

    def __call__(self, event: RunEvent) -> None:
        data = event.data
        if event.type == "message.delta":
            self._text(str(data.get("delta", "")))
        elif event.type == "message.completed":
            if not self._mid_line:
                # Nothing was streamed for this message (the model did not stream): show it whole.
                content = data.get("content") or data.get("text")
                if isinstance(content, str):
                    self._text(content)
            self._end_line()
        elif event.type == "tool_call.started":
            self._dim(f"→ {data.get('name', 'tool')}({short(data.get('arguments', ''), 80)})")
        elif event.type == "tool_call.completed":
            self._dim(f"← {data.get('name', 'tool')}: {short(data.get('output', ''), 80)}")
        elif event.type == "tool_calls.required":
            names = ", ".join(str(call.get("name")) for call in data.get("tool_calls", []))
            self._dim(f"waiting for client-side tool responses: {names}")
        elif event.type == "run.status":
            status = data.get("status")
            if status not in ("completed", "failed", "cancelled"):
                self._dim(f"· {status}")
        elif event.is_terminal:
            self.final(data)

    def final(self, run: dict[str, Any]) -> None:
        """The run's final status line."""
        self._end_line()
        status = str(run.get("status", "?"))
        line = Text(status, style=STATUS_STYLES.get(status, "bold"))
        error = run.get("error")
        if isinstance(error, dict):
            line.append(f": {error.get('type')}: {error.get('message')}")
        usage = run.get("usage")
        if isinstance(usage, dict) and usage.get("requests"):
            line.append(
                f"  ({usage.get('requests')} requests, {usage.get('input_tokens', 0)} in / "
                f"{usage.get('output_tokens', 0)} out tokens)",
                style="dim",
            )
        self.info.print(line, highlight=False)

    def _text(self, text: str) -> None:
        if text:
            self.out.print(text, end="", markup=False, highlight=False, soft_wrap=True)
            self._mid_line = not text.endswith("\n")

    def _end_line(self) -> None:
        if self._mid_line:
            self.out.print()
            self._mid_line = False

    def _dim(self, line: str) -> None:
        self._end_line()
        self.info.print(Text(line, style="dim"), soft_wrap=True)
