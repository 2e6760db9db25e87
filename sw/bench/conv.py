"""``gsaccel bench conv``: native convolutions on the loop-nest core, measured on the RTL.

Every layer run here is compiled with :func:`~gsaccel.sw.compile.native.compile_native` and
runs on the Verilator-compiled core (the ``sim`` target); each inference's outputs and
counters must equal the golden model's — the golden target running the same device image,
:meth:`Program.run_golden_int` and the cycle model of :meth:`Program.stats` — bit for bit and
cycle for cycle, or the bench raises :class:`~gsaccel.sw.errors.GsaccelError`. It measures:

1. the packed bytes per nonzero of a pruned 3×3 conv's GEMM view against a Linear layer of
   the same GEMM shape, pattern and sparsity;
2. a 3×3 conv 32→32 on 16×16, GS 75 %, V = 8: utilisation and cycles against
   ``Ho·Wo·nnz/V`` plus the fixed overhead of one layer in one RUN;
3. a depthwise 3×3 on 64 channels, 16×16, at V = 8 and V = 16;
4. the digits CNN pruned GS 75 % and fine-tuned: the golden program's argmax against torch
   on the test set, and the RTL against the golden model on a batch of test images;
5. compile time and peak memory of a DS-CNN-like 64-channel stack, in a subprocess.
"""

import copy
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...hw.config import CoreConfig
from .. import golden
from ..errors import GsaccelError

__all__ = ["run", "measure", "write", "table", "check_program", "Measurements", "LayerRun",
           "Row", "fixed_overhead", "conv_model", "depthwise_model", "ds_cnn_model",
           "compile_probe", "V8", "V16"]

#: The cores the RTL runs use (int8 lanes: the digits program's encoding; one Verilator build
#: each). A 64-channel 16×16 tensor with its halo and its output need 4640 words per bank at
#: V = 8, 2320 at V = 16.
V8 = CoreConfig(lanes=8, bank_depth=8192, encoding="int8")
V16 = CoreConfig(lanes=16, bank_depth=4096, encoding="int8")

SPARSITY = 0.75
#: Targets of the brief: bytes per nonzero within this fraction of a Linear layer's; lane
#: utilisation; cycles within this factor of the ideal (plus the fixed overhead); argmax
#: agreement; compile seconds and peak bytes.
BYTES_TOLERANCE = 0.20
MIN_UTILISATION = 0.97
CYCLE_FACTOR = 1.05
MIN_AGREEMENT = 0.98
MAX_COMPILE_SECONDS = 10.0
MAX_PEAK_BYTES = 1 << 30
#: Images of the digits test set run on the RTL.
DIGITS_BATCH = {True: 8, False: 64}
#: Inputs each single-layer program runs on the RTL.
LAYER_BATCH = {True: 1, False: 4}


@dataclass
class Row:
    """One line of the table: ``passed`` None is an extra row with no target."""

    item: str
    what: str
    measured: str
    target: str
    passed: object = None


@dataclass
class LayerRun:
    """One single-layer program run on the RTL (counters per inference, equal to golden)."""

    name: str
    lanes: int
    pixels: int
    nnz: int
    groups_per_pixel: int
    segments: int       # V/e
    writer: int         # the writer's cycles on the last sum vector (fixed_overhead)
    counters: dict
    overhead: int
    inferences: int

    @property
    def utilisation(self):
        return self.counters["busy_lane_cycles"] / (self.lanes * self.counters["groups"])

    @property
    def ideal(self):
        """Issue-bound cycles of the loop nest: ``Ho·Wo·nnz / V``."""
        return self.pixels * self.nnz / self.lanes

    @property
    def bound(self):
        """The cycle target: ``1.05 · ideal + overhead``."""
        return CYCLE_FACTOR * self.ideal + self.overhead

    @property
    def cycles(self):
        return self.counters["cycles"]


