"""Programs: .gsp round trips and damage, host-side quantisation and tensor regions, and the
golden target (the device image on GoldenCore) equal to the layer-level golden run bit for bit
and to the cycle model cycle for cycle, on conv nets with max pooling, depthwise convs and
residual additions, and on an MLP."""

import os
import struct
import zlib

import numpy as np
import pytest
import torch
from torch import nn

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.layouts import Memory
from gsaccel.sw.compile import compile
from gsaccel.sw.compile.program import GSP_MAGIC, GSP_VERSION, Program
from gsaccel.sw.errors import DeviceError, FormatError, ShapeError
from gsaccel.sw.prune import prune
from gsaccel.sw.runtime.device import GoldenDevice

from test_graph import MODELS, _build

SEED = int(os.environ.get("GSACCEL_SEED", "1234"))
#: Big enough for every model below.
BIG = CoreConfig(lanes=8, bank_depth=8192, weight_depth=16384, row_depth=4096, layer_depth=64)


pytestmark = pytest.mark.usefixtures("one_thread")


class Mixed(nn.Module):
    """Every kind of device layer: an im2col'd conv, a halo (CLEAR), max pooling, a residual
    addition, a SmartDeal Linear (BASIS + C')."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 8, 3)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(8 * 2 * 2, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = self.pool(x + torch.relu(self.conv2(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


MIXED_INPUT = (2, 6, 6)


def _inputs(shape, n=16, seed=SEED):
    return torch.randn((n,) + tuple(shape), generator=torch.Generator().manual_seed(seed))


_PROGRAMS = {}


def _mixed():
    if "mixed" not in _PROGRAMS:
        model = _build(Mixed)
        prune(model, "smartdeal", 0.5, lanes=8, layers=["fc2"])
        _PROGRAMS["mixed"] = compile(model, _inputs(MIXED_INPUT), cfg=CoreConfig(
            bank_depth=256))
    return _PROGRAMS["mixed"]


def test_mixed_program_has_every_layer_kind():
    program = _mixed()
    kinds = {(layer.kind, getattr(layer, "op", None)) for layer in program.layers}
    assert kinds == {("gs", "sum"), ("gs", "max"), ("clear", None), ("basis", None)}


def test_gsp_round_trip(tmp_path):
    program = _mixed()
    program.save(tmp_path / "p.gsp")
    again = Program.load(tmp_path / "p.gsp")
    assert again.image() == program.image()
    for name in ("cfg", "depth", "input", "input_shape", "input_scale_log2", "input_transform",
                 "output", "output_shape", "output_scale_log2", "info"):
        assert getattr(again, name) == getattr(program, name), name
    assert again.tensors == program.tensors
    assert again.plan.bases == program.plan.bases and again.plan.top == program.plan.top
    assert [layer.name for layer in again.layers] == [layer.name for layer in program.layers]
    assert again.stats() == program.stats()
    x = _inputs(MIXED_INPUT, 6, seed=SEED + 1)
    assert np.array_equal(again.run_golden(x), program.run_golden(x))
    assert again.calibration_output is None         # the calibration is not stored


def test_truncated_file_at_every_length_is_a_format_error():
    data = _mixed().to_bytes()
    for length in range(0, len(data), max(1, len(data) // 97)):
        with pytest.raises(FormatError):
            Program.from_bytes(data[:length])


def test_corrupt_byte_is_caught_by_the_crc():
    data = bytearray(_mixed().to_bytes())
    data[len(data) // 2] ^= 0x01
    with pytest.raises(FormatError, match=r"^data: CRC-32 mismatch; the file is corrupt$"):
        Program.from_bytes(bytes(data))


def _reseal(body):
    return bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))


def test_wrong_version_and_magic():
    data = bytearray(_mixed().to_bytes())
    data[4:6] = struct.pack("<H", 1)            # a two-buffer program of an earlier release
    data = bytearray(_reseal(data[:-4]))
    with pytest.raises(FormatError, match=r"^p: gsaccel program version 1 is not supported"):
        Program.from_bytes(bytes(data), source="p")
    with pytest.raises(FormatError, match=r"^p: not a gsaccel program \(magic b'GSF\\x1a'"):
        Program.from_bytes(b"GSF\x1a" + bytes(data[4:]), source="p")
    assert bytes(data[:4]) == GSP_MAGIC and GSP_VERSION == 3


def _with_header(program, edit):
    """The program's file with its JSON header edited by ``edit(header)``."""
    import json
    data = program.to_bytes()
    hlen = struct.unpack_from("<I", data, 6)[0]
    header = json.loads(data[10:10 + hlen])
    edit(header)
    text = json.dumps(header).encode()
    return _reseal(data[:6] + struct.pack("<I", len(text)) + text + data[10 + hlen:-4])


