"""Celery's own integration tests, from the source distribution of the installed Celery.

The tests must match the Celery that runs them, so the version is the installed one and
the only download is that version's sdist, through pip, once per cache directory. Only
``t/`` is extracted (not ``celery/``): the installed package is the one under test.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

#: Markers Celery's own pytest configuration registers (its pyproject.toml), with the same
#: strictness, so its tests run as they do in Celery's CI.
PYTEST_INI = """\
[pytest]
addopts = --strict-markers -p no:cacheprovider
xfail_strict = true
python_classes = test_*
markers =
    flaky
    timeout
    amqp
    celery
"""


def celery_version() -> str:
    """The installed Celery's version: the tests are taken from the same release."""
    return version("celery")


def integration_tests(cache: Path) -> Path:
    """A directory holding Celery's ``t/`` package for the installed version, with a pytest.ini.

    Downloaded and extracted on first use; later runs reuse it.
    """
    release = celery_version()
    root = cache / f"celery-{release}"
    if (root / "pytest.ini").exists():
        return root
    sdist = _download(release, cache)
    _extract_tests(sdist, root)
    (root / "pytest.ini").write_text(PYTEST_INI)  # written last: marks a complete extraction
    return root


def _download(release: str, cache: Path) -> Path:
    sdist = cache / f"celery-{release}.tar.gz"
    if not sdist.exists():
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*pip, "--dest", str(cache), f"celery=={release}"], check=True)
    return sdist


def _extract_tests(sdist: Path, root: Path) -> None:
    """Extract ``t/__init__.py``, ``t/*.py`` helpers and ``t/integration/`` into ``root``."""
    top = f"{root.name}/t/"
    with tarfile.open(sdist) as archive:
        members = []
        for member in archive.getmembers():
            inside = member.name.removeprefix(top)
            if member.name == inside or not member.isfile() or ".." in Path(inside).parts:
                continue
            if "/" not in inside or inside.startswith("integration/"):
                member.name = f"t/{inside}"
                members.append(member)
        root.mkdir(parents=True, exist_ok=True)
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(root, members=members, **safe)  # type: ignore[arg-type]
