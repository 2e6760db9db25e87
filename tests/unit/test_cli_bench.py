"""``gsaccel bench``: every bench writes into the folder -o names (default ./gsaccel-bench),
and the board bench keeps its builds in the cache folder."""

import importlib
import types
from pathlib import Path

import pytest

from gsaccel.sw.cli import bench as cli_bench
from gsaccel.sw.cli.main import main


@pytest.fixture
def fake_benches(monkeypatch):
    """Replace each bench module's run() with one that records where it was told to write."""
    calls = []
    modules = {}
    for name, (module, _) in cli_bench.BENCHES.items():
        def run(*, out_dir, quick, name=name):
            calls.append((name, Path(out_dir), quick))
            (Path(out_dir) / f"{name}.md").write_text(name)
            return f"table of {name}"
        modules[module] = types.SimpleNamespace(run=run)
    real = importlib.import_module
    monkeypatch.setattr(cli_bench.importlib, "import_module",
                        lambda module: modules.get(module) or real(module))
    return calls


@pytest.mark.parametrize("which", [["hw"], ["pruning"], ["boards"], ["all"], ["hw", "hw"]])
def test_bench_writes_to_the_named_folder(which, fake_benches, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", *which, "--quick", "-o", "out/tables"]) == 0
    names = list(cli_bench.BENCHES) if which == ["all"] else which[:1]
    assert fake_benches == [(name, Path("out/tables"), True) for name in names]
    assert (tmp_path / "out" / "tables" / "img").is_dir()
    assert sorted(p.name for p in (tmp_path / "out" / "tables").glob("*.md")) == \
        sorted(f"{name}.md" for name in names)
    assert "tables and plots in out/tables/" in capsys.readouterr().out


def test_bench_default_folder_is_gsaccel_bench_here(fake_benches, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "hw"]) == 0
    assert fake_benches == [("hw", Path("gsaccel-bench"), False)]
    assert (tmp_path / "gsaccel-bench" / "hw.md").read_text() == "hw"
    assert main(["bench", "pruning", "--output", str(tmp_path / "abs")]) == 0
    assert fake_benches[-1] == ("pruning", tmp_path / "abs", False)


def test_board_bench_writes_its_table_to_out_dir_and_builds_in_the_cache(tmp_path, monkeypatch):
    pytest.importorskip("amaranth_boards")
    from gsaccel.boards import build as board_build
    from gsaccel.sw.bench import boards

    built = []

    def fake_build_board(board, *, out_dir, progress=None):
        built.append(Path(out_dir))
        raise board_build.FitError("too big")

    monkeypatch.setattr(board_build, "build_board", fake_build_board)
    monkeypatch.setenv("GSACCEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    table = boards.run(out_dir=tmp_path / "out", quick=True)
    assert built == [tmp_path / "cache" / "bench-boards" / "icebreaker"]
    assert "| icebreaker | | | | | | | | | does not fit: too big |" in table
    assert table in (tmp_path / "out" / "benchmarks-boards.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]      # nothing in the working folder
