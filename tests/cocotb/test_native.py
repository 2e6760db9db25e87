"""The native Verilator harness behind VerilatorTransport: the real RTL over a pipe, compared
with GoldenCore bit for bit and cycle for cycle, plus its error paths and speed."""

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.layouts import FrameType, Memory
from gsaccel.sim.amaranth_sim import seeded_rng
from gsaccel.sw.runtime import protocol
from gsaccel.sw.runtime.device import Device
from gsaccel.sw.errors import DeviceError, DeviceTimeout
from gsaccel.sw.golden import GoldenCore
from gsaccel.sw.runtime.golden_link import GoldenCommandProcessor
from gsaccel.sw.compile.image import build_image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gateware"))
from core_host import image_requests  # noqa: E402

pytestmark = pytest.mark.verilator

#: The default core: the build the ``sim`` target uses, so tests and demo share one build.
CFG = CoreConfig()
#: A core for convolutional programs: test_e2e_runtime's CNN_CFG, the same build.
CNN_CFG = CoreConfig(bank_depth=2048, weight_depth=16384, row_depth=1024, layer_depth=32)


def _transport(cfg):
    from gsaccel.sim.build import require_verilator
    from gsaccel.sw.runtime.verilator import VerilatorTransport
    require_verilator()
    return VerilatorTransport(cfg)


@pytest.fixture(scope="module")
def transport():
    transport = _transport(CFG)
    yield transport
    transport.close()


def exchange(transport, frames, timeout=30.0, parser_cfg=CFG):
    parser = protocol.FrameParser(max_payload=parser_cfg.max_payload)
    replies = []
    for t, seq, payload in frames:
        transport.send(protocol.encode_frame(t, seq, payload))
        got = []
        while not got:
            got = parser.feed(transport.recv(max(parser.need(), 1), timeout=timeout))
        replies += got
    return [(f.seq, f.type, f.payload) for f in replies]


@pytest.mark.parametrize("vector_writer", [True, False])
def test_image_runs_like_golden(vector_writer):
    """sim.stimulus's random loop-nest program (padded, dilated, strided, GS-scatter and
    depthwise convolutions, max pooling, a residual addition, a Linear over a flattened
    tensor, a basis layer, CLEARs) on a scratchpad of stale bytes, with the vector writer
    and the serial one: every reply, the whole scratchpad after each run and the counters
    equal GoldenCore's."""
    from gsaccel.sim.stimulus import random_loop_program
    rng = seeded_rng(11)
    cfg = dataclasses.replace(CNN_CFG, vector_writer=vector_writer)
    layers, source, _ = random_loop_program(rng, cfg)
    image = build_image(cfg, layers)
    frames, seq = image_requests(cfg, image)
    frames.append((FrameType.HELLO, seq & 0xFF, b""))
    step = protocol.max_write_words(cfg, Memory.ACTS)
    stale = rng.integers(-128, 128, cfg.act_size)
    for start in range(0, cfg.act_size, step):
        seq += 1
        frames.append((FrameType.WRITE, seq & 0xFF, protocol.write_payload(
            cfg, Memory.ACTS, start, (stale[start:start + step] & 0xFF).tolist())))
    read = protocol.max_read_words(cfg, Memory.ACTS)
    for k in range(3):                    # several inferences with fresh inputs
        acts = np.zeros((cfg.lanes, source.end), dtype=np.int64)
        source.scatter(rng.integers(-128, 128, (source.height, source.width, source.channels)),
                       acts)
        region = acts[:, source.base:].T.ravel()
        for start in range(0, region.size, step):
            seq += 1
            frames.append((FrameType.WRITE, seq & 0xFF, protocol.write_payload(
                cfg, Memory.ACTS, source.base * cfg.lanes + start,
                (region[start:start + step] & 0xFF).tolist())))
        seq += 1
        frames.append((FrameType.RUN, seq & 0xFF, protocol.run_payload(0, len(layers))))
        for start in range(0, cfg.act_size, read):
            seq += 1
            frames.append((FrameType.READ, seq & 0xFF,
                           protocol.read_payload(Memory.ACTS, start, read)))
    golden = GoldenCore(cfg)
    reference = GoldenCommandProcessor(golden)
    expected = [(s & 0xFF, *reference.answer(t, s & 0xFF, p)) for t, s, p in frames]
    with _transport(cfg) as transport:
        got = exchange(transport, frames, parser_cfg=cfg)
    runs = [i for i, (t, _, _) in enumerate(frames) if t == FrameType.RUN]
    for i in runs:
        assert protocol.parse_counters(got[i][2]) == protocol.parse_counters(expected[i][2])
    assert got == expected


def test_device_api_over_sim(transport):
    device = Device(transport, timeout=30.0)
    assert device.hello() == CFG
    device.write(Memory.ACTS, 100, [-5, 7, 127, -128])
    assert device.read(Memory.ACTS, 100, 4) in ([-5, 7, 127, -128], [251, 7, 127, 128])


