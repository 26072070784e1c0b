"""The docs stay true: the configuration reference is current and the site builds strictly."""

import os
import re
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


def test_no_table_row_is_cut_off_from_its_table():
    """A paragraph between two rows ends the table: the rows after it render as text (as
    operations.md's ``beat`` row did, under the relay's log line)."""
    separator = re.compile(r"^\|[\s:|-]+\|\s*$")
    stray = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        lines = page.read_text().splitlines()
        fenced = False
        for number, line in enumerate(lines):
            fenced ^= line.startswith("```")
            if fenced or not line.startswith("|"):
                continue
            after = lines[number + 1] if number + 1 < len(lines) else ""
            if not (number and lines[number - 1].startswith("|")) and not separator.match(after):
                stray.append(f"{page.name}:{number + 1}: {line[:60]}")
    assert not stray, stray


def test_a_page_that_runs_flower_installs_its_extra_first():
    """Each page's shell blocks, read in order, install the ``flower`` extra before they
    run ``reliable flower``: without it the command only says "Flower is not installed"
    (the quick start once installed ``[postgres,redis]``). The ``test`` extra has Flower
    too, but it is how to run the tests, not what a user of Flower installs."""
    install = re.compile(r"pip install (?:-e )?['\"]?[^\s'\"]*\[([a-z,]+)\]")
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        installed: set[str] = set()
        for block in re.findall(r"```(?:bash|console)\n(.*?)```", page.read_text(), re.DOTALL):
            for line in block.splitlines():
                for extras in install.findall(line):
                    installed.update(extras.split(","))
                if "reliable flower" in line:
                    assert "flower" in installed, f"{page.name}: {line.strip()}"
