"""``gsaccel pack MODEL.pt``: every prunable layer of a saved pruned model, packed by its mask."""

import numpy as np
import pytest
import torch

from gsaccel.sw.cli.main import main
from gsaccel.sw.format import GSMatrix
from gsaccel.sw.prune import prune


def test_pack_a_pruned_model(tmp_path, capsys):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 24), torch.nn.ReLU(),
                                torch.nn.Linear(24, 10))
    prune(model, pattern="gs-gather", sparsity=0.75, lanes=8)
    torch.save(model, tmp_path / "model.pt")
    assert main(["pack", str(tmp_path / "model.pt"), "--lanes", "8",
                 "-o", str(tmp_path / "out")]) == 0
    for name, module in (("0", model[0]), ("2", model[2])):
        matrix = GSMatrix.load(tmp_path / "out" / f"{name}.gsf")
        assert matrix.pattern == "gs-gather" and matrix.encoding == "pow2"
        mask = module.weight_mask.numpy() != 0
        np.testing.assert_array_equal(matrix.to_dense() != 0, mask)
    assert "0.gsf: 24x40 gs-gather V=8" in capsys.readouterr().out


def test_pack_model_errors(tmp_path, capsys):
    torch.save({"not": "a model"}, tmp_path / "dict.pt")
    assert main(["pack", str(tmp_path / "dict.pt"), "-o", str(tmp_path / "out")]) == 1
    assert "dict.pt: must hold a whole nn.Module (torch.save(model, ...)), not a dict" in \
        capsys.readouterr().err
    assert main(["pack", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "out")]) == 1
    assert "missing.pt: no such model file" in capsys.readouterr().err
    model = torch.nn.Sequential(torch.nn.Linear(16, 8))
    prune(model, pattern="gs-gather", sparsity=0.5, lanes=8)
    torch.save(model, tmp_path / "m8.pt")
    assert main(["pack", str(tmp_path / "m8.pt"), "--lanes", "4", "-o", str(tmp_path / "o")]) == 1
    assert "was pruned for 8 lanes, not 4; pass --lanes 8" in capsys.readouterr().err


def test_pack_a_smartdeal_model_packs_c_prime_and_basis(tmp_path):
    from gsaccel.sw.prune import smartdeal_factors
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(30, 16))
    prune(model, pattern="smartdeal", sparsity=0.5, lanes=8)
    torch.save(model, tmp_path / "sd.pt")
    assert main(["pack", str(tmp_path / "sd.pt"), "-o", str(tmp_path / "out")]) == 0
    matrix = GSMatrix.load(tmp_path / "out" / "0.gsf")
    c, b = smartdeal_factors(model[0])
    np.testing.assert_array_equal(matrix.to_dense(), (c.reshape(16, -1) * 2 ** 10).round())
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "0.basis.npy"), b)


@pytest.mark.parametrize("pattern", ["gs-gather", "gs-scatter"])
def test_a_pruned_conv_is_packed_in_the_hardware_gemm_view(tmp_path, pattern):
    """A Conv2d is packed as the core runs it: rows = output channels, columns tap·Cp + c
    (12 channels padded to 16), the view the pruner pruned; gs-scatter keeps its row order."""
    from gsaccel.sw.prune import gemm_layout
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Conv2d(12, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(16 * 2 * 2, 10))
    prune(model, pattern=pattern, sparsity=0.5, lanes=8)
    torch.save(model, tmp_path / "conv.pt")
    assert main(["pack", str(tmp_path / "conv.pt"), "-o", str(tmp_path / "out")]) == 0
    matrix = GSMatrix.load(tmp_path / "out" / "0.gsf")
    layout = gemm_layout(model[0], 8)
    assert matrix.shape == layout.shape == (16, 9 * 16) and matrix.pattern == pattern
    mask = layout.to_gemm(model[0].weight_mask.numpy() != 0)
    np.testing.assert_array_equal(matrix.to_dense() != 0, mask)
    if pattern == "gs-scatter":
        order = model[0].gsaccel_row_order.numpy()
        np.testing.assert_array_equal(matrix.rg_rows.ravel()[matrix.rg_rows.ravel() >= 0],
                                      order)
