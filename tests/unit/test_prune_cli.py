"""``gsaccel prune`` on a tiny saved model: output, metadata, and one-line typed errors."""

import numpy as np
import pytest
import torch
from torch import nn

from gsaccel.sw.cli.main import main
from gsaccel.sw.prune import PatternInfo, pattern_info, smartdeal_factors


@pytest.fixture
def model_path(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)), path)
    return path


@pytest.mark.parametrize("pattern,extra", [("gs-gather", []), ("gs-scatter", ["--per-row", "2"]),
                                           ("1xN", []), ("unstructured", []),
                                           ("smartdeal", ["--c-pattern", "gs-gather"])])
def test_cli_prunes_and_saves(model_path, tmp_path, capsys, pattern, extra):
    out = tmp_path / "out" / "pruned.pt"
    status = main(["prune", str(model_path), "--pattern", pattern, "--sparsity", "0.5",
                   "--lanes", "4", *extra, "-o", str(out)])
    assert status == 0
    printed = capsys.readouterr().out
    assert f"saved {out}" in printed and "total:" in printed
    model = torch.load(out, weights_only=False)
    per_row = 2 if extra == ["--per-row", "2"] else 1
    info = pattern_info(model[1])
    assert (info.pattern, info.lanes, info.per_row) == (pattern, 4, per_row)
    if pattern == "smartdeal":
        assert info == PatternInfo("smartdeal", 4, 1, "gs-gather")
        assert smartdeal_factors(model[3])[0].shape == (4 * 4, 3)
    else:
        assert abs(float(model[1].weight_mask.mean()) - 0.5) <= 0.05


def test_cli_exclude(model_path, tmp_path, capsys):
    out = tmp_path / "p.pt"
    assert main(["prune", str(model_path), "--pattern", "unstructured", "--sparsity", "0.25",
                 "--exclude", "3", "-o", str(out)]) == 0
    assert "3: 4x12 dense (excluded)" in capsys.readouterr().out


