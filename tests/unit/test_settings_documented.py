"""Every setting is documented: an undocumented knob might as well not exist."""

from __future__ import annotations

from pathlib import Path

from agentruns.config import Settings

DOC = Path(__file__).parents[2] / "docs" / "configuration.md"


def test_every_setting_is_in_the_configuration_doc() -> None:
    text = DOC.read_text()
    missing = [
        f"AGENTRUNS_{name.upper()}"
        for name in Settings.model_fields
        if f"`AGENTRUNS_{name.upper()}`" not in text
    ]
    assert missing == []
