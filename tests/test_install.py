"""A non-editable install, used from another directory: the recipes ship with the package."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setuptools_version() -> tuple:
    try:
        import setuptools
    except ImportError:
        return ()
    return tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())


def test_a_wheel_install_runs_recipes_by_name_from_any_directory(tmp_path):
    # The wheel pip builds for `pip install .`; with this environment's setuptools when it is recent enough (faster).
    no_isolation = ["--no-build-isolation"] if _setuptools_version() >= (68,) else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *no_isolation, "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("sptrack-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"sptrack/recipes/dino.py", "sptrack/recipes/ijepa.py", "sptrack/recipes/lejepa.py"} <= set(names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed copy comes first on the path, ahead of this checkout's editable install.
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "SPTRACK_TRACKER": "none"}
    run = lambda *args: subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)  # noqa: E731
    where = run("-c", "import sptrack; print(sptrack.__file__)")
    assert where.stdout.strip() == str(site / "sptrack" / "__init__.py"), where.stderr
    listed = run("-m", "sptrack.run", "--help")
    assert listed.returncode == 0
    for name in ("dino", "ijepa", "lejepa"):
        assert f"  {name:<8} {site / 'sptrack' / 'recipes' / name}.py" in listed.stdout, listed.stdout
    dry = run("-m", "sptrack.run", "dino", "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "dino: resolved configuration" in dry.stdout and "student.backbone" in dry.stdout
    assert not any(elsewhere.iterdir())  # a dry run writes nothing
