"""The CLI's progress bar: drawn on a terminal, silent elsewhere (a failing command's
error stays its only line of stderr)."""

from __future__ import annotations

import io

import pytest

from celery_reliable.cli.output import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_the_bar_prints_nothing(capsys: pytest.CaptureFixture[str]):
    with progress_bar(3, "relaying") as bar:
        bar.update(2)
    assert capsys.readouterr() == ("", "")


def test_on_a_terminal_the_bar_is_drawn_on_stderr(monkeypatch: pytest.MonkeyPatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with progress_bar(4, "relaying") as bar:
        bar.update(4)
    assert "relaying" in terminal.getvalue()
    assert "100%" in terminal.getvalue()
