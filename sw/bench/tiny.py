"""``gsaccel bench tiny``: the MLPerf Tiny reference networks on every board's core.

For each model (:mod:`gsaccel.sw.models.tiny`) × pattern × sparsity × board core it prunes a
fresh copy of the network for the board's V, compiles it for the board's default core
(:func:`gsaccel.sw.api.compile`) and reports: whether it fits (in one load, in phases, or
not and why — the capacity report), RTL cycles per inference, latency at the board's clock,
lane utilisation of the pruned layers, weight bytes, the bytes a phased program streams per
inference and their link time at the board's UART rate, and the published anchors beside
them (DESIGN §5.1: all built with vendor tools, none sparse).

Cycles are the golden cycle model's; every program of the GS 75 % column (the quick
variant: one of them) also runs one inference on the Verilator RTL of the board's core, and
its outputs and counters must equal the golden model's bit for bit and cycle for cycle
(:func:`gsaccel.sw.bench.conv.check_program`), or the bench raises.

Only the topologies matter here: no CIFAR-10, Speech Commands or VWW data ships, so the
weights are random (BatchNorm statistics randomised) and the inputs Gaussian.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import GsaccelError

__all__ = ["run", "measure", "write", "table", "Row", "ANCHORS", "TARGETS", "PHASED_TARGETS",
           "prunable_layers", "pruned_model"]

#: Published latencies (ms) to beat, per model (mlcommons tiny_results v0.5–v1.3).
ANCHORS = {
    "resnet8": [("fpgaConvNet, Zybo Z7-10", 3.15), ("fpgaConvNet, ZedBoard", 0.41),
                ("hls4ml RN08, Pynq-Z2", 7.64)],
    "ds-cnn": [("fpgaConvNet, Zybo Z7-10", 2.15), ("fpgaConvNet, Cora Z7", 4.21),
               ("CFU Playground, iCE40UP5K", 1000.0)],
    "mobilenetv1": [("fpgaConvNet, ZedBoard", 9.49)],
    "fc-ae": [("hls4ml AD03, Pynq-Z2", 0.097)],
}
#: The latency targets: (model, board) -> (ms, the GS sparsity it is asked at, or None:
#: the least of :data:`SPARSITIES` that meets it).
TARGETS = {("resnet8", "ulx3s-85f"): (3.0, 0.75), ("ds-cnn", "orangecrab"): (2.0, None),
           ("ds-cnn", "icebreaker"): (50.0, None), ("mobilenetv1", "ulx3s-85f"): (9.0, None),
           ("fc-ae", "ulx3s-85f"): (0.1, None)}
#: Targets a phased program meets when its core latency does (the issue: "or phased, with
#: the reason"): the link time is given beside it, with the limit that makes it phased.
PHASED_TARGETS = {("ds-cnn", "icebreaker")}
PATTERNS = ("gs-gather", "1xN")
SPARSITIES = (0.5, 0.75, 0.875)
#: The column every program of which runs on the RTL (the quick variant runs one).
RTL_COLUMN = ("gs-gather", 0.75)
#: Calibration inputs per compile.
CALIBRATION = 16
#: The least lane utilisation of the pruned layers the issue asks for.
MIN_PRUNED_UTILISATION = 0.90


@dataclass
class Row:
    """One model × pattern × sparsity × board."""

    model: str
    pattern: str
    sparsity: float
    board: str
    status: str                   # fits | phased | no
    reason: str = ""
    cycles: int = 0
    latency_ms: float = 0.0
    utilisation: float = 0.0      # lanes busy per issued group, pruned layers
    stall_cycles: int = 0
    weight_bytes: int = 0
    streamed_bytes: int = 0
    link_ms: float = 0.0
    phases: int = 0
    compile_s: float = 0.0
    rtl: str = ""                 # "yes" when the RTL ran it and matched golden


def prunable_layers(model, lanes, example_input):
    """Names of the layers a user would prune: every Linear with at least V inputs and every
    Conv2d that is not grouped (depthwise kernels are 9 weights per channel and writer-bound
    on the core: pruning them buys no cycles) and reads at least V channels — or is the
    first convolution of an image or audio net (1 or 3 channels), pruned in its im2col'd
    view, the one the core runs."""
    from torch import nn
    from ..prune import input_views
    reads_input = {name for name, view in input_views(model, example_input).items()
                   if view == "im2col"}
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.in_features >= lanes:
            names.append(name)
        elif isinstance(module, nn.Conv2d) and module.groups == 1 and (
                module.in_channels >= lanes or name in reads_input
                and module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                >= lanes):
            names.append(name)
    return names


def pruned_model(name, pattern, sparsity, lanes, seed=0):
    """A fresh reference network ``name`` with its :func:`prunable_layers` pruned."""
    import torch
    from ..models.tiny import TINY_MODELS, tiny_model
    from ..prune import prune
    model = tiny_model(name, seed=seed)
    example = torch.zeros(2, *TINY_MODELS[name][0].input_shape)
    layers = prunable_layers(model, lanes, example)
    prune(model, pattern, sparsity, lanes=lanes, layers=layers, example_input=example)
    return model.eval(), set(layers)


def _pruned_utilisation(program, pruned):
    busy = groups = 0
    for info, stats in zip(program.info, program.layer_stats()):
        if info.get("part_of", info.get("name")) in pruned and stats["kind"] == "gs":
            busy += stats["busy_lane_cycles"]
            groups += stats["groups"]
    return busy / (program.cfg.lanes * groups) if groups else 0.0


def _short_reason(report):
    """Why a program does not fit, or (phased) why it needs phases: the limits concerned."""
    phased = report.status == "phased"
    over = [line for limit, line in zip(report.limits, report.lines())
            if (not limit.fits if phased else not limit.fits_phased)]
    text = "; ".join(over + ([] if phased else report.problems))
    return text.split(" — ")[0] if text else ""


def measure(*, quick=False, progress=None, rtl=True):
    """Rows for every model × pattern × sparsity × board (quick: GS 75 % only, and one
    program on the RTL)."""
    import torch
    from ...boards.catalog import BOARDS
    from ..api import compile
    from ..compile.native import compile_native
    from ..models.tiny import TINY_MODELS
    progress = progress or (lambda text: None)
    columns = [RTL_COLUMN] if quick else [(p, s) for p in PATTERNS for s in SPARSITIES]
    rows, programs = [], []
    for model_name, (cls, _) in TINY_MODELS.items():
        x = torch.randn(CALIBRATION, *cls.input_shape,
                        generator=torch.Generator().manual_seed(1))
        for pattern, sparsity in columns:
            for board_name, board in BOARDS.items():
                progress(f"{model_name} {pattern} {sparsity:.1%} on {board_name}")
                cfg = board.config
                model, pruned = pruned_model(model_name, pattern, sparsity, cfg.lanes)
                started = time.monotonic()
                report = compile_native(model, x, cfg, report_only=True)
                row = Row(model_name, pattern, sparsity, board_name, report.status)
                row.reason = _short_reason(report)
                if report.status == "no":
                    row.compile_s = time.monotonic() - started
                    rows.append(row)
                    continue
                program = compile(model, x, cfg=cfg)
                row.compile_s = time.monotonic() - started
                stats = program.stats()
                row.cycles, row.stall_cycles = stats["cycles"], stats["stall_cycles"]
                row.latency_ms = 1e3 * row.cycles / board.clk_hz
                row.utilisation = _pruned_utilisation(program, pruned)
                row.weight_bytes, row.phases = stats["weight_bytes"], stats["phases"]
                row.streamed_bytes = stats["streamed_bytes"]
                row.link_ms = 1e3 * row.streamed_bytes / (board.baud / 10)
                rows.append(row)
                if (pattern, sparsity) == RTL_COLUMN:
                    programs.append((row, program, x[:1].numpy()))
    if rtl:
        # Quick: the shortest program only (one Verilator build, one short inference).
        _run_on_rtl(sorted(programs, key=lambda item: item[0].cycles)[:1] if quick
                    else programs, progress)
    return rows


def _run_on_rtl(programs, progress):
    """One inference of each program on the Verilator RTL of its board's core, checked
    against the golden model (outputs and counters); marks the rows."""
    from ..runtime.device import GoldenDevice
    from ..runtime.targets import connect
    from .conv import check_program
    by_cfg = {}
    for row, program, x in programs:
        by_cfg.setdefault(program.cfg, []).append((row, program, x))
    for cfg, items in by_cfg.items():
        progress(f"building the Verilator core of {items[0][0].board} (V = {cfg.lanes})")
        with connect("sim", cfg=cfg, timeout=600) as sim, GoldenDevice(cfg) as reference:
            for row, program, x in items:
                progress(f"RTL: {row.model} on {row.board}'s core ({row.cycles} cycles)")
                sim.load(program)
                reference.load(program)
                _, counters = check_program(f"bench tiny: {row.model} on {row.board}", sim,
                                            reference, program, x)
                if counters["cycles"] != row.cycles:
                    raise GsaccelError(f"bench tiny: {row.model} on {row.board}: RTL ran "
                                       f"{counters['cycles']} cycles, the table says "
                                       f"{row.cycles}")
                row.rtl = "yes"


def _ms(value):
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def table(rows):
    """The markdown table of every row."""
    lines = ["| model | pattern | sparsity | board | fit | RTL cycles | latency (ms) | "
             "util (pruned layers) | stall cycles | weight bytes | streamed bytes | link (ms) "
             "| RTL = golden | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.status == "no":
            lines.append(f"| {r.model} | {r.pattern} | {r.sparsity:.1%} | {r.board} | no | | | "
                         f"| | | | | | {r.reason.replace('|', '/')} |")
            continue
        fit = "yes" if r.status == "fits" else f"phased ({r.phases})"
        note = r.reason.replace('|', '/') if r.status == "phased" else ""
        lines.append(f"| {r.model} | {r.pattern} | {r.sparsity:.1%} | {r.board} | {fit} | "
                     f"{r.cycles} | {_ms(r.latency_ms)} | {r.utilisation:.1%} | "
                     f"{r.stall_cycles} | {r.weight_bytes} | {r.streamed_bytes} | "
                     f"{_ms(r.link_ms) if r.streamed_bytes else '–'} | {r.rtl or '–'} | {note} |")
    return "\n".join(lines)


def _meets(row, target, phased_ok):
    # A phased program streams its weights every inference: it meets a target only where
    # phases are allowed (PHASED_TARGETS).
    return row.latency_ms < target and (row.status == "fits" or
                                        (phased_ok and row.status == "phased"))


def target_row(rows, model, board, sparsity, target):
    """The row a target is judged on: GS at ``sparsity``, or (None) the least sparse GS row
    that meets ``target``, else the fastest."""
    candidates = [r for r in rows if (r.model, r.board, r.pattern) == (model, board,
                                                                        "gs-gather")
                  and (sparsity is None or r.sparsity == sparsity)]
    running = sorted((r for r in candidates if r.status != "no"), key=lambda r: r.sparsity)
    phased_ok = (model, board) in PHASED_TARGETS
    meeting = [r for r in running if _meets(r, target, phased_ok)]
    if meeting:
        return meeting[0]
    if running:
        return min(running, key=lambda r: r.latency_ms)
    return candidates[0] if candidates else None


def target_table(rows):
    """The latency targets against the measured rows, with the anchors."""
    lines = ["| model | board | GS sparsity | core latency (ms) | target (ms) | met | anchors "
             "(ms, dense, vendor tools) |", "|---|---|---|---|---|---|---|"]
    for (model, board), (target, sparsity) in TARGETS.items():
        row = target_row(rows, model, board, sparsity, target)
        anchors = ", ".join(f"{name} {ms:g}" for name, ms in ANCHORS[model])
        asked = f"{sparsity:.1%}" if sparsity is not None else "any"
        if row is None or row.status == "no":
            why = row.reason if row else "not measured"
            lines.append(f"| {model} | {board} | {asked} | – | < {target:g} | no: {why} | "
                         f"{anchors} |")
            continue
        met = _meets(row, target, (model, board) in PHASED_TARGETS)
        phased = (f" + {_ms(row.link_ms)} of link ({row.phases} phases)"
                  if row.status == "phased" else "")
        verdict = ("yes, phased: " + row.reason if met and row.status == "phased" else
                   "yes" if met else "no")
        lines.append(f"| {model} | {board} | {row.sparsity:.1%} | {_ms(row.latency_ms)}{phased} "
                     f"| < {target:g} | {verdict} | {anchors} |")
    return "\n".join(lines)


def _plot(rows, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ..models.tiny import TINY_MODELS
    boards = sorted({r.board for r in rows})
    models = list(TINY_MODELS)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(1, len(boards))
    for i, board in enumerate(boards):
        values = []
        for model in models:
            row = next((r for r in rows if (r.model, r.board, r.pattern, r.sparsity)
                        == (model, board) + RTL_COLUMN and r.status != "no"), None)
            values.append(row.latency_ms if row else np.nan)
        ax.bar(np.arange(len(models)) + i * width, values, width, label=board)
    for j, model in enumerate(models):
        for name, ms in ANCHORS[model]:
            ax.hlines(ms, j - width / 2, j + 0.8 - width / 2, colors="k", linestyles="--",
                      linewidth=1)
            ax.annotate(name, (j + 0.8 - width / 2, ms), fontsize=6, va="center")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(models)) + 0.4 - width / 2, models)
    ax.set_ylabel("latency per inference (ms, log)")
    ax.set_title(f"MLPerf Tiny models, {RTL_COLUMN[0]} {RTL_COLUMN[1]:.0%}, each board's core "
                 f"(dashed: published dense anchors)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out_dir) / "img" / "bench_tiny.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _board_lines():
    from ...boards.catalog import BOARDS
    lines = ["| board | V | clock (MHz) | activations | group words | row words | layers | "
             "UART |", "|---|---|---|---|---|---|---|---|"]
    for name, board in BOARDS.items():
        cfg = board.config
        lines.append(f"| {name} | {cfg.lanes} | {board.clk_hz / 1e6:g} | {cfg.act_size} "
                     f"({cfg.bank_depth} per bank) | {cfg.weight_depth} | {cfg.row_depth} | "
                     f"{cfg.layer_depth} | {board.baud / 1e6:g} Mbaud |")
    return "\n".join(lines)


def _model_lines():
    from ..models.tiny import TINY_MODELS, mac_count, parameter_count, tiny_model
    lines = ["| model | task | input | parameters | MACs (dense) |", "|---|---|---|---|---|"]
    for name, (cls, task) in TINY_MODELS.items():
        model = tiny_model(name)
        shape = "×".join(map(str, cls.input_shape))
        lines.append(f"| {name} | {task} | {shape} | {parameter_count(model)} | "
                     f"{mac_count(model, cls.input_shape)} |")
    return "\n".join(lines)


def run(*, out_dir, quick=False, rtl=True):
    from rich.console import Console
    console = Console(stderr=True)
    with console.status("bench tiny: compiling…") as status:
        rows = measure(quick=quick, rtl=rtl,
                       progress=lambda text: status.update(f"bench tiny: {text}"))
    return write(rows, out_dir)


def write(rows, out_dir):
    """Write docs/benchmarks-tiny.md (and its plot) for ``rows`` into ``out_dir``; return
    the markdown."""
    plot = _plot(rows, out_dir)
    slowest = max(rows, key=lambda r: r.compile_s)
    fitting = [r for r in rows if r.status != "no" and r.utilisation]
    low = [r for r in fitting if r.utilisation < MIN_PRUNED_UTILISATION]
    rtl_rows = [r for r in rows if r.rtl]
    text = "\n".join([
        "# MLPerf Tiny benchmarks", "",
        "Regenerate with `gsaccel bench tiny` (`--quick`: GS 75 % only, one program on the "
        "RTL; `make test` runs it). Models: `gsaccel.sw.models.tiny` (reference topologies, "
        "random weights: latency and fit depend only on the topology and the sparsity). Each "
        "network is pruned for the board's V — every Linear and every non-grouped Conv2d "
        "(the first one in its im2col'd view); the depthwise ones stay dense — and compiled for the board's default core (`gsaccel.compile(model, x, "
        "board=...)`).", "",
        "Latency is the core's: RTL cycles per inference / the board's clock (the input "
        "loaded once, as MLPerf Tiny times it). A phased program also streams its weights "
        "over the UART every inference: that link time is given apart.", "",
        "## Targets", "", "ResNet-8 is judged at GS 75 %; the others at the least GS "
        "sparsity of the bench that meets the target (else the fastest). A phased program "
        "does not meet a target (its link time dominates), except DS-CNN on the iCEBreaker, "
        "whose target the issue allows to be met in phases, with the reason: the limit "
        "that needs them is in the *met* column, the link time beside the latency.", "",
        target_table(rows), "",
        f"![latency per model and board](img/{plot.name})", "",
        "## Every model, pattern, sparsity and board", "",
        f"{len(rtl_rows)} of these programs ran one inference on the Verilator RTL of their "
        f"board's core (column *RTL = golden*) with outputs and counters equal to the golden "
        f"model's; the cycles of the others are the golden cycle model's, which those runs "
        f"check. Slowest compile: {slowest.compile_s:.1f} s ({slowest.model}, "
        f"{slowest.board}). Lane utilisation of the pruned layers: "
        + (f"{min(r.utilisation for r in fitting):.1%} at the least"
           if fitting else "no program fits")
        + (f"; below {MIN_PRUNED_UTILISATION:.0%}: "
           + ", ".join(f"{r.model} {r.pattern} {r.sparsity:.1%} on {r.board}" for r in low)
           if low else "") + ".", "",
        table(rows), "",
        "## The models", "", _model_lines(), "",
        "## The board cores", "", _board_lines(), ""])
    (Path(out_dir) / "benchmarks-tiny.md").write_text(text)
    return text