@dataclass
class Measurements:
    quick: bool
    storage: dict = field(default_factory=dict)     # encoding -> {conv, linear, ratio}
    layers: dict = field(default_factory=dict)      # key -> LayerRun
    digits: dict = field(default_factory=dict)
    compile: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)
    seconds: float = 0.0


# Models ---------------------------------------------------------------------------------------

def conv_model(channels=32, seed=0):
    """``nn.Sequential(Conv2d(C, C, 3, padding=1))`` with seeded weights."""
    import torch
    from torch import nn
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1))


def depthwise_model(channels=64, seed=0):
    """A depthwise 3×3 conv, padding 1 (``groups = channels``)."""
    import torch
    from torch import nn
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels))


def ds_cnn_model(channels=64, blocks=4, classes=12, seed=0):
    """A DS-CNN-like keyword-spotting stack on a 1×49×10 input: Conv2d(1, C, (10, 4),
    stride 2, padding (5, 1)), BatchNorm, ReLU; ``blocks`` × [depthwise 3×3, BatchNorm, ReLU,
    pointwise 1×1 C→C, BatchNorm, ReLU]; global average pool, Flatten, Linear (eval mode)."""
    import torch
    from torch import nn
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, channels, (10, 4), stride=2, padding=(5, 1)),
              nn.BatchNorm2d(channels), nn.ReLU()]
    for _ in range(blocks):
        layers += [nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
                   nn.BatchNorm2d(channels), nn.ReLU(),
                   nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)]
    return nn.Sequential(*layers).eval()


# Cycle targets --------------------------------------------------------------------------------

def fixed_overhead(cfg, writer):
    """Cycles one GS layer alone in one RUN adds to its issue-bound ``groups`` cycles (the
    cycle model, docs/architecture.md): ``LAYER_OVERHEAD`` + the engine's pipeline
    (``engine_drain`` = engine latency − 1) + the writer's ``writer`` cycles on the last sum
    vector (its V/e slots on a serial writer, its row lines on a vector writer:
    ``golden.writer_cycles``) + ``WRITE_LATENCY`` + ``RUN_OVERHEAD``."""
    return (golden.LAYER_OVERHEAD + golden.engine_drain(cfg) + writer + golden.WRITE_LATENCY
            + golden.RUN_OVERHEAD)


def _overhead_text(cfg, writer):
    what = "row lines" if cfg.vector_writer else "V/e"
    return (f"LAYER_OVERHEAD {golden.LAYER_OVERHEAD} + engine_drain {golden.engine_drain(cfg)} "
            f"+ {what} {writer} + WRITE_LATENCY {golden.WRITE_LATENCY} + RUN_OVERHEAD "
            f"{golden.RUN_OVERHEAD} = {fixed_overhead(cfg, writer)}")


# RTL runs -------------------------------------------------------------------------------------

def _counters(counters):
    return {name: int(counters[name]) for name in ("cycles", "busy_lane_cycles",
                                                   "stall_cycles", "groups")}


def check_program(name, device, reference, program, x):
    """Run the float batch ``x`` one input at a time on ``device`` (the sim target) and on
    ``reference`` (the golden target), both loaded with ``program``; raise
    :class:`GsaccelError` unless every output equals the golden target's and
    :meth:`Program.run_golden_int`'s, and every inference's counters equal the golden
    target's and the cycle model's (:meth:`Program.stats`). Returns (int8 outputs, counters
    of one inference)."""
    expected = program.run_golden_int(x)
    model = _counters(program.stats())
    xq = program.quantize_input(x)
    outputs = []
    for i, sample in enumerate(xq):
        got = device.infer_quantized(sample)
        want = reference.infer_quantized(sample)
        counters, golden_counters = _counters(device.counters), _counters(reference.counters)
        if not (np.array_equal(got, want) and np.array_equal(got, expected[i])):
            raise GsaccelError(f"bench conv: {name}: input {i}: RTL outputs differ from the "
                               f"golden model")
        if counters != golden_counters or counters != model:
            raise GsaccelError(f"bench conv: {name}: input {i}: RTL counters {counters} differ "
                               f"from the golden model's {golden_counters} (cycle model "
                               f"{model})")
        outputs.append(got)
    return np.stack(outputs), counters


