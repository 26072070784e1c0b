"""A CI-sized part of Celery's own integration suite, plain and on ReliableTask.

One test of each family issue #14 measured differing: a failing task's result, wrong
arguments (a deterministic error), ``self.retry`` with ``max_retries``, ``replace()``,
a chain's errback, a group's errback, an error propagating to a chord, and a chord
header's errback (test_group_chains). The full run (three files) stays on demand:
``python -m tests.celery_suite`` (docs/testing.md).

Skipped unless ``RELIABLE_CELERY_SUITE=1``: most of this subset fails on ReliableTask
until issue #14's fixes land.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, require

pytestmark = pytest.mark.skipif(
    os.environ.get("RELIABLE_CELERY_SUITE") != "1",
    reason="set RELIABLE_CELERY_SUITE=1 (Celery's suite on ReliableTask: issue #14)",
)

SUBSET = " or ".join(
    [
        "test_fail",
        "test_wrong_arguments",
        "test_task_retried_once",
        "test_replaced_task_nesting_level_1",
        "test_chain_error_handler_with_eta",
        "test_errback_called_by_group_fail_first",
        "test_error_propagates_to_chord_from_simple",
        "test_pending_chord_keeps_header_errback",
    ]
)


def test_celery_suite_subset_passes_on_reliable_task(tmp_path: Path) -> None:
    database = require("postgresql")
    require("redis")
    out = tmp_path / "run"
    files = ["test_tasks.py", "test_canvas.py", "test_group_chains.py"]
    command = [sys.executable, "-m", "tests.celery_suite", "--files", *files, "-k", SUBSET]
    command += ["--database-url", database, "--out", str(out)]
    result = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    report = json.loads((out / "report.json").read_text())
    plain_passed = sum(counts["passed_plain"] for counts in report["per_file"].values())
    assert plain_passed >= 8, result.stdout + result.stderr  # the subset really ran
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["unexpected"] == []
