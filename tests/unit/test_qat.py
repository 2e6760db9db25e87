"""Quantisation-aware training (gsaccel.quantize_aware): the fake-quantised torch forward
equals the compiled program's golden run bit for bit (integers), before and after training,
for pow2 and int8 weights, on MLPs and conv nets with BatchNorm, pooling (a divisor that is
not a power of two included) and a residual addition; masks survive; gradients flow
straight through."""

import os

import numpy as np
import pytest
import torch
from torch import nn

import gsaccel
from gsaccel.hw.config import CoreConfig
from gsaccel.sw.compile.qat import QATModel
from gsaccel.sw.errors import ShapeError, UnsupportedError

from test_graph import ResidualBlock, _build

SEED = int(os.environ.get("GSACCEL_SEED", "1234"))
CFG = {enc: CoreConfig(lanes=8, encoding=enc, bank_depth=1024) for enc in ("pow2", "int8")}

pytestmark = pytest.mark.usefixtures("one_thread")


class SmallConv(nn.Module):
    """Conv+BN+ReLU, max pool, a residual block with a strided BN projection, a 3x3 average
    pool (divisor 9: its factor 16/9 folds into the Linear), Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.block = ResidualBlock(8, 16, stride=2)
        self.avg = nn.AvgPool2d(3)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.block(self.pool(self.stem(x)))
        return self.fc(torch.flatten(self.avg(x), 1))


def _mlp():
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Linear(20, 48), nn.BatchNorm1d(48), nn.ReLU(), nn.Linear(48, 32),
                         nn.ReLU(), nn.Linear(32, 6)).eval()


def _models():
    mlp = _mlp()
    for module in mlp.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2)
    return {"mlp": (mlp, (20,)), "conv": (_build(SmallConv, seed=SEED), (3, 12, 12))}


def _inputs(shape, n, seed):
    return torch.randn((n,) + shape, generator=torch.Generator().manual_seed(seed))


def _device_ints(program, x):
    return program.run_golden_int(x.numpy()).astype(np.int64)


def _qat_ints(qmodel, program, x):
    with torch.no_grad():
        out = qmodel(x).double().numpy()
    ints = out * 2.0 ** -program.output_scale_log2
    assert np.array_equal(ints, np.round(ints)), "fake-quant output off the int8 grid"
    return ints.astype(np.int64)


def _train(qmodel, x, steps=5, lr=3e-3, seed=0):
    """A few Adam steps towards random targets: the weights (and their scales) move."""
    target = torch.randn(qmodel(x).shape, generator=torch.Generator().manual_seed(seed))
    optimiser = torch.optim.Adam(qmodel.parameters(), lr=lr)
    qmodel.train()
    for _ in range(steps):
        optimiser.zero_grad()
        loss = ((qmodel(x) - target) ** 2).mean()
        loss.backward()
        optimiser.step()
    qmodel.eval()


@pytest.mark.parametrize("encoding", ["pow2", "int8"])
@pytest.mark.parametrize("name", ["mlp", "conv"])
@pytest.mark.parametrize("pruned", [False, True])
def test_fake_quant_forward_equals_the_golden_program(name, encoding, pruned):
    model, shape = _models()[name]
    if pruned:
        exclude = ["stem.0"] if name == "conv" else []
        gsaccel.prune(model, "gs-gather", 0.75, 8, exclude=exclude)
    calibration = _inputs(shape, 64, SEED)
    qmodel = gsaccel.quantize_aware(model, calibration, encoding=encoding, cfg=CFG[encoding])
    test = _inputs(shape, 40, SEED + 1) * 1.5          # beyond the calibrated range too
    program = gsaccel.compile(qmodel, calibration, cfg=CFG[encoding])
    assert np.array_equal(_qat_ints(qmodel, program, test), _device_ints(program, test))
    # Trained: weights and weight scales change, activation scales stay frozen.
    before = dict(qmodel.scales)
    _train(qmodel, calibration)
    assert qmodel.scales == before
    program = gsaccel.compile(qmodel, calibration, cfg=CFG[encoding])
    got, want = _qat_ints(qmodel, program, test), _device_ints(program, test)
    assert np.array_equal(got, want)
    assert len(np.unique(want)) > 10                   # not a saturated, constant output


def test_training_keeps_masks_and_changes_what_is_compiled():
    model, shape = _models()["mlp"]
    gsaccel.prune(model, "gs-gather", 0.75, 8)
    x = _inputs(shape, 64, SEED)
    qmodel = gsaccel.quantize_aware(model, x, cfg=CFG["pow2"])
    first = qmodel.frozen_numerics().layers
    _train(qmodel, x, steps=20, lr=1e-2)
    second = qmodel.frozen_numerics().layers
    for name, layer in second.items():
        module = qmodel.model.get_submodule(name)
        kept = module.weight_mask.numpy() != 0
        assert np.array_equal(layer.q != 0, kept)     # kept weights never round to zero
        assert (module.weight_orig.grad.numpy()[~kept] == 0).all()
    assert any(not np.array_equal(first[n].q, second[n].q) for n in first)
    # The user's model is untouched (a copy is trained, as torch.ao's inplace=False).
    assert isinstance(model[1], nn.BatchNorm1d)


def test_gradients_flow_straight_through():
    model, shape = _models()["conv"]
    x = _inputs(shape, 16, SEED)
    qmodel = gsaccel.quantize_aware(model, x, cfg=CFG["pow2"])
    qmodel(x).sum().backward()
    for name, parameter in qmodel.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_batchnorm_is_folded_for_good():
    model, shape = _models()["conv"]
    x = _inputs(shape, 32, SEED)
    qmodel = gsaccel.quantize_aware(model, x, cfg=CFG["int8"])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in qmodel.model.modules())
    with torch.no_grad():
        reference, folded = model(x), qmodel.model(x)
    assert torch.allclose(reference, folded, atol=1e-5)


def test_saved_and_loaded_model_compiles_the_same(tmp_path):
    model, shape = _models()["conv"]
    x = _inputs(shape, 32, SEED)
    qmodel = gsaccel.quantize_aware(model, x, cfg=CFG["pow2"])
    torch.save(qmodel, tmp_path / "q.pt")
    loaded = torch.load(tmp_path / "q.pt", weights_only=False)
    assert isinstance(loaded, QATModel)
    a = gsaccel.compile(qmodel, x, cfg=CFG["pow2"])
    b = gsaccel.compile(loaded, x, cfg=CFG["pow2"])
    assert np.array_equal(_device_ints(a, x), _device_ints(b, x))
    assert np.array_equal(_qat_ints(loaded, b, x), _device_ints(b, x))


def test_compiling_for_another_encoding_is_refused():
    model, shape = _models()["mlp"]
    qmodel = gsaccel.quantize_aware(model, _inputs(shape, 8, SEED), encoding="pow2")
    with pytest.raises(ShapeError, match=r"^The model was made quantisation-aware for pow2 "
                                         r"weights .* encoding='int8'$"):
        gsaccel.compile(qmodel, _inputs(shape, 8, SEED), encoding="int8")


def test_bad_encoding_is_refused():
    model, shape = _models()["mlp"]
    with pytest.raises(ShapeError, match=r"^Encoding must be 'pow2' or 'int8', not 'int4'$"):
        gsaccel.quantize_aware(model, _inputs(shape, 8, SEED), encoding="int4")


@pytest.mark.parametrize("c_pattern", ["1xN", "gs-gather"])
def test_smartdeal_layers_train_c_and_b_bit_exactly(c_pattern):
    """BASIS (B int8, z requantised) and C' (pow2 at the layer's scale): the forward equals
    the program before and after training; the trained C stays on its support."""
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(20, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(),
                          nn.Linear(32, 6)).eval()
    gsaccel.prune(model, "smartdeal", 0.5, 8, c_pattern=c_pattern)
    support = model[2].smartdeal_C.numpy() != 0
    x, test = _inputs((20,), 64, SEED), _inputs((20,), 40, SEED + 1)
    qmodel = gsaccel.quantize_aware(model, x, cfg=CFG["pow2"])
    program = gsaccel.compile(qmodel, x, cfg=CFG["pow2"])
    assert [layer.kind for layer in program.layers].count("basis") == 3
    assert np.array_equal(_qat_ints(qmodel, program, test), _device_ints(program, test))
    basis = qmodel.factors["sd1"].basis.detach().clone()
    _train(qmodel, x, steps=10, lr=1e-2)
    assert not torch.equal(basis, qmodel.factors["sd1"].basis)
    program = gsaccel.compile(qmodel, x, cfg=CFG["pow2"])
    assert np.array_equal(_qat_ints(qmodel, program, test), _device_ints(program, test))
    assert np.array_equal(qmodel.model[2].smartdeal_C.numpy() != 0, support)


def test_smartdeal_before_a_batchnorm_is_refused():
    model = nn.Sequential(nn.Linear(20, 24), nn.BatchNorm1d(24), nn.ReLU(),
                          nn.Linear(24, 6)).eval()
    gsaccel.prune(model, "smartdeal", 0.5, 8)
    with pytest.raises(UnsupportedError, match=r"^SmartDeal layer '0' \(Linear\+BatchNorm1d"
                                               r"\+ReLU\): quantisation-aware training "
                                               r"trains its C and B"):
        gsaccel.quantize_aware(model, _inputs((20,), 8, SEED))


@pytest.mark.verilator
def test_qat_program_on_the_rtl_equals_the_fake_quant_forward():
    from gsaccel.sw.runtime.targets import connect
    model, shape = _models()["mlp"]
    gsaccel.prune(model, "gs-gather", 0.75, 8)
    x = _inputs(shape, 64, SEED)
    qmodel = gsaccel.quantize_aware(model, x, cfg=CoreConfig(lanes=8))
    _train(qmodel, x)
    program = gsaccel.compile(qmodel, x, lanes=8)
    test = _inputs(shape, 4, SEED + 2)
    with connect("sim", cfg=program.cfg, timeout=60) as device:
        device.load(program)
        got = device.infer_quantized(program.quantize_input(test.numpy()))
    assert np.array_equal(np.asarray(got, np.int64).reshape(len(test), -1),
                          _qat_ints(qmodel, program, test))
