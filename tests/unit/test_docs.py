"""The docs stay true: the configuration reference is current and the site builds strictly."""

import os
import subprocess
import sys

import pytest

from tests.support import ROOT


def test_configuration_reference_is_current():
    result = subprocess.run(
        [sys.executable, "docs/generate_configuration.py", "--check"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # this checkout's settings, not another
        check=False,
    )
    assert result.returncode == 0, "run: python docs/generate_configuration.py"


def test_the_documentation_site_builds_strictly(tmp_path):
    """Broken links and pages missing from the navigation fail the build (as in tox -e docs)."""
    pytest.importorskip("mkdocs", reason="mkdocs-material is in the test extras")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr


def test_the_index_links_every_page():
    index = (ROOT / "docs" / "index.md").read_text()
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"index.md"}
    missing = sorted(page for page in pages if f"]({page}" not in index)
    assert not missing, f"docs/index.md does not link {missing}"
