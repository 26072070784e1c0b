"""Every `celery reliable ...` command the docs show exists and accepts those arguments."""

from __future__ import annotations

import re
import shlex

import click
import pytest

from celery_reliable.cli import reliable
from tests.support import ROOT

SUBCOMMANDS = "db|relay|dlq|outbox|inbox|cleanup|recover-stuck|breakers|health|flower"
COMMAND = re.compile(rf"reliable ((?:{SUBCOMMANDS})\b[^`\n#|\\]*)")
#: What the docs write as placeholders, and a value of the right kind for each.
SAMPLES = {"ID": "1", "ID...": "1", "MESSAGE_ID": "m-1", "NAME": "x", "R": "PoisonMessage"}


def documented_commands() -> list[tuple[str, str]]:
    found = set()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for match in COMMAND.finditer(path.read_text()):
            text = match.group(1).strip()
            if "/" not in text:  # "db upgrade/current" names two commands in prose
                found.add((path.name, text))
    return sorted(found)


def parse(args: list[str]) -> None:
    """Resolve the sub-command path and parse its arguments, without running it."""
    command: click.Command = reliable
    while isinstance(command, click.Group) and args and args[0] in command.commands:
        command = command.commands[args.pop(0)]
    if isinstance(command, click.Group):
        if args:
            raise click.UsageError(f"{command.name} has no sub-command {args[0]!r}")
        return  # the prose names a group, such as `celery reliable dlq`
    command.make_context(command.name or "", args)


@pytest.mark.parametrize(("page", "command"), documented_commands())
def test_documented_command_parses(page, command):
    args = [SAMPLES.get(token, token) for token in shlex.split(command)]
    try:
        parse(args)
    except click.exceptions.Exit:  # --help and friends
        pass
    except click.ClickException as exc:
        pytest.fail(f"{page}: `reliable {command}`: {exc.format_message()}")


def test_the_docs_show_commands():
    assert len(documented_commands()) > 20
