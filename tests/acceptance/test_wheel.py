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

    # A virtualenv of its own, from whatever interpreter runs the tests (a virtualenv or
    # not): the wheel and its dependencies from the package index, nothing from this
    # checkout or the environment running the tests (an editable install, PYTHONPATH).
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    project = tmp_path / "project"
    project.mkdir()
    (project / "wheelapp.py").write_text(APP)
    clean = {k: v for k, v in os.environ.items() if k not in LEAKS}  # pip's settings stay
    clean["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    run(python, "-m", "pip", "install", "-q", wheel, cwd=tmp_path, env=clean)
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
