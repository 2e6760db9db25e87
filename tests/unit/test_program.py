"""Programs: .gsp round trips and damage, host-side quantisation, golden device runs."""

import os
import struct
import zlib

import numpy as np
import pytest

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.layouts import Memory
from gsaccel.sim.stimulus import random_pattern_matrix
from gsaccel.sw.runtime.device import GoldenDevice
from gsaccel.sw.errors import DeviceError, FormatError, ShapeError
from gsaccel.sw.format import GSMatrix
from gsaccel.sw.compile.image import LayerSpec
from gsaccel.sw.compile.program import GSP_MAGIC, Program

SEED = int(os.environ.get("GSACCEL_SEED", "1234"))
CFG = CoreConfig(lanes=4, bank_depth=16)


def _program(seed=SEED):
    """A 3-layer program: a random gs-gather layer (sim.stimulus), a basis layer, a random
    unstructured one."""
    rng = np.random.default_rng(seed)
    w1, _ = random_pattern_matrix(rng, "gs-gather", 12, 10, 4, 1, "pow2", density=1.0)
    w3, _ = random_pattern_matrix(rng, "unstructured", 5, 12, 4, 2, "pow2", density=0.4)
    layers = [
        LayerSpec("gs", GSMatrix.from_dense(w1, "gs-gather", 4), rng.integers(-50, 50, 12), 3,
                  True, 0, 1, name="fc1"),
        LayerSpec("basis", basis=rng.integers(-100, 100, (3, 3)), shift=6, relu=False, src=1,
                  dst=0, n_chunks=4, name="basis"),
        LayerSpec("gs", GSMatrix.from_dense(w3, "unstructured", 4, 2), rng.integers(-9, 9, 5), 4,
                  False, 0, 1, name="fc2"),
    ]
    return Program(CFG, layers, input_shape=(2, 5), input_scale_log2=-5, output_shape=(5,),
                   output_scale_log2=-2, info=[{"name": s.name} for s in layers])


def test_gsp_round_trip(tmp_path):
    program = _program()
    program.save(tmp_path / "p.gsp")
    again = Program.load(tmp_path / "p.gsp")
    assert again.image() == program.image()
    assert (again.input_shape, again.input_scale_log2, again.output_shape,
            again.output_scale_log2, again.info) == ((2, 5), -5, (5,), -2, program.info)
    x = np.random.default_rng(SEED).normal(size=(6, 2, 5))
    assert np.array_equal(again.run_golden(x), program.run_golden(x))


def test_truncated_file_at_every_length_is_a_format_error():
    data = _program().to_bytes()
    for length in range(0, len(data), max(1, len(data) // 97)):
        with pytest.raises(FormatError):
            Program.from_bytes(data[:length])


def test_corrupt_byte_is_caught_by_the_crc():
    data = bytearray(_program().to_bytes())
    data[len(data) // 2] ^= 0x01
    with pytest.raises(FormatError, match=r"^data: CRC-32 mismatch; the file is corrupt$"):
        Program.from_bytes(bytes(data))


def test_wrong_version_and_magic():
    data = bytearray(_program().to_bytes())
    data[4:6] = struct.pack("<H", 7)
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    with pytest.raises(FormatError, match=r"^p: gsaccel program version 7 is not supported"):
        Program.from_bytes(bytes(data), source="p")
    with pytest.raises(FormatError, match=r"^p: not a gsaccel program \(magic b'GSF\\x1a'"):
        Program.from_bytes(b"GSF\x1a" + bytes(data[4:]), source="p")
    assert bytes(data[:4]) == GSP_MAGIC


def test_header_that_is_not_a_program():
    header = b'{"cfg": {"lanes": 3}}'
    body = struct.pack("<4sHI", GSP_MAGIC, 1, len(header)) + header + struct.pack("<I", 0)
    data = body + struct.pack("<I", zlib.crc32(body))
    with pytest.raises(FormatError, match=r"^data: header does not describe a program"):
        Program.from_bytes(data)


def test_missing_file(tmp_path):
    with pytest.raises(FormatError, match=r"nothere.gsp: no such file$"):
        Program.load(tmp_path / "nothere.gsp")


def test_golden_device_runs_the_image_like_the_kernels():
    program = _program()
    device = GoldenDevice(CFG)
    device.load(program)
    x = np.random.default_rng(SEED).normal(scale=2.0, size=(9, 2, 5))
    y = device.run(x)
    assert y.dtype == np.float32 and y.shape == (9, 5)
    assert np.array_equal(y, program.run_golden(x))
    one = device.run(x[3])
    assert one.shape == (5,) and np.array_equal(one, y[3])
    assert device.counters["inferences"] == 1
    # Saturation on the input: values past 127 LSB clip, they do not wrap.
    q = program.quantize_input(np.full((1, 2, 5), 1e3))
    assert (q[0] == 127).all()


def test_counters_match_the_cycle_model():
    program = _program()
    device = GoldenDevice(CFG)
    device.load(program)
    device.run(np.zeros((3, 2, 5)))
    assert device.counters["cycles"] == 3 * program.stats()["cycles"]
    groups = sum(s.matrix.n_groups for s in program.layers if s.kind == "gs")
    assert device.counters["groups"] == 3 * groups


def test_run_checks_shapes_and_program():
    device = GoldenDevice(CFG)
    with pytest.raises(DeviceError, match=r"^A program must be loaded before running inputs"):
        device.run(np.zeros((2, 5)))
    device.load(_program())
    with pytest.raises(ShapeError, match=r"^Input must have shape \(2, 5\) or \(N, 2, 5\), "
                                         r"not \(3, 10\)$"):
        device.run(np.zeros((3, 10)))
    with pytest.raises(DeviceError, match=r"^Program must target this device's core"):
        GoldenDevice(CoreConfig(lanes=8)).load(_program())


def test_golden_device_memory_checks_are_device_errors():
    device = GoldenDevice(CFG)
    device.write(Memory.ACTS, 0, [-1, 5])
    assert device.read(Memory.ACTS, 0, 2) == [255, 5]
    with pytest.raises(DeviceError, match=r"BAD_LAYER"):
        device.run_layers(0, CFG.layer_depth + 1)
