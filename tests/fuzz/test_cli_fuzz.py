"""Fuzz: hostile arguments to ``celery reliable dlq show|replay|purge|list``.

The contract (SPEC.md §6): bad arguments give a one-line error and exit 2, and nothing is
changed by a command that fails. Never a traceback. The commands run in this process
(click's test runner, with the CLI context Celery gives them) for speed, against a
PostgreSQL store; a few run as real ``celery -A ... reliable`` processes too, including one
with argument bytes that are not UTF-8, which only a real process can receive.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result

from celery_reliable import Reliable
from celery_reliable.cli import reliable as reliable_command
from celery_reliable.dead_letters import FailedMessage
from celery_reliable.testing import drop_store
from tests.acceptance.intake import LeavesAMark
from tests.support import ROOT, make_app, require, unique

from .hostile import (
    BAD_DURATIONS,
    BAD_MOMENTS,
    HARMLESS_TEXT,
    NOT_A_NUMBER,
    NOT_UTF8,
    TOO_BIG,
    tokens,
)

SEED = int(os.environ.get("RELIABLE_FUZZ_SEED", str(random.randrange(1_000_000))))
APP = "tests.acceptance.worker_app"

pytestmark = pytest.mark.services


@dataclass
class Cli:
    reliable: Reliable
    env: dict[str, str]
    marker: Path

    def run(self, *args: str) -> Result:
        context = CLIContext(app=self.reliable.app, no_color=True, workdir=None, quiet=True)
        return CliRunner().invoke(reliable_command, ["dlq", *args], obj=context)

    def snapshot(self) -> tuple[int, int, int]:
        """Entries, replayed entries, outbox rows: what a failed command must not change."""
        letters = self.reliable.dead_letters
        return letters.count(), letters.count(replayed=True), self.reliable.admin.outbox_stats().due


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """A PostgreSQL store with a few entries, one a pickle that must stay unloaded."""
    url = require("postgresql")
    prefix = unique()
    directory = tmp_path_factory.mktemp("cli")
    reliable = Reliable.of(make_app("memory://", url, prefix))
    reliable.create_schema()
    marker = directory / "unpickled"
    import pickle

    for n, reason in enumerate(("MaxRetriesExceeded", "PoisonMessage", "DeserializationFailed")):
        message = FailedMessage(
            message_id=f"order-{n}",
            task_id=f"t-{n}",
            task_name="effect",
            args=None if reason == "DeserializationFailed" else [n],
            kwargs=None if reason == "DeserializationFailed" else {},
            raw_body=pickle.dumps(LeavesAMark(marker)),
            content_type="application/x-python-serialize",
        )
        reliable.dead_letters.add(message, reason, detail=f"failure {n}")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RT_BROKER": "memory://",
        "RT_DB": url,
        "RT_PREFIX": prefix,
        "RT_DIR": str(directory),
    }
    yield Cli(reliable, env, marker)
    reliable.database.dispose()
    drop_store(url, prefix)


def refused(result: Result) -> None:
    """Exit 2, one ``Error:`` line, no traceback (what a user sees for a bad argument)."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output


BAD_IDS = (*NOT_A_NUMBER, *TOO_BIG, *NOT_UTF8, "0", "1 2")

CASES = [
    *(("show", value) for value in BAD_IDS),
    ("show", "--", "-1"),
    *(("replay", value) for value in BAD_IDS),
    ("replay", "1", "99999999999999999999"),
    ("replay", "--reason", "Nope"),
    ("replay", "--reason", "maxretriesexceeded"),
    ("replay", "--reason", ""),
    ("replay", "--task", "\udcff"),
    *(
        ("replay", "--reason", "PoisonMessage", option, value)
        for option, value in (
            ("--limit", "-1"),
            ("--limit", "99999999999999999999"),
            ("--rate", "0"),
            ("--rate", "-1"),
            ("--rate", "nan"),
            ("--rate", "inf"),
            ("--stop-after-failures", "0"),
        )
    ),
    *(("purge", "--older-than", value) for value in BAD_DURATIONS),
    *(("purge", "--dry-run", "--older-than", value) for value in BAD_DURATIONS),
    ("purge",),
    *(("list", option, value) for option in ("--since", "--until") for value in BAD_MOMENTS),
    *(("list", "--task", value) for value in NOT_UTF8),
    ("list", "--reason", "Nope"),
    ("list", "--reason", "maxretriesexceeded"),
    *(("list", option, value) for option in ("--limit", "--offset") for value in TOO_BIG),
    ("list", "--limit", "-1"),
    ("list", "--offset", "abc"),
]


@pytest.mark.parametrize(
    "args", CASES, ids=[" ".join(c)[:60].encode("unicode_escape").decode() for c in CASES]
)
def test_a_bad_argument_is_one_line_exit_2_and_changes_nothing(cli: Cli, args: tuple[str, ...]):
    before = cli.snapshot()
    refused(cli.run(*args))
    assert cli.snapshot() == before


@pytest.mark.parametrize("value", HARMLESS_TEXT)
def test_hostile_text_is_a_filter_value_never_sql(cli: Cli, value: str):
    result = cli.run("list", "--task", value, "--json")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "[]"
    assert cli.reliable.dead_letters.count() == 3  # the table is still there, whole


def test_random_hostile_values_never_crash_and_change_nothing(cli: Cli):
    """Seeded random values in every argument: exit 0 or a one-line exit 2, nothing else.

    Actions run as dry runs (a random value can be a valid id or duration: a dry run still
    parses and checks it, and must not change anything either way).
    """
    before = cli.snapshot()
    for value in tokens(SEED, 60):
        for args in (
            ("show", "--", value),
            ("replay", "--dry-run", "--", value),
            ("purge", "--dry-run", "--older-than", value),
            ("list", "--since", value),
            ("list", "--until", value),
            ("list", "--task", value),
            ("list", "--limit", value),
        ):
            result = cli.run(*args)
            if result.exit_code != 0:
                try:
                    refused(result)
                except AssertionError as exc:
                    raise AssertionError(f"seed {SEED}: dlq {args!r}: {exc}") from None
    assert cli.snapshot() == before
    assert not cli.marker.exists(), "a stored pickle was unpickled"


def test_as_real_processes_with_argument_bytes_that_are_not_utf8(cli: Cli):
    for args in (
        [b"list", b"--task", b"\xff\xfe"],
        [b"show", b"99999999999999999999"],
        [b"purge", b"--older-than", b"1000000d"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "celery", "-A", APP, "reliable", "dlq", *args],
            env=cli.env,
            cwd=ROOT,
            capture_output=True,
            timeout=60,
        )
        stderr = result.stderr.decode(errors="replace")
        assert result.returncode == 2, (args, stderr)
        assert "Traceback" not in stderr
        assert len([line for line in stderr.splitlines() if line.startswith("Error:")]) == 1
    shown = cli.run("show", str(cli.reliable.dead_letters.list(limit=1)[0].id))
    assert shown.exit_code == 0, shown.output
    assert "x-python-serialize" in shown.output
    assert not cli.marker.exists(), "showing a pickle entry unpickled it"
