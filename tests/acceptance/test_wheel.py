"""The built wheel is complete: installed outside the checkout, it migrates a store.

Migrations, the Alembic template, the Flower templates and ``py.typed`` are package
data; a wheel that lost them would pass every other test (they run from the checkout).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support import ROOT

APP = """
from celery import Celery
from celery_reliable import Reliable

app = Celery("wheelapp", broker="memory://")
Reliable(app)
"""

#: What would let the test environment's packages into the wheel's.
LEAKS = {"PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "VIRTUAL_ENV"}


def installed_packages() -> list[str]:
    """The directories this interpreter imports installed packages from (its own, a
    virtualenv's, or both), without the checkout."""
    return [
        path
        for path in sys.path
        if Path(path).name in ("site-packages", "dist-packages")
        and not Path(path).resolve().is_relative_to(ROOT)
    ]


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_wheel_carries_its_data_and_migrates_a_store(tmp_path: Path):
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, ROOT, cwd=tmp_path)
    (wheel,) = dist.glob("celery_reliable-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = {n for n in names if n.startswith("celery_reliable/store/migrations/versions/")}
    shipped = {p.name for p in (ROOT / "celery_reliable/store/migrations/versions").glob("0*.py")}
    assert {Path(n).name for n in migrations} >= shipped
    assert "celery_reliable/store/migrations/script.py.mako" in names
    assert "celery_reliable/py.typed" in names
    templates = {p.name for p in (ROOT / "celery_reliable/flower/templates").glob("*.html")}
    assert {Path(n).name for n in names if n.startswith("celery_reliable/flower/templates/")} == (
        templates
    )

    # A virtualenv of its own (made by whatever interpreter runs the tests: a virtualenv
    # or not), with the wheel installed and nothing of this checkout. The dependencies are
    # the ones the tests run with, reached through a .pth file: no download, and no
    # editable install of the checkout (the .pth files of those directories are not read).
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    own = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    (own / "test_dependencies.pth").write_text("\n".join(installed_packages()))
    project = tmp_path / "project"
    project.mkdir()
    (project / "wheelapp.py").write_text(APP)
    # Nor PYTHONPATH: the checkout on it, its egg-info passes for an installed package.
    clean = {k: v for k, v in os.environ.items() if k not in LEAKS}
    clean["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    install = ("install", "-q", "--no-deps", "--ignore-installed", wheel)  # not the checkout's
    run(python, "-m", "pip", *install, cwd=tmp_path, env=clean)
    env = {**clean, "PYTHONPATH": str(project)}
    where = run(
        python,
        "-c",
        "import celery_reliable; print(celery_reliable.__file__)",
        cwd=project,
        env=env,
    )
    assert where.startswith(str(venv)), where  # the wheel's copy, not the checkout's
    out = run(
        python, "-m", "celery", "-A", "wheelapp", "reliable", "db", "upgrade", cwd=project, env=env
    )
    head = max(shipped)[:4]
    assert f"store at revision {head}" in out
    assert (project / "reliable.sqlite3").exists()  # the embedded default, in the working dir
