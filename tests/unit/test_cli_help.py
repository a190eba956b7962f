"""`vitrine --help` and each group's help list every command with a one-line summary."""

from collections.abc import Iterator
from typing import Any

import typer
from typer.core import TyperGroup

from pipeline.cli.app import app


def commands(group: TyperGroup, path: str = "") -> Iterator[tuple[str, Any]]:
    for name, command in group.commands.items():
        yield f"{path}{name}", command
        if isinstance(command, TyperGroup):
            yield from commands(command, f"{path}{name} ")


def test_every_command_is_listed_with_its_summary_on_one_line():
    """Typer's rich help would keep a wrapped docstring's line breaks in the command list."""
    listed = {
        path: command.short_help or (command.help or "").split("\n\n")[0]
        for path, command in commands(typer.main.get_command(app))  # type: ignore[arg-type]
    }
    assert {"reindex", "worker", "services client-env", "keys create"} <= set(listed)
    assert [path for path, summary in listed.items() if "\n" in summary.strip()] == []
    assert listed["reindex"].startswith("Re-embed every product into a new index for another")