def _raw_header(text):
    body = struct.pack("<4sHI", GSP_MAGIC, GSP_VERSION, len(text)) + text + \
        struct.pack("<I", 0)
    return _reseal(body)


def test_header_that_is_not_a_program():
    with pytest.raises(FormatError, match=r"^data: header: must have the keys cfg, depth, "
                                          r"tensors, input, output, layers, info, setup_layers \(missing "
                                          r"depth, .*\)$"):
        Program.from_bytes(_raw_header(b'{"cfg": {"lanes": 3}}'))
    program = _mixed()

    def span_past_payload(header):
        layer = next(entry for entry in header["layers"] if entry["kind"] == "gs")
        layer["matrix"][1] += 10 ** 6

    with pytest.raises(FormatError, match=r"^data: layers\[\d+\]\.matrix\[1\]: must be an integer "
                                          r"in \[0, \d+\], not 1000168$"):
        Program.from_bytes(_with_header(program, span_past_payload))

    def span_overlapping_the_end(header):
        layer = next(entry for entry in header["layers"] if entry["kind"] == "gs")
        layer["bias"][1] = sum(e["bias"][1] + e["matrix"][1] for e in header["layers"]
                               if e["kind"] == "gs")

    with pytest.raises(FormatError, match=r"^data: layers\[\d+\]\.bias: spans bytes 168\.\.\d+ "
                                          r"of a \d+-byte payload$"):
        Program.from_bytes(_with_header(program, span_overlapping_the_end))

    def unknown_tensor(header):
        header["layers"][-1]["output"] = "nowhere"

    with pytest.raises(FormatError, match=r"names tensor 'nowhere'"):
        Program.from_bytes(_with_header(program, unknown_tensor))

    def tensor_past_the_scratchpad(header):
        header["tensors"][0]["geometry"]["base"] = header["depth"]

    with pytest.raises(FormatError, match=r"must lie in the 8-bank scratchpad's 256 words"):
        Program.from_bytes(_with_header(program, tensor_past_the_scratchpad))

    def moved_output(header):
        header["output"]["geometry"]["base"] += 1

    with pytest.raises(FormatError, match=r"the output geometry differs from its tensor's"):
        Program.from_bytes(_with_header(program, moved_output))


def _first(header, kind):
    return next(entry for entry in header["layers"] if entry["kind"] == kind)


def _set(path, value):
    """An edit setting the header field at ``path`` (keys and indices) to ``value``."""
    def edit(header):
        node = header
        for key in path[:-1]:
            node = _first(node, key) if key in ("gs", "basis", "clear") else node[key]
        node[path[-1]] = value
    return edit


@pytest.mark.parametrize("path, value, message", [
    # The outside fuzzing's cases: every one ran with other outputs, or not at all.
    (("input", "scale_log2"), float("nan"), r"header holds NaN; every number of a program is "
                                            r"finite"),
    (("input", "scale_log2"), 0.5, r"input\.scale_log2: must be an integer in \[-100, 100\], "
                                   r"not 0\.5"),
    (("input", "scale_log2"), -4, r"input\.scale_log2: must be its tensor's -5, not -4"),
    (("tensors", 0, "scale_log2"), 10 ** 30, r"tensors\[0\]\.scale_log2: must be an integer "
                                             r"in \[-100, 100\], not 1000000000000000000000"),
    (("gs", "relu"), "no", r"layers\[\d+\]\.relu: must be true or false, not \"no\""),
    (("gs", "shift"), True, r"layers\[\d+\]\.shift: must be an integer in \[0, 31\], not true"),
    (("gs", "shift"), 32, r"layers\[\d+\]\.shift: must be an integer in \[0, 31\], not 32"),
    (("input", "shape"), [2, 6, 2 ** 40], r"input\.shape\[2\]: must be an integer in "
                                          r"\[1, 4194304\]"),
    (("input", "shape"), [2, 2048, 2048], r"input\.shape: \[2, 2048, 2048\] has more than "
                                          r"4194304 elements"),
    (("input", "shape"), [2, 7, 6], r"^data: input: the 'im2col' transform of inputs of shape "
                                    r"\[2, 7, 6\] gives \[18, 5, 4\], the input tensor 'x' has "
                                    r"shape \[18, 4, 4\]$"),
    (("input", "transform", "padding"), [4000, 4000], r"pads the 6x6 input to more than"),
    (("cfg", "lanes"), 8.0, r"cfg\.lanes: must be an integer"),
    (("cfg", "basis"), 1, r"cfg\.basis: must be true or false, not 1"),
    (("cfg", "bank_depth"), 100, r"^data: cfg: Bank depth must be a power of two, not 100$"),
    (("depth",), 512, r"depth: must be an integer in \[1, 256\], not 512"),
    (("gs", "nest", "kernel"), [1, 1, 1], r"nest\.kernel: must be a list of 2 integers"),
    (("gs", "nest", "stride"), [0, 1], r"nest\.stride\[0\]: must be an integer in \[1, 65536\]"),
    (("gs", "bias"), [168, 56], r"layers\[\d+\]\.bias: must be 64 bytes, not 56"),
    (("gs", "matrix"), [1, 168], r"layers\[\d+\]\.matrix: starts at byte 1; the payload holds"),
    (("clear", "words"), 35, r"layers\[0\]: clears \[(\d+), \d+\), tensor 'relu' "
                              r"occupies \[\1, \d+\)"),
    (("basis", "basis"), [0] * 8 + [128], r"basis\[8\]: must be an integer in \[-128, 127\]"),
    (("info",), [], r"^data: info: must be a list of 10\.\.10 entries, not a list$"),
    (("output", "extra"), 1, r"output: must have the keys tensor, shape, geometry, scale_log2 "
                             r"\(unknown 'extra'\)"),
    (("tensors", 0, "producer"), 5, r"tensors\[0\]\.producer: must be a non-empty string"),
])
def test_header_fields_are_typed_and_ranged(path, value, message):
    with pytest.raises(FormatError, match=message):
        Program.from_bytes(_with_header(_mixed(), _set(path, value)))