def _layer_run(name, model, x_calibration, x, cfg, sim, reference):
    """Compile a one-layer model (its input sent as is, so the conv is the measured layer),
    run ``x`` on the RTL and check it; a :class:`LayerRun`."""
    from ..compile.native import compile_native
    program = compile_native(model, x_calibration, cfg, im2col_input=False)
    if [layer.kind for layer in program.layers] != ["gs"]:
        raise GsaccelError(f"bench conv: {name}: expected one GS layer, compiled "
                           f"{[layer.kind for layer in program.layers]}")
    for device in (sim, reference):
        device.load(program)
    _, counters = check_program(name, sim, reference, program, x)
    layer = program.layers[0]
    writer = int(golden.writer_cycles(layer.matrix, cfg)[-1])
    return LayerRun(name, cfg.lanes, layer.nest.pixels, layer.matrix.nnz, layer.matrix.n_groups,
                    layer.matrix.segments, writer, counters, fixed_overhead(cfg, writer),
                    len(x))


def _layer_runs(quick, progress):
    import torch
    from ..prune import prune
    from ..runtime.targets import connect
    batch = LAYER_BATCH[quick]
    generator = torch.Generator().manual_seed(1)
    runs = {}
    with connect("sim", cfg=V8, timeout=60) as sim, connect("golden", cfg=V8) as reference:
        conv = prune(conv_model(32), "gs-gather", SPARSITY, lanes=V8.lanes)
        calibration = torch.randn(16, 32, 16, 16, generator=generator)
        runs["conv"] = _layer_run("conv 3x3 32→32", conv, calibration,
                                  torch.randn(batch, 32, 16, 16, generator=generator).numpy(),
                                  V8, sim, reference)
        progress("conv 3×3 32→32 on the RTL")
        calibration = torch.randn(16, 64, 16, 16, generator=generator)
        x = torch.randn(batch, 64, 16, 16, generator=generator).numpy()
        runs["dw8"] = _layer_run("depthwise V=8", depthwise_model(64), calibration, x, V8, sim,
                                 reference)
        pruned = prune(depthwise_model(64), "gs-gather", SPARSITY, lanes=V8.lanes)
        runs["dw8_pruned"] = _layer_run("depthwise GS 75% V=8", pruned, calibration, x, V8, sim,
                                        reference)
        progress("depthwise 3×3 at V = 8 on the RTL")
    with connect("sim", cfg=V16, timeout=60) as sim, connect("golden", cfg=V16) as reference:
        runs["dw16"] = _layer_run("depthwise V=16", depthwise_model(64), calibration, x, V16,
                                  sim, reference)
        progress("depthwise 3×3 at V = 16 on the RTL")
    return runs


# Item 1: weight storage -----------------------------------------------------------------------