def test_cli_exclude_unknown_layer(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    torch.save(nn.Sequential(nn.Conv2d(4, 8, 3, groups=4), nn.Flatten(), nn.Linear(8, 2)), path)
    out = tmp_path / "o.pt"
    assert main(["prune", str(path), "--pattern", "gs-gather", "--sparsity", "0.5", "--lanes",
                 "4", "--exclude", "fc", "-o", str(out)]) == 1
    assert capsys.readouterr().err == ("gsaccel prune: error: Excluded layer names must name "
                                       "Linear or Conv2d layers, not 'fc'\n")
    assert not out.exists()
    assert main(["prune", str(path), "--pattern", "unstructured", "--sparsity", "0.5",
                 "--lanes", "4", "-o", str(out)]) == 0       # a grouped conv prunes
    assert "0: 8x9 unstructured V=4 e=1: 36/72 kept" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--pattern", "bogus", "--sparsity", "0.5"], "Pattern must be one of gs-gather, gs-scatter, "
                                                  "1xN, smartdeal, unstructured, not 'bogus'"),
    (["--pattern", "1xN", "--sparsity", "1.0"], "Sparsity must be a number in [0, 1), not 1.0"),
    (["--pattern", "1xN", "--sparsity", "-0.5"], "Sparsity must be a number in [0, 1), not -0.5"),
    (["--pattern", "1xN", "--sparsity", "0.5", "--lanes", "12"],
     "Lane count must be a power of two in 2..16, not 12"),
    (["--pattern", "gs-gather", "--sparsity", "0.5", "--lanes", "16"],
     "Layer 3 has 12 input columns, fewer than the 16 lanes; a GS pattern needs at least one "
     "column per bank"),
])
def test_cli_bad_arguments(model_path, tmp_path, capsys, args, message):
    out = tmp_path / "never.pt"
    assert main(["prune", str(model_path), *args, "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == f"gsaccel prune: error: {message}\n"
    assert not out.exists()


def test_cli_missing_and_wrong_files(tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    assert main(["prune", str(missing), "--pattern", "1xN", "--sparsity", "0.5",
                 "-o", str(tmp_path / "o.pt")]) == 1
    assert capsys.readouterr().err == \
        f"gsaccel prune: error: {missing}: no such model file\n"
    state = tmp_path / "state.pt"
    torch.save(nn.Linear(4, 4).state_dict(), state)
    assert main(["prune", str(state), "--pattern", "1xN", "--sparsity", "0.5",
                 "-o", str(tmp_path / "o.pt")]) == 1
    assert f"{state}: holds a state_dict, not a whole nn.Module; pass --zoo NAME if it is " \
        "one of digits-cnn, digits-mlp, ds-cnn, fc-ae, mobilenetv1, resnet8, or save the " \
        "whole model with torch.save(model, path)" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a pickle")
    assert main(["prune", str(junk), "--pattern", "1xN", "--sparsity", "0.5",
                 "-o", str(tmp_path / "o.pt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"gsaccel prune: error: {junk}: not a torch model file")
    assert err.count("\n") == 1


def test_cli_help_has_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "--help"])
    assert exit_info.value.code == 0
    assert "example:\n  gsaccel prune mlp.pt --pattern gs-gather" in capsys.readouterr().out


def _npz(path, n=200, features=16, classes=4, seed=0, **override):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    y = (x[:, :classes] * [1.0, 0.8, 0.6, 0.4][:classes]).argmax(1)
    arrays = {"x": x, "y": y}
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_cli_finetune_saves_a_model_compile_takes_as_is(model_path, tmp_path, capsys):
    from gsaccel.sw.compile import compile
    from gsaccel.sw.compile.qat import QATModel
    data = _npz(tmp_path / "data.npz")
    out = tmp_path / "qat.pt"
    assert main(["prune", str(model_path), "--pattern", "gs-gather", "--sparsity", "0.5",
                 "--lanes", "4", "--finetune", str(data), "--epochs", "2", "-o",
                 str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy on 40 inputs: pruned float" in printed
    assert "after 2 epochs of quantisation-aware fine-tuning" in printed
    qmodel = torch.load(out, weights_only=False)
    assert isinstance(qmodel, QATModel) and qmodel.encoding == "pow2"
    assert qmodel.model[1].weight_mask.mean() == 0.5           # the masks survive
    x = torch.as_tensor(np.load(data)["x"][:50])
    program = compile(qmodel, x, lanes=4)
    with torch.no_grad():
        ints = qmodel(x).numpy() * 2.0 ** -program.output_scale_log2
    assert np.array_equal(ints, program.run_golden_int(x.numpy()))
    # The CLI flow: compile it, run it, compare it layer by layer.
    np.save(tmp_path / "x.npy", x.numpy())
    assert main(["compile", str(out), "--example", str(tmp_path / "x.npy"), "--lanes", "4",
                 "-o", str(tmp_path / "q.gsp")]) == 0
    capsys.readouterr()
    assert main(["run", str(tmp_path / "q.gsp"), "--input", str(tmp_path / "x.npy"),
                 "--compare", str(out)]) == 0
    assert "with golden 100.0%; golden equals golden bit for bit: yes" in \
        capsys.readouterr().out


@pytest.mark.parametrize("override,message", [
    ({"y": None}, "the archive must hold arrays x and y, but has ['x']; save it with "
                  "np.savez(path, x=inputs, y=labels)"),
    ({"y": np.zeros(200) + 0.5}, "y must be one non-negative integer label per input (200 "
                                 "inputs), not float64 of shape (200,)"),
    ({"y": np.full(200, 7)}, "label 7 is out of range for a model with 4 outputs"),
    ({"x": np.zeros((200, 9), np.float32)}, "inputs of shape (9,) do not fit the model"),
])
def test_cli_finetune_bad_data(model_path, tmp_path, capsys, override, message):
    data = _npz(tmp_path / "bad.npz", **override)
    out = tmp_path / "never.pt"
    assert main(["prune", str(model_path), "--pattern", "1xN", "--sparsity", "0.5", "--lanes",
                 "4", "--finetune", str(data), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"gsaccel prune: error: {data}: {message}") and err.count("\n") == 1
    assert not out.exists()


def test_cli_finetune_missing_data(model_path, tmp_path, capsys):
    missing = tmp_path / "none.npz"
    assert main(["prune", str(model_path), "--pattern", "1xN", "--sparsity", "0.5", "--lanes",
                 "4", "--finetune", str(missing), "-o", str(tmp_path / "o.pt")]) == 1
    assert capsys.readouterr().err == (
        f"gsaccel prune: error: {missing}: no such data file; give 'digits' or a .npz with "
        f"arrays x and y (np.savez(path, x=inputs, y=labels))\n")


_MODULE = """
from torch import nn


class Net(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
"""


def _custom_model(tmp_path, monkeypatch, name):
    """A model whose class lives in ``<name>.py`` in tmp_path, saved, then forgotten."""
    import importlib
    import sys
    (tmp_path / f"{name}.py").write_text(_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    path = tmp_path / "custom.pt"
    torch.save(module.Net(), path)
    del sys.modules[name]
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    return path


def test_cli_names_the_fix_for_a_class_it_cannot_import(tmp_path, monkeypatch, capsys):
    path = _custom_model(tmp_path, monkeypatch, "netdef_a")
    out = tmp_path / "o.pt"
    monkeypatch.chdir(tmp_path.parent)
    assert main(["prune", str(path), "--pattern", "1xN", "--sparsity", "0.5", "--lanes", "4",
                 "-o", str(out)]) == 1
    assert capsys.readouterr().err == (
        f"gsaccel prune: error: {path}: the model's class cannot be imported "
        f"(ModuleNotFoundError: No module named 'netdef_a'); pass --import MODULE (the module "
        f"or .py file that defines it), or save model.state_dict() and pass --zoo NAME "
        f"(digits-cnn, digits-mlp, ds-cnn, fc-ae, mobilenetv1, resnet8)\n")
    # A .py file, or a module name found from the current folder.
    assert main(["prune", str(path), "--import", str(tmp_path / "netdef_a.py"), "--pattern",
                 "1xN", "--sparsity", "0.5", "--lanes", "4", "-o", str(out)]) == 0
    path = _custom_model(tmp_path, monkeypatch, "netdef_b")
    monkeypatch.chdir(tmp_path)
    assert main(["prune", str(path), "--import", "netdef_b", "--pattern", "1xN", "--sparsity",
                 "0.5", "--lanes", "4", "-o", str(out)]) == 0
    assert main(["prune", str(path), "--import", "no_such_module", "--pattern", "1xN",
                 "--sparsity", "0.5", "-o", str(out)]) == 1
    assert capsys.readouterr().err.startswith(
        "gsaccel prune: error: --import no_such_module: cannot import it (ModuleNotFoundError")


def test_cli_loads_a_state_dict_of_a_zoo_model(tmp_path, capsys):
    from gsaccel.sw.models import DigitsMLP
    from gsaccel.sw.prune import prune
    torch.manual_seed(0)
    model = DigitsMLP()
    prune(model, "gs-gather", 0.5, 8)
    state = tmp_path / "state.pt"
    torch.save(model.state_dict(), state)
    out = tmp_path / "o.pt"
    assert main(["prune", str(state), "--zoo", "digits-mlp", "--pattern", "gs-gather",
                 "--sparsity", "0.75", "-o", str(out)]) == 0
    assert "total: 4256/17024 kept, sparsity 75.00%" in capsys.readouterr().out
    assert main(["prune", str(state), "--zoo", "digits-cnn", "--pattern", "1xN", "--sparsity",
                 "0.5", "-o", str(out)]) == 1
    assert capsys.readouterr().err.startswith(
        f"gsaccel prune: error: {state}: not a state_dict of --zoo digits-cnn (Error(s) in "
        f"loading state_dict")


def test_cli_skips_a_grouped_conv_that_cannot_take_the_pattern(tmp_path, capsys):
    from gsaccel.sw.prune import prune
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    grouped = nn.Sequential(nn.Conv2d(4, 8, 3, groups=4), nn.Flatten(), nn.Linear(8, 2))
    torch.save(grouped, path)
    out = tmp_path / "o.pt"
    assert main(["prune", str(path), "--pattern", "gs-gather", "--sparsity", "0.5", "--lanes",
                 "4", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "0: 8x9 dense (skipped, a grouped convolution: rows 0-3 cannot form a GS row group " \
           "without padding" in printed
    assert "2: 2x8 gs-gather V=4 e=1: 8/16 kept" in printed
    saved = torch.load(out, weights_only=False)
    assert not hasattr(saved[0], "weight_mask") and hasattr(saved[2], "weight_mask")
    # The library raises unless asked to skip; a Linear that cannot take it always raises.
    with pytest.raises(Exception, match=r"^Layer 0: rows 0-3 cannot form a GS row group"):
        prune(grouped, "gs-gather", 0.5, 4)