def test_speed():
    """A long run: 16 one-pixel layers of 64 x 256 weights, repeated; reports cycles/s."""
    from gsaccel.sw.bench.hw import one_pixel_layer
    from gsaccel.sw.runtime.verilator import VerilatorTransport
    from gsaccel.sw.format import GSMatrix
    rng = seeded_rng(12)
    cfg = CFG
    w = rng.choice([-4, -1, 1, 2, 8], size=(64, 256))
    matrix = GSMatrix.from_dense(w, "dense", cfg.lanes, 8, encoding=cfg.encoding)
    image = build_image(cfg, [one_pixel_layer(cfg, matrix, shift=4)])
    desc = image.layers[0]
    frames, seq = image_requests(cfg, image)
    frames.append((FrameType.WRITE, seq, protocol.write_payload(cfg, Memory.LAYERS, 1,
                                                              [desc] * 15)))
    golden = GoldenCore(cfg)
    golden.load(image)
    golden.write(Memory.LAYERS, 1, [desc] * 15)
    want = golden.run(0, 16)
    runs = 8
    transport = VerilatorTransport(cfg)
    try:
        exchange(transport, frames)
        start = time.perf_counter()
        for k in range(runs):
            got = exchange(transport, [(FrameType.RUN, k, protocol.run_payload(0, 16))])
            assert protocol.parse_counters(got[0][2]) == want
        seconds = time.perf_counter() - start
    finally:
        transport.close()
    assert want["groups"] == 16 * matrix.n_groups
    stats = transport.stats
    print(f"simulated {runs * want['cycles']} cycles of RUN in {seconds:.3f} s wall "
          f"({runs * want['cycles'] / seconds / 1e6:.2f} M cycles/s, round trips included); "
          f"harness: {stats.cycles} cycles, {stats.cycles_per_second / 1e6:.2f} M cycles/s "
          f"wall, {stats.cycles_per_cpu_second / 1e6:.2f} M cycles per CPU-second (V={cfg.lanes})")
    assert stats.cycles >= runs * want["cycles"]
    # A floor far under the target (>= 1 M/s per CPU-second) so a loaded machine passes.
    assert stats.cycles_per_cpu_second > 2e5


def test_timeout_and_dead_process():
    from gsaccel.sim.build import require_verilator
    from gsaccel.sw.runtime.verilator import VerilatorTransport
    require_verilator()
    transport = VerilatorTransport(CFG)
    with pytest.raises(DeviceTimeout, match=r"^The Verilator simulation must deliver 1 bytes "
                                            r"within 0.2 s, not 0$"):
        transport.recv(1, timeout=0.2)
    transport.send(protocol.encode_frame(FrameType.HELLO, 1))
    assert transport.recv(5, timeout=30)[:3] == bytes([0xA5, FrameType.DATA, 1])
    transport._process.kill()
    transport._process.wait(timeout=10)
    with pytest.raises(DeviceError, match=r"^The Verilator simulation exited with status -9"):
        transport.recv(100, timeout=5)
    transport.close()
    assert transport.stats is None or transport.stats.cycles > 0


def test_stats_reported_at_exit():
    from gsaccel.sim.build import require_verilator
    from gsaccel.sw.runtime.verilator import VerilatorTransport
    require_verilator()
    transport = VerilatorTransport(CFG)
    transport.send(protocol.encode_frame(FrameType.RUN, 1, protocol.run_payload(0, 2)))
    transport.recv(9 + 16, timeout=30)
    transport.close()
    # Reset, the frame's bytes and the run: at least the run's own cycles.
    assert transport.stats.cycles > 2 * 5 and transport.stats.bytes_in == 11
    assert transport.stats.bytes_out == 25


def test_many_requests_before_reading():
    """A host may queue far more than a pipe holds before it reads the replies."""
    from gsaccel.sim.build import require_verilator
    from gsaccel.sw.runtime.verilator import VerilatorTransport
    require_verilator()
    count = protocol.max_read_words(CFG, Memory.ACTS)
    request = protocol.encode_frame(FrameType.READ, 5, protocol.read_payload(Memory.ACTS, 0,
                                                                            count))
    n = 200                                     # 200 replies of ~1 KB: several pipe buffers
    with VerilatorTransport(CFG) as transport:
        transport.send(request * n)
        frames = protocol.FrameParser().feed(transport.recv(n * (count + 9), timeout=60))
    assert len(frames) == n and all(f.payload == bytes(count) for f in frames)


@pytest.mark.slow
def test_trace_build_writes_waves(tmp_path):
    """A trace build (a separate cached build) dumps a VCD of the run."""
    from gsaccel.sim.build import require_verilator
    from gsaccel.sw.runtime.verilator import VerilatorTransport
    require_verilator()
    waves = tmp_path / "core.vcd"
    with VerilatorTransport(CFG, trace=waves) as transport:
        transport.send(protocol.encode_frame(FrameType.HELLO, 3))
        reply = transport.recv(9 + 24, timeout=60)
    assert reply[:3] == bytes([0xA5, FrameType.DATA, 3])
    assert waves.stat().st_size > 1000


@pytest.mark.slow
def test_run_command_dumps_waves(tmp_path):
    """`gsaccel run --target sim --waves F` runs the program on a trace build and writes F."""
    import numpy as np
    import torch
    from gsaccel.sim.build import require_verilator
    from gsaccel.sw.cli.main import main
    require_verilator()
    torch.manual_seed(0)
    torch.save(torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU()), tmp_path / "m.pt")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((3, 6)))
    assert main(["compile", str(tmp_path / "m.pt"), "--example", str(tmp_path / "x.npy"),
                 "--bank-depth", "16", "-o", str(tmp_path / "m.gsp")]) == 0
    assert main(["run", str(tmp_path / "m.gsp"), "--input", str(tmp_path / "x.npy"),
                 "--target", "sim", "--waves", str(tmp_path / "run.vcd")]) == 0
    assert (tmp_path / "run.vcd").stat().st_size > 1000