def _storage(encoding):
    """Bytes per nonzero of the compiled (packed) GEMM views of a pruned 3×3 conv 32→32 and
    of a pruned Linear 288→32 (the same 32×288 GEMM shape, pattern and sparsity)."""
    import torch
    from torch import nn
    from ..compile.native import compile_native
    from ..prune import gemm_layout, prune
    cfg = CoreConfig(lanes=V8.lanes, bank_depth=V8.bank_depth, encoding=encoding)
    generator = torch.Generator().manual_seed(2)
    conv = prune(conv_model(32), "gs-gather", SPARSITY, lanes=cfg.lanes)
    torch.manual_seed(0)
    linear = prune(nn.Sequential(nn.Linear(288, 32)), "gs-gather", SPARSITY, lanes=cfg.lanes)
    result = {}
    for name, model, x in (("conv", conv, torch.randn(8, 32, 16, 16, generator=generator)),
                           ("linear", linear, torch.randn(64, 288, generator=generator))):
        program = compile_native(model, x, cfg, im2col_input=False)
        (layer,) = program.layers
        matrix = layer.matrix
        # The packed matrix is the pruned layer's GEMM view: same shape, same kept weights.
        view = gemm_layout(model[0], cfg.lanes).to_gemm(model[0].weight_mask.numpy() != 0)
        if matrix.shape != view.shape or not np.array_equal(matrix.to_dense() != 0, view):
            raise GsaccelError(f"bench conv: the compiled {name} is not its pruned GEMM view")
        stats = matrix.stats()
        result[name] = {"shape": tuple(matrix.shape), "nnz": stats["nnz"],
                        "payload_bytes": stats["payload_bytes"],
                        "bytes_per_nonzero": stats["bytes_per_nonzero"],
                        "pattern": matrix.pattern, "groups": stats["groups"]}
    result["ratio"] = result["conv"]["bytes_per_nonzero"] / result["linear"]["bytes_per_nonzero"]
    return result


# Item 4: the digits CNN -----------------------------------------------------------------------

def _digits(quick, progress):
    import torch
    from ..compile.native import compile_native
    from ..models import DigitsCNN, digits_data, evaluate, train
    from ..prune import prune
    from ..runtime.targets import connect
    from .pruning import SETTINGS
    lr, finetune_lr = dict(SETTINGS.lr)["CNN"], dict(SETTINGS.finetune_lr)["CNN"]
    data = digits_data(0)
    torch.manual_seed(0)
    dense = DigitsCNN(pool="max")
    train(dense, data, SETTINGS.dense_epochs, lr=lr, seed=0)
    dense_accuracy = evaluate(dense, data)
    model = copy.deepcopy(dense)
    # In the views the core runs them in (example_input: the Linear over the flattened HWC
    # image). The first conv stays dense as in `bench pruning`: 9 weights per output, of
    # which GS 75 % would leave two, costs 15 points of accuracy.
    prune(model, "gs-gather", SPARSITY, lanes=V8.lanes, exclude=["0"],
          example_input=data.x_train[:2])
    finetune_epochs = 2
    train(model, data, finetune_epochs, lr=finetune_lr, seed=1)
    model.eval()
    progress("digits CNN trained, pruned and fine-tuned")
    program = compile_native(model, data.x_train[:256], V8)
    with torch.no_grad():
        reference = model(data.x_test).numpy()
    out = program.run_golden(data.x_test)
    labels = data.y_test.numpy()
    agreement = float((out.argmax(1) == reference.argmax(1)).mean())
    progress("digits CNN on the golden model")
    batch = DIGITS_BATCH[quick]
    x = data.x_test[:batch].numpy()
    with connect("sim", cfg=V8, timeout=60) as sim, connect("golden", cfg=V8) as golden_device:
        for device in (sim, golden_device):
            device.load(program)
        started = time.perf_counter()
        outputs, counters = check_program("digits CNN", sim, golden_device, program, x)
        sim_seconds = time.perf_counter() - started
    progress(f"digits CNN: {batch} test images on the RTL")
    return {"dense_accuracy": dense_accuracy,
            "float_accuracy": float((reference.argmax(1) == labels).mean()),
            "golden_accuracy": float((out.argmax(1) == labels).mean()),
            "agreement": agreement, "test_images": len(labels), "rtl_images": batch,
            "rtl_agreement": float((program.dequantize_output(outputs).argmax(1)
                                    == reference[:batch].argmax(1)).mean()),
            "counters": counters, "sim_seconds": sim_seconds,
            "layers": [(entry["name"], entry["torch_op"], entry.get("pattern"), entry.get("nnz"))
                       for entry in program.info],
            "dense_epochs": SETTINGS.dense_epochs, "finetune_epochs": finetune_epochs,
            "lr": lr, "finetune_lr": finetune_lr,
            "utilisation": program.stats()["utilisation"]}


