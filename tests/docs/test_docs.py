"""The README documents the output schema and opens with the two commands."""

from __future__ import annotations

from pathlib import Path

from gmcf.runtime.output import RANK_COLUMN, RESULT_COLUMNS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_result_column_is_documented() -> None:
    for name, _, _ in (*RESULT_COLUMNS, RANK_COLUMN):
        assert f"| `{name}` |" in README, f"README does not document column {name!r}"


def test_readme_opens_with_the_two_commands() -> None:
    head = README.split("```", 2)[1]
    assert "make demo" in head and "make test" in head
