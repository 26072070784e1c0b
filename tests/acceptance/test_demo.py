"""The README's first command keeps working: the demo on the embedded default."""

import os
import subprocess
import sys

from tests.support import ROOT


def test_the_demo_runs_on_the_embedded_default():
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CELERY_BROKER_URL", "RELIABLE_DATABASE_URL")
    }
    result = subprocess.run(
        [sys.executable, "-m", "workers.demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broker filesystem://" in result.stdout
    assert "relay published 1 message -> receipts: 1" in result.stdout
    assert "state DUPLICATE" in result.stdout
    assert "payments still: 1" in result.stdout
    assert "DEAD_LETTERED after 3 runs" in result.stdout
    assert "MaxRetriesExceeded" in result.stdout
    assert "replay" in result.stdout
    assert result.stdout.rstrip().endswith("exactly-once effects held")