def test_header_json_is_bounded_before_it_is_parsed():
    deep = b'{"cfg": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(FormatError, match=r"^data: header nests more than 16 deep$"):
        Program.from_bytes(_raw_header(deep))
    with pytest.raises(FormatError, match=r"^data: header has key 'cfg' twice in one object$"):
        Program.from_bytes(_raw_header(b'{"cfg": 1, "cfg": 2}'))
    with pytest.raises(FormatError, match=r"^data: header holds -Infinity"):
        Program.from_bytes(_raw_header(b'{"cfg": -Infinity}'))
    with pytest.raises(FormatError, match=r"^data: header is not JSON"):
        Program.from_bytes(_raw_header(b'{"cfg": '))
    with pytest.raises(FormatError, match=r"^data: header is not UTF-8"):
        Program.from_bytes(_raw_header(b'{"\xff": 1}'))
    with pytest.raises(FormatError, match=r"^data: header is not JSON \(Exceeds the limit"):
        Program.from_bytes(_raw_header(b'{"cfg": ' + b"9" * 5000 + b"}"))
    with pytest.raises(FormatError, match=r"^data: header holds 1e999; every number"):
        Program.from_bytes(_raw_header(b'{"cfg": 1e999}'))
    data = bytearray(_mixed().to_bytes())
    struct.pack_into("<I", data, 6, 2 ** 32 - 1)            # a header longer than the file
    with pytest.raises(FormatError, match=r"^data: truncated: header of 4294967295 bytes"):
        Program.from_bytes(_reseal(data[:-4]))


def test_loaded_programs_re_serialise_identically():
    data = _mixed().to_bytes()
    assert Program.from_bytes(data).to_bytes() == data


def test_missing_file(tmp_path):
    with pytest.raises(FormatError, match=r"nothere.gsp: no such file$"):
        Program.load(tmp_path / "nothere.gsp")


def test_input_and_output_regions_are_whole_tensors():
    program = _mixed()
    g = program.input_geometry
    address, count = program.input_region()
    assert (address, count) == (g.base * 8, g.words * 8)
    xq = program.quantize_input(_inputs(MIXED_INPUT, 2))
    elements = program.input_elements(xq[0])
    assert elements.shape == (count,) and elements.dtype == np.int8
    # Element a is bank a % V at bank address a // V: scattering the region back gives the
    # tensor, and every other element (halo, padding channels) is zero.
    banks = np.zeros((8, g.end), dtype=np.int8)
    banks[:, g.base:] = elements.reshape(-1, 8).T
    assert np.array_equal(g.gather(banks), xq[0])
    assert np.count_nonzero(elements) == np.count_nonzero(xq[0])
    out = program.output_geometry
    assert program.output_region() == (out.base * 8, out.words * 8)
    y = program.run_golden_int(_inputs(MIXED_INPUT, 1))[0]
    raw = np.zeros((8, out.end), dtype=np.int8)
    out.scatter(y.reshape(out.height, out.width, out.channels), raw)
    words = (raw[:, out.base:].T.ravel().astype(np.int64) & 0xFF).tolist()   # as READ gives
    assert np.array_equal(program.output_from_elements(words), y)


# The golden target ----------------------------------------------------------------------------

