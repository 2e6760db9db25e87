"""The README's tour runs as written, top to bottom, from an empty folder: every line but the
ones that need a board, its toolchain run or minutes of benchmarks."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Lines the test leaves out: a bitstream build (minutes), a loader (`flash`), the benches,
#: the sweep and the demo (run by their own tests), and the venv activation (the test puts the venv's
#: bin first on PATH instead).
SKIPPED = re.compile(r"^(\. \.venv|gsaccel (build|flash|bench|demo|sweep)\b)")


def tour_lines():
    text = (ROOT / "README.md").read_text()
    block = text.split("## A quick tour of the CLI", 1)[1].split("```sh", 1)[1].split("```")[0]
    return [line.split("  #")[0].strip() for line in block.strip().splitlines()]


def test_the_tour_block_is_what_the_test_runs():
    lines = tour_lines()
    assert lines[1] == "gsaccel --help" and lines[2].startswith("gsaccel example tour")
    assert all(line.startswith(("gsaccel ", ". .venv")) for line in lines)


@pytest.mark.verilator
def test_readme_tour_runs_top_to_bottom(tmp_path):
    script = "\n".join(["set -e"] + [line for line in tour_lines() if not SKIPPED.match(line)])
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tour = tmp_path / "tour"
    for name in ("pruned.pt", "W.gsf", "W2.npy", "model.gsp", "board.gsp", "core.v"):
        assert (tour / name).stat().st_size > 0, name
    assert "equals golden" not in result.stdout or "NO" not in result.stdout
    assert re.search(r"target sim: 64 inputs, \d+\.\d cycles per inference", result.stdout)
    assert re.search(r"\d phases stream", result.stdout)  # the iCEBreaker's core, phased
    assert "capacity of ulx3s-85f" in result.stdout
