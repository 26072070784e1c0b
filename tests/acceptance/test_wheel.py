"""The built wheel is complete: installed outside the checkout, it migrates a store.

Migrations, the Alembic template, the Flower templates and ``py.typed`` are package
data; a wheel that lost them would pass every other test (they run from the checkout).
"""

from __future__ import annotations

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

    # A virtualenv that sees the installed dependencies but not this checkout.
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "--no-deps", wheel, cwd=tmp_path)
    project = tmp_path / "project"
    project.mkdir()
    (project / "wheelapp.py").write_text(APP)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "PYTHONPATH": str(project)}
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
