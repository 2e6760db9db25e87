"""The distribution as a user installs it: a wheel built from this tree, installed into a fresh
virtual environment, runs ``gsaccel --help`` and imports every module, from outside the tree."""

import os
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

from test_layering import MODULES, ROOT


def test_pyproject_lists_every_package():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {name for name, (path, is_package) in MODULES.items() if is_package}
    assert sorted(setuptools["packages"]) == sorted(packages)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv holding only the wheel; its dependencies come from the running
    interpreter's site-packages (a path entry, so no editable install of this tree leaks in)."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(work / "dist"), str(ROOT)],
                   check=True, cwd=work)
    wheel, = (work / "dist").glob("gsaccel-*.whl")
    env_dir = work / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                    "--quiet", "--no-deps", "--no-index", str(wheel)], check=True, cwd=work)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path("
                           "'purelib'))"], check=True, capture_output=True, text=True,
                          cwd=work).stdout.strip()
    dependencies = next(Path(p) for p in sys.path if p.endswith("site-packages"))
    # A .pth file in the new venv adds the dependencies' folder; .pth files inside that
    # folder (such as this tree's editable-install finder) are not processed from there.
    (Path(site) / "dependencies.pth").write_text(str(dependencies) + "\n")
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return env_dir, work, environment


def test_wheel_runs_the_cli(installed):
    env_dir, work, environment = installed
    result = subprocess.run([str(env_dir / "bin" / "gsaccel"), "--help"], cwd=work,
                            env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage: gsaccel" in result.stdout and "compile" in result.stdout


def test_wheel_imports_every_module(installed):
    env_dir, work, environment = installed
    names = sorted(name for name in MODULES if not name.endswith(".__main__"))   # runs the CLI
    script = ("import importlib, sys\n"
              f"for name in {names!r}:\n"
              "    module = importlib.import_module(name)\n"
              "    assert 'site-packages' in module.__file__ and "
              f"not module.__file__.startswith({str(ROOT)!r}), module.__file__\n"
              "print(len(sys.modules))\n")
    result = subprocess.run([str(env_dir / "bin" / "python"), "-c", script], cwd=work,
                            env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # The native harness travels with the wheel (package data).
    harness = subprocess.run([str(env_dir / "bin" / "python"), "-c",
                              "import gsaccel.sim, pathlib; print(pathlib.Path("
                              "gsaccel.sim.__file__).parent / 'native' / 'harness.cpp')"],
                             cwd=work, env=environment, capture_output=True, text=True,
                             check=True).stdout.strip()
    assert Path(harness).is_file()