# Item 5: compile time and memory, in a subprocess ---------------------------------------------

def compile_probe():
    """In a fresh process: build and prune the DS-CNN stack, compile it for :data:`V8`, and
    print one JSON line — compile wall and CPU seconds, prune seconds, the process's peak RSS
    (``ru_maxrss``, bytes) after the imports and at the end, and the program's size."""
    import resource
    import torch
    from ..compile.native import compile_native
    from ..prune import prune
    torch.set_num_threads(1)

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    baseline = peak()
    model = ds_cnn_model()
    x = torch.randn(64, 1, 49, 10, generator=torch.Generator().manual_seed(3))
    started = time.perf_counter()
    # The first conv reads one channel: pruned in its im2col'd view (40 columns).
    prune(model, "gs-gather", SPARSITY, lanes=V8.lanes, example_input=x[:2])
    pruned = time.perf_counter()
    cpu = time.process_time()
    program = compile_native(model, x, V8)
    done = time.perf_counter()
    stats = program.stats()
    print(json.dumps({
        "prune_seconds": pruned - started, "compile_seconds": done - pruned,
        "compile_cpu_seconds": time.process_time() - cpu, "baseline_bytes": baseline,
        "peak_bytes": peak(), "layers": stats["layers"], "nnz": stats["nnz"],
        "group_words": stats["group_words"], "activation_words": stats["activation_words"],
        "cycles": stats["cycles"], "calibration": len(x)}))


