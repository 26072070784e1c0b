"""docs/testing.md's example runs as written: a user's chaos test of a small app, under kills.

The page's two Python files (each block starts with a ``# <file name>`` line) are written
to a fresh directory and run with pytest there, as a user would, against the real broker
and store; only the table prefix is this test's own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from tests.support import ROOT, require, unique

GUIDE = ROOT / "docs" / "testing.md"
FILES = ("shop_app.py", "test_shop_chaos.py")


def example_files() -> dict[str, str]:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.DOTALL)
    named = {block.split("\n", 1)[0].removeprefix("# "): block for block in blocks}
    return {name: named[name] for name in FILES}


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_the_guide_example_passes_under_kills(tmp_path, broker):
    for name, source in example_files().items():
        (tmp_path / name).write_text(source)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),  # this checkout's celery_reliable
        "SHOP_DB": require("postgresql"),
        "SHOP_BROKER": require(broker),
        "SHOP_PREFIX": unique("shop"),
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", FILES[1]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    took = time.monotonic() - started
    print(result.stdout[-2000:])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert "200 expected, 200 effects applied (200 distinct)" in result.stdout
    assert took < 120, f"the guide's example took {took:.0f} s; it should stay short"