GOLDEN_MODELS = ("lenet", "dscnn", "resnet8", "autoencoder", "mlp")


def _model_and_input(name):
    if name == "mlp":
        torch.manual_seed(SEED)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
        prune(model, "gs-gather", 0.75, lanes=8)
        return model.eval(), (1, 8, 8)
    cls, shape = MODELS[name]
    return _build(cls), shape


@pytest.mark.parametrize("name", GOLDEN_MODELS)
def test_golden_target_equals_the_layer_golden_and_the_cycle_model(name):
    model, shape = _model_and_input(name)
    x = _inputs(shape)
    program = compile(model, x, cfg=BIG)
    device = GoldenDevice(BIG)
    device.load(program)
    x_test = _inputs(shape, 3, seed=SEED + 7)
    got = device.infer_quantized(program.quantize_input(x_test))
    assert np.array_equal(got, program.run_golden_int(x_test))       # int8, bit for bit
    stats = program.stats()
    for counter in ("cycles", "stall_cycles", "groups", "busy_lane_cycles"):
        assert device.counters[counter] == 3 * stats[counter], counter
    setup = program.setup_layers
    assert stats["cycles"] == 1 + sum(entry["cycles"] for entry in stats["per_layer"][setup:])
    assert stats["setup_cycles"] == (1 + sum(entry["cycles"]
                                             for entry in stats["per_layer"][:setup])
                                     if setup else 0)
    assert np.array_equal(device.infer(x_test), program.run_golden(x_test))
    # The calibration's integers are the device's.
    assert np.array_equal(device.infer_quantized(program.quantize_input(x[:2])),
                          program.calibration_output[:2])


def test_golden_device_runs_one_input_and_saturates():
    program = _mixed()
    device = GoldenDevice(program.cfg)
    device.load(program)
    x = _inputs(MIXED_INPUT, 5).numpy() * 2
    y = device.infer(x)
    assert y.dtype == np.float32 and y.shape == (5, 5)
    assert np.array_equal(y, program.run_golden(x))
    one = device.infer(x[3])
    assert one.shape == (5,) and np.array_equal(one, y[3])
    assert device.counters["inferences"] == 1
    assert device.run is not None and np.array_equal(device.run(x[3]), one)  # the old name
    # Saturation on the input: values past 127 LSB clip, they do not wrap.
    q = program.quantize_input(np.full((1,) + MIXED_INPUT, 1e3))
    assert (q[0][..., :program.tensors[program.input].shape[0]] == 127).all()


def test_golden_target_takes_the_programs_core_unless_given_one():
    program = _mixed()
    device = GoldenDevice()
    assert device.config == CoreConfig()
    device.load(program)
    assert device.config == program.cfg == CoreConfig(bank_depth=256)
    with pytest.raises(DeviceError, match=r"^Program must target this device's core .*: "
                                          r"bank_depth 256 \(device 128\); compile it for "
                                          r"this core"):
        GoldenDevice(CoreConfig()).load(program)


def test_run_checks_shapes_and_program():
    device = GoldenDevice(CoreConfig(bank_depth=256))
    with pytest.raises(DeviceError, match=r"^A program must be loaded before running inputs"):
        device.infer(np.zeros(MIXED_INPUT))
    device.load(_mixed())
    with pytest.raises(ShapeError, match=r"^Input must have shape \(2, 6, 6\) or "
                                         r"\(N, 2, 6, 6\), not \(3, 10\)$"):
        device.infer(np.zeros((3, 10)))
    with pytest.raises(ShapeError, match=r"^Quantised input must have shape \(N,\) \+ "):
        device.infer_quantized(np.zeros((2, 3)))


def test_golden_device_memory_checks_are_device_errors():
    cfg = CoreConfig(lanes=4, bank_depth=16)
    device = GoldenDevice(cfg)
    device.write(Memory.ACTS, 0, [-1, 5])
    assert device.read(Memory.ACTS, 0, 2) == [255, 5]
    with pytest.raises(DeviceError, match=r"BAD_LAYER"):
        device.run_layers(0, cfg.layer_depth + 1)


def test_run_inputs_must_be_finite_and_numeric():
    import torch
    from torch import nn
    from gsaccel.sw.compile import compile
    torch.manual_seed(0)
    program = compile(nn.Sequential(nn.Linear(4, 3)), torch.rand(8, 4))
    with pytest.raises(ShapeError, match=r"^Input must be finite, but sample 1 holds nan at "
                                         r"\(2,\)$"):
        program.quantize_input(np.array([[0.0] * 4, [1, 2, np.nan, 4]]))
    with pytest.raises(ShapeError, match=r"^Input must be numeric, not <U1"):
        program.run_golden(np.array([["a", "b", "c", "d"]]))