def _compile_measurement():
    code = "from gsaccel.sw.bench.conv import compile_probe; compile_probe()"
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=600)
    if result.returncode:
        raise GsaccelError(f"bench conv: the compile probe failed: {result.stderr[-800:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    measured["process_seconds"] = time.perf_counter() - started
    return measured


# Table ----------------------------------------------------------------------------------------

def _rows(m):
    rows = []
    for item, encoding in (("1", "int8"), ("1", "pow2")):
        s = m.storage[encoding]
        rows.append(Row(item, f"Weight storage, {encoding}: 3×3 conv 32→32 GS-gather 75 % "
                              f"(GEMM view 32×288) vs Linear 288→32, same pattern",
                        f"{s['conv']['bytes_per_nonzero']:.3f} vs "
                        f"{s['linear']['bytes_per_nonzero']:.3f} B/nonzero "
                        f"(ratio {s['ratio']:.3f})",
                        f"within {BYTES_TOLERANCE:.0%}",
                        abs(s["ratio"] - 1) <= BYTES_TOLERANCE))
    conv = m.layers["conv"]
    rows.append(Row("2", "3×3 conv 32→32, pad 1, 16×16, GS 75 %, V = 8: utilisation",
                    f"{conv.utilisation:.1%}", f"≥ {MIN_UTILISATION:.0%}",
                    conv.utilisation >= MIN_UTILISATION))
    rows.append(Row("2", "… cycles (one RUN of the layer)",
                    f"{conv.cycles} (ideal {conv.ideal:.0f} + overhead {conv.overhead}; "
                    f"{conv.counters['stall_cycles']} stall cycles)",
                    f"≤ {CYCLE_FACTOR}·Ho·Wo·nnz/V + fixed overhead "
                    f"({_overhead_text(V8, conv.writer)}) = {conv.bound:.0f}",
                    conv.cycles <= conv.bound))
    for key, what, target in (
            ("dw8", "Depthwise 3×3, 64 ch, 16×16, V = 8: utilisation", True),
            ("dw16", "Depthwise 3×3, 64 ch, 16×16, V = 16 (extra row): utilisation",
             not _writer_bound("dw16")),
            ("dw8_pruned", "Depthwise 3×3, 64 ch, GS 75 %, V = 8 (extra row): utilisation",
             False)):
        run = m.layers[key]
        rows.append(Row("3", what,
                        f"{run.utilisation:.1%}; {run.cycles} cycles = "
                        f"{run.cycles / (run.ideal + run.overhead):.2f}× ideal "
                        f"({run.ideal:.0f} + {run.overhead}), {run.counters['stall_cycles']} "
                        f"stall cycles",
                        f"≥ {MIN_UTILISATION:.0%}" if target else
                        "— (writer-bound, see note)" if _writer_bound(key) else "— (info)",
                        run.utilisation >= MIN_UTILISATION if target else None))
    d = m.digits
    rows.append(Row("4", "Digits CNN with MaxPool, GS 75 % (first conv dense), fine-tuned "
                         f"{d['finetune_epochs']} epochs, int8: argmax agreement of the golden "
                         f"program with torch, {d['test_images']} test images",
                    f"{d['agreement']:.2%} (accuracy: torch {d['float_accuracy']:.2%}, golden "
                    f"{d['golden_accuracy']:.2%})",
                    f"≥ {MIN_AGREEMENT:.0%}", d["agreement"] >= MIN_AGREEMENT))
    rows.append(Row("4", f"… RTL = golden on {d['rtl_images']} test images",
                    f"{d['rtl_images']}/{d['rtl_images']} bit- and cycle-exact "
                    f"({d['counters']['cycles']} cycles per image)",
                    "all equal", True))
    c = m.compile
    rows.append(Row("5", f"DS-CNN-like stack (64 ch, 1×49×10, 4 × [dw 3×3 + pw 1×1], GS 75 %, "
                         f"{c['layers']} device layers): compile time",
                    f"{c['compile_seconds']:.2f} s ({c['compile_cpu_seconds']:.2f} s CPU)",
                    f"< {MAX_COMPILE_SECONDS:.0f} s", c["compile_seconds"] < MAX_COMPILE_SECONDS))
    rows.append(Row("5", "… peak memory (the compiling process's peak RSS)",
                    f"{c['peak_bytes'] / 2**20:.0f} MiB ({c['baseline_bytes'] / 2**20:.0f} MiB "
                    f"after importing torch and gsaccel)",
                    "< 1 GiB", c["peak_bytes"] < MAX_PEAK_BYTES))
    return rows


def _depthwise_note(dw16, dw_pruned, per_pixel16, vectors16):
    if V16.vector_writer:
        return (f"* Depthwise at V = 16 runs at the issue rate: the vector writer "
                f"(`CoreConfig.vector_writer`) requantises and writes the {dw16.lanes} outputs of "
                f"an e = 1 sum vector in one cycle (a row line; {dw16.writer} per vector here), "
                f"so a pixel costs {vectors16 * dw16.writer} writer cycles against its "
                f"{per_pixel16} issue "
                f"cycles ({dw16.counters['stall_cycles']} stall cycles). A serial writer takes "
                f"one cycle per output slot, {dw16.segments} per vector: {vectors16}·"
                f"{dw16.segments} = {vectors16 * dw16.segments} writer cycles a pixel, and the "
                f"layer would be writer-bound. The pruned depthwise row "
                f"({dw_pruned.groups_per_pixel} groups per pixel at V = 8, "
                f"{dw_pruned.nnz / 64:.2f} taps per channel on average) has "
                f"{dw_pruned.counters['stall_cycles']} stall cycles.")
    return (f"* Depthwise at V = 16 is **writer-bound**: the serial result writer "
            f"takes one cycle per output slot, {dw16.segments} per e = 1 sum vector, while a "
            f"pixel issues only {per_pixel16 // vectors16} groups per {dw16.lanes} channels "
            f"(one per tap), so a pixel costs {vectors16}·{dw16.segments} = "
            f"{vectors16 * dw16.segments} writer cycles against {per_pixel16} issue cycles; "
            f"the engine waits for credits ({dw16.counters['stall_cycles']} stall cycles) "
            f"while its lanes stay fully used, which is why utilisation (busy lanes / (V · "
            f"groups)) does not show it. At V = 8 a pixel issues 72 groups against 64 writer "
            f"cycles and runs at the issue rate. The pruned depthwise row "
            f"({dw_pruned.groups_per_pixel} groups per pixel at V = 8, "
            f"{dw_pruned.nnz / 64:.2f} taps per channel on average) is writer-bound for the "
            f"same reason. The vector writer (`CoreConfig.vector_writer`) removes the bound.")


def _writer_bound(key):
    """Whether the depthwise layer ``key`` waits for a serial writer (one cycle per output
    slot) rather than issuing at the engine's rate; a vector writer writes a sum vector's
    V outputs in one cycle."""
    return key != "dw8" and not (V16 if key == "dw16" else V8).vector_writer


def _result(passed):
    return "info" if passed is None else ("pass" if passed else "**fail**")


def table(rows):
    lines = ["| # | measurement | measured | target | result |", "|---|---|---|---|---|"]
    lines += [f"| {r.item} | {r.what} | {r.measured} | {r.target} | {_result(r.passed)} |"
              for r in rows]
    return "\n".join(lines)


def _plot(m, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = {"conv": "conv 3×3 32→32\nGS 75 %, V = 8", "dw8": "depthwise\nV = 8",
              "dw8_pruned": "depthwise GS 75 %\nV = 8", "dw16": "depthwise\nV = 16"}
    keys = list(labels)
    runs = [m.layers[k] for k in keys]
    fig, ax = plt.subplots(figsize=(7, 4))
    positions = np.arange(len(keys))
    ax.bar(positions, [r.cycles / (r.ideal + r.overhead) for r in runs], 0.6,
           color=["tab:green" if r.cycles <= r.bound else "tab:orange" for r in runs])
    ax.axhline(1.0, color="k", linestyle="--", label="ideal: Ho·Wo·nnz/V + overhead")
    ax.axhline(CYCLE_FACTOR, color="tab:red", linestyle=":",
               label=f"target: {CYCLE_FACTOR}·Ho·Wo·nnz/V + overhead")
    for x, r in zip(positions, runs):
        ax.text(x, r.cycles / (r.ideal + r.overhead) + 0.06,
                f"{r.cycles} cycles\nutil {r.utilisation:.0%}",
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(positions, [labels[k] for k in keys], fontsize=8)
    ax.set_ylabel("RTL cycles / ideal")
    ax.set_ylim(0, max(2.0, max(r.cycles / (r.ideal + r.overhead) for r in runs) * 1.25))
    ax.set_title("Native convolutions on the RTL (16×16 input, one RUN)")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path = Path(out_dir) / "img" / "bench_conv.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# Entry points ---------------------------------------------------------------------------------

def measure(*, quick=False, progress=None):
    """Every measurement, checked on the RTL; a :class:`Measurements` with its table rows."""
    import torch
    progress = progress or (lambda text: None)
    started = time.monotonic()
    m = Measurements(quick)
    # The probe first: the process's peak RSS is its own, and nothing else competes with it.
    m.compile = _compile_measurement()
    progress("DS-CNN compiled in a subprocess")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m.storage = {encoding: _storage(encoding) for encoding in ("int8", "pow2")}
        progress("weight storage")
        m.layers = _layer_runs(quick, progress)
        m.digits = _digits(quick, progress)
    finally:
        torch.set_num_threads(threads)
    m.rows = _rows(m)
    m.seconds = time.monotonic() - started
    return m


def write(m, out_dir):
    """Write ``<out_dir>/benchmarks-conv.md`` and ``<out_dir>/img/bench_conv.png``; return the
    markdown."""
    plot = _plot(m, out_dir)
    conv, dw16 = m.layers["conv"], m.layers["dw16"]
    dw_pruned = m.layers["dw8_pruned"]
    d, c = m.digits, m.compile
    failed = [r for r in m.rows if r.passed is False]
    per_pixel16 = dw16.groups_per_pixel
    vectors16 = -(-64 // dw16.lanes)
    text = "\n".join([
        "# Convolution benchmarks", "",
        f"Regenerate with `gsaccel bench conv` (add `--quick` for smaller batches); this page: "
        f"`gsaccel bench conv{' --quick' if m.quick else ''}`, {m.seconds:.0f} s. Per-pattern "
        f"cycles on Linear layers: [benchmarks.md](benchmarks.md).", "",
        "Every layer is compiled by `compile_native` (loop nest over output pixels, the "
        "kernel stored once in its GEMM view) and ran on the Verilator RTL (the `sim` target) "
        f"on cores {_cfg_text(V8)} and {_cfg_text(V16)}; each inference's outputs and "
        f"counters equal the golden model's bit for bit and cycle for cycle (the golden "
        f"target on the same device image, `Program.run_golden_int` and the cycle model of "
        f"`Program.stats`). Single layers ran {m.layers['conv'].inferences} random "
        f"input(s) each, with the input sent as is (`im2col_input=False`), so the RUN holds "
        f"the measured layer alone.", "",
        table(m.rows), "",
        f"**{len(failed)} target(s) failed.**" if failed else "Every target is met.", "",
        "Notes:", "",
        f"* Ideal cycles = Ho·Wo·nnz/V; the fixed overhead added is that of one GS layer "
        f"alone in one RUN (`gsaccel.sw.golden.cycles`): {_overhead_text(V8, conv.writer)} "
        f"cycles at V = 8 ({_overhead_text(V16, dw16.writer)} at V = 16).",
        _depthwise_note(dw16, dw_pruned, per_pixel16, vectors16),
        f"* Digits CNN: dense {d['dense_epochs']} epochs (Adam lr {d['lr']:g}, "
        f"{d['dense_accuracy']:.2%}), every layer but the first conv (9 weights per output: "
        f"GS 75 % would leave two) pruned GS-gather 75 % in the view the core runs it in "
        f"(`prune(..., example_input=...)`: the final Linear over the flattened HWC "
        f"(2, 2, 16) tensor), fine-tuned {d['finetune_epochs']} epochs (lr {d['finetune_lr']:g}), "
        f"compiled for {_cfg_text(V8)} with 256 calibration images. Device layers (name, "
        f"op, pattern, nonzeros): {_layers_text(d['layers'])}; lane utilisation "
        f"{d['utilisation']:.1%}. Both pools are max pools (MAX layers).",
        f"* Compile probe: a fresh `python` process (one torch thread) builds the DS-CNN "
        f"stack, prunes it ({c['prune_seconds']:.2f} s) and runs `compile_native` on "
        f"{c['calibration']} calibration inputs; peak memory is that process's `ru_maxrss` "
        f"(whole process, Python and torch included). The program: {c['layers']} device "
        f"layers, {c['nnz']} nonzeros in {c['group_words']} group words, "
        f"{c['activation_words']} scratchpad words per bank, {c['cycles']} cycles per "
        f"inference.", "",
        f"![cycles against the ideal](img/{plot.name})", ""])
    (Path(out_dir) / "benchmarks-conv.md").write_text(text)
    return text


def _layers_text(layers):
    return "; ".join(" ".join(str(v) for v in entry if v is not None) for entry in layers)


def _cfg_text(cfg):
    return f"V = {cfg.lanes} ({cfg.encoding}, bank depth {cfg.bank_depth})"


def run(*, out_dir, quick=False):
    from rich.console import Console
    console = Console(stderr=True)
    with console.status("bench conv: compiling and running convolutions on the RTL…") as status:
        m = measure(quick=quick, progress=lambda s: status.update(f"bench conv: {s}"))
    return write(m, out_dir)
