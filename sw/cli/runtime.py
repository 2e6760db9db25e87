"""``gsaccel compile`` and ``gsaccel run``: torch model → .gsp program → any target."""

import logging

import numpy as np

from ..errors import GsaccelError, ShapeError
from .common import (add_encoding, add_lanes, add_model_options, add_target, console, load_array,
                     load_model,
                     output_path, writing)

__all__ = ["register", "compare_layers"]

logger = logging.getLogger(__name__)


def register(subparsers):
    from .main import add_command
    compile_ = add_command(
        subparsers, "compile",
        help="compile a torch model (.pt) into a device program (.gsp)",
        description="Trace a saved torch model (torch.save of an nn.Module, pruned or not), "
                    "plan its activation tensors in the scratchpad, calibrate int8 activation "
                    "scales on an example batch, quantise the weights and pack every layer "
                    "as a loop nest over its output pixels. A model that does not fit the "
                    "core is refused with every limit it exceeds.",
        example="gsaccel compile model.pt --example x.npy --board ulx3s-85f -o model.gsp")
    compile_.add_argument("model", metavar="MODEL.pt", help="torch.save of an nn.Module")
    add_model_options(compile_)
    compile_.add_argument("--example", metavar="X.npy", required=True,
                          help="calibration batch (N, ...) of float inputs")
    add_lanes(compile_)
    add_encoding(compile_)
    compile_.add_argument("--bank-depth", metavar="D", type=int, default=128,
                          help="words per scratchpad bank: the scratchpad holds V*D int8 "
                               "activations, where every tensor gets a region of its own "
                               "(default: %(default)s)")
    compile_.add_argument("--weight-depth", metavar="G", type=int, default=2048,
                          help="group words in the weight memory (default: %(default)s)")
    compile_.add_argument("--row-depth", metavar="R", type=int, default=1024,
                          help="words in the row memory: row lines of V outputs each, or "
                               "one output's record each with --serial-writer (default: "
                               "%(default)s)")
    compile_.add_argument("--serial-writer", action="store_true",
                          help="compile for a core with the serial result writer, one output "
                               "per cycle (CoreConfig(vector_writer=False), the iCEBreaker's), "
                               "not the vector writer")
    compile_.add_argument("--layer-depth", metavar="L", type=int, default=16,
                          help="layer descriptors in the layer table (default: %(default)s)")
    compile_.add_argument("--board", metavar="BOARD",
                          help="compile for this board's default core (icebreaker, "
                               "ulx3s-85f, orangecrab) instead of the size options above")
    compile_.add_argument("--no-phases", dest="phases", action="store_false",
                          help="refuse a model whose weights exceed the core's memories instead "
                               "of compiling it into phases that stream them")
    compile_.add_argument("--report", action="store_true",
                          help="print every limit of the core against the model (activation "
                               "words, group words, row words, layers) and whether it fits, "
                               "fits in phases or not, and the remedy; write no program")
    compile_.add_argument("-o", "--output", metavar="M.gsp",
                          help="program file to write (required without --report)")
    compile_.set_defaults(func=run_compile)

    run = add_command(
        subparsers, "run",
        help="run a program (.gsp) on golden, sim or a board",
        description="Load a program on a target, run every input and print the counters; "
                    "with --compare, a per-layer table against torch float and the golden "
                    "model.",
        example="gsaccel run model.gsp --input x.npy --target sim --compare model.pt")
    run.add_argument("program", metavar="M.gsp")
    run.add_argument("--input", metavar="X.npy", required=True,
                     help="inputs (N, ...) or one input")
    add_target(run, "golden")
    run.add_argument("--labels", metavar="Y.npy",
                     help="integer class labels (N,): print the accuracy")
    run.add_argument("--compare", metavar="MODEL.pt",
                     help="the torch model the program came from: per-layer error table")
    add_model_options(run)
    run.add_argument("--compare-samples", metavar="N", type=int, default=64,
                     help="inputs used for the per-layer table (default: %(default)s)")
    run.add_argument("--waves", metavar="FILE",
                     help="sim target: dump the RTL waveform to FILE (.vcd, or .fst where "
                          "liblz4 is installed)")
    run.add_argument("-o", "--output", metavar="Y.npy",
                     help="save the dequantised float32 outputs")
    run.set_defaults(func=run_run)


# compile ----------------------------------------------------------------------------------------

def run_compile(args):
    from ..compile import compile
    from ..compile.native import compile_native
    from ...hw.config import CoreConfig
    if args.output is None and not args.report:
        raise GsaccelError("compile needs -o M.gsp (the program to write), or --report")
    if args.output is not None:
        output_path(args.output, "program")
    model = load_model(args.model, args)
    example = load_array(args.example, "example input")
    if args.board is not None:
        from ...boards.catalog import get_board
        cfg = get_board(args.board).config
        # --board sets the whole core: a size option that asks for something else is a
        # contradiction, not a preference to drop silently.
        sizes = {"lanes": "lanes", "encoding": "encoding", "bank_depth": "bank_depth",
                 "weight_depth": "weight_depth", "row_depth": "row_depth",
                 "layer_depth": "layer_depth"}
        clashes = [f"--{option.replace('_', '-')} {getattr(args, option)}"
                   f" (the board's is {getattr(cfg, field)})"
                   for option, field in sizes.items()
                   if f"--{option.replace('_', '-')}" in getattr(args, "given", ())
                   and getattr(args, option) != getattr(cfg, field)]
        if clashes:
            raise GsaccelError(f"--board {args.board} sets the core; drop "
                               f"{', '.join(clashes)} or drop --board")
    else:
        try:
            cfg = CoreConfig(lanes=args.lanes, encoding=args.encoding,
                             bank_depth=args.bank_depth, weight_depth=args.weight_depth,
                             row_depth=args.row_depth, layer_depth=args.layer_depth,
                             vector_writer=not args.serial_writer)
        except (TypeError, ValueError) as error:
            raise GsaccelError(f"Core configuration is invalid: {error}") from None
    if args.report:
        report = compile_native(model, example, cfg, report_only=True)
        status = {"fits": "fits in one load", "phased": "fits in phases (weights streamed)",
                  "no": "does not fit"}[report.status]
        out = console()
        out.print(f"capacity of {args.board or 'the core'} (V={cfg.lanes}, {cfg.encoding}): "
                  f"{status}", soft_wrap=True)
        for line in report.lines(phases_allowed=args.phases):
            out.print(f"  {line}", soft_wrap=True)
        remedy = report.remedy(phases_allowed=args.phases)
        if remedy:
            out.print(f"to fit it: {remedy}", soft_wrap=True)
        return 0
    program = compile(model, example, cfg=cfg, phases=args.phases)
    with writing(args.output, "program"):
        program.save(args.output)
    out = console()
    out.print(program_table(program))
    out.print(f"wrote {args.output}: {program_summary(program)}", soft_wrap=True)


def program_table(program, title=None):
    """Per layer: the loop nest (output pixels Ho x Wo, taps), pattern, groups per pixel,
    kept weights, utilisation and the cycles of the golden cycle model."""
    from rich.table import Table
    cfg = program.cfg
    table = Table(title=title or f"program for V={cfg.lanes}, {cfg.encoding} weights, "
                                 f"{len(program.layers)} layers")
    columns = ("#", "layer", "op", "kind", "HoxWo", "taps", "pattern", "e", "groups/px",
               "nnz", "util", "cycles", "shift", "relu")
    for column in columns:
        table.add_column(column, justify="left" if column in
                         ("layer", "op", "kind", "pattern") else "right")
    for index, (layer, stats) in enumerate(zip(program.layers, program.layer_stats())):
        if layer.kind == "gs":
            m = layer.matrix
            util = m.nnz / (m.lanes * m.n_groups) if m.n_groups else 0.0
            height, width = stats["output"]
            row = (f"{height}x{width}", str(stats["taps"]), m.pattern, str(m.per_row),
                   str(m.n_groups), str(m.nnz), f"{util:.0%}")
            kind = "gs" if layer.op == "sum" else "gs max"
        elif layer.kind == "basis":
            row = ("1x1", "-", "basis", "-", f"{layer.n_chunks} chunks", "9", "-")
            kind = "basis"
        else:
            row = ("-", "-", "-", "-", f"{layer.words} words", "-", "-")
            kind = "clear (at load)" if index < program.setup_layers else "clear"
        table.add_row(str(index), layer.name, layer.torch_op, kind, *row,
                      str(stats["cycles"]), str(getattr(layer, "shift", "")),
                      "yes" if getattr(layer, "relu", False) else "")
    return table


def program_summary(program):
    """One line: layers, memories used, weight bytes, cycles and utilisation."""
    stats, cfg = program.stats(), program.cfg
    return (f"{stats['layers']} layers of {cfg.layer_depth}, {stats['group_words']} group "
            f"words of {cfg.weight_depth}, {stats['row_words']} row words of "
            f"{cfg.row_depth}, {stats['activation_words']} activation words per bank of "
            f"{program.depth}; {stats['weight_bytes']} weight bytes, {stats['cycles']} cycles "
            f"per inference"
            + (f" (and {stats['setup_cycles']} once, at load)" if stats["setup_cycles"] else "")
            + f", utilisation {stats['utilisation']:.1%}"
            + (f"; {stats['phases']} phases stream {stats['streamed_bytes']} bytes per "
               f"inference" if stats["phases"] > 1 else ""))


# run --------------------------------------------------------------------------------------------

def run_run(args):
    from ..compile.program import Program
    from ..runtime.targets import connect
    out = console()
    if args.output:
        output_path(args.output, "outputs")
    if args.waves:
        output_path(args.waves, "waveform")
    program = Program.load(args.program)
    x = load_array(args.input, "input").astype(np.float64)
    if x.shape == program.input_shape:
        x = x[None]
    if x.shape[1:] != program.input_shape:
        raise ShapeError(f"{args.input}: inputs must have shape (N, "
                         f"{', '.join(map(str, program.input_shape))}), not {x.shape}")
    labels = None
    if args.labels:
        labels = load_array(args.labels, "labels")
        if labels.shape != (len(x),):
            raise ShapeError(f"{args.labels}: labels must have shape ({len(x)},), "
                             f"not {labels.shape}")
    model = load_model(args.compare, args) if args.compare else None
    with connect(args.target, program=program, waves=args.waves) as device:
        device.load(program)
        y = device.infer(x)
        counters = dict(device.counters)
        if model is not None:
            n = min(len(x), max(1, args.compare_samples))
            rows, summary = compare_layers(program, model, x[:n], device)
    if args.output:
        with writing(args.output, "outputs"):
            np.save(args.output, y)
    n = counters["inferences"]
    util = counters["busy_lane_cycles"] / (program.cfg.lanes * counters["groups"]) \
        if counters["groups"] else 0.0
    out.print(f"target {args.target}: {n} inputs, {counters['cycles'] / n:.1f} cycles per "
              f"inference, {counters['stall_cycles'] / n:.1f} stall cycles, utilisation "
              f"{util:.1%}", soft_wrap=True)
    out.print(link_line(program, device.link_rate, counters["streamed_bytes"] / n),
              soft_wrap=True)
    if labels is not None:
        accuracy = float((y.reshape(len(y), -1).argmax(axis=1) == labels).mean())
        out.print(f"accuracy {accuracy:.2%} on {len(labels)} labelled inputs",
                      soft_wrap=True)
    if model is not None:
        out.print(compare_table(rows, args.target))
        out.print(f"final output on {summary['samples']} inputs: argmax agreement with "
                      f"torch float {summary['agree_float']:.1%}, with golden "
                      f"{summary['agree_golden']:.1%}; {args.target} equals golden bit for bit: "
                      f"{'yes' if summary['bit_exact'] else 'NO'}", soft_wrap=True)
        if not summary["bit_exact"]:
            return 1
    return 0


def link_line(program, rate, streamed_per_inference):
    """One line: the bytes that cross the link per inference (input, output and, for a
    phased program, every phase's image) and the time they take at ``rate`` bytes/s (None:
    no link, golden), apart from the core's own latency."""
    in_bytes = program.input_region()[1]
    out_bytes = program.output_region()[1]
    total = in_bytes + out_bytes + streamed_per_inference
    phases = len(program.phases())
    text = (f"link: {total:.0f} bytes per inference ({in_bytes} in, {out_bytes} out"
            + (f", {streamed_per_inference:.0f} of weights streamed in {phases} phases"
               if phases > 1 else "") + ")")
    if rate:
        text += f", {1e3 * total / rate:.2f} ms at {rate / 1e3:.0f} kB/s"
    return text


def compare_layers(program, model, x, device):
    """Per-layer comparison of torch float, the golden model and ``device``.

    The device runs each input one layer at a time (a RUN of one layer, then a READ of the
    region of the tensor it wrote), so every intermediate tensor is checked; CLEAR layers
    run but are not reported.

    Returns
    -------
    rows : list of dict
        Per GS or basis layer: name, op, elements, max/mean abs error of golden vs float
        (dequantised; NaN where the float model has no such tensor), saturated outputs (at
        -128 or 127), device mismatches vs golden.
    summary : dict
        samples, agree_float, agree_golden (final argmax agreement), bit_exact.
    """
    import torch
    from ...hw.layouts import Memory
    from ..compile.graph import lower_graph
    from ..compile.program import gather_region, region
    from ..compile.qat import QATModel
    if isinstance(model, QATModel):
        # The float layers it trains (BatchNorm folded); the program is its fake-quantised
        # forward, bit for bit.
        with torch.no_grad():
            model.frozen_numerics()         # SmartDeal layers: their trained C·B
        model = model.model
    graph = lower_graph(model, x)
    names = [layer.output for layer in program.layers]
    if graph.output != program.output or program.output not in names or any(
            name not in graph.tensors and program.tensors[name].producer not in
            (layer.name for layer in program.layers) for name in names):
        raise ShapeError(f"Model must lower to the program's tensors ({', '.join(names)}); "
                         f"is it the model the program came from?")
    values = graph.forward(x)
    golden = program.trace_golden_int(x)
    device_trace = [[] for _ in program.layers]
    in_addr, _ = program.input_region()
    phases = program.phase_images()
    # Layer index -> (its index in its phase's image, that image, if the phase starts there).
    placement = {first + i: (i, image if len(phases) > 1 and i == 0 else None)
                 for first, count, image in phases for i in range(count)}
    for sample in program.quantize_input(x):
        device.write(Memory.ACTS, in_addr, [int(v) for v in program.input_elements(sample)])
        for index, layer in enumerate(program.layers):
            local, image = placement[index]
            if image is not None:          # a phased program: load the phase's weights
                for mem, words in image.memories():
                    if words:
                        device.write(mem, 0, list(words))
            device.run_layers(local, 1)
            geometry = program.written(layer)
            words = device.read(Memory.ACTS, *region(geometry))
            device_trace[index].append(gather_region(geometry, words).transpose(2, 0, 1))
    rows = []
    for index, (layer, info) in enumerate(zip(program.layers, program.info)):
        g = golden[index].astype(np.int64)
        d = np.stack(device_trace[index]).astype(np.int64)
        mismatches = int((g != d).sum())
        if layer.kind == "clear":
            if mismatches:
                rows.append({"layer": index, "name": layer.name, "op": "clear",
                             "elements": g[0].size, "float_max": float("nan"),
                             "max_err": float("nan"), "mean_err": float("nan"),
                             "lsb": float("nan"), "saturated": 0, "mismatches": mismatches})
            continue
        scale = program.tensors[layer.output].scale_log2
        if layer.output in values:
            f = values[layer.output].reshape(g.shape) / info.get("float_factor", 1.0)
            err = np.abs(g * 2.0 ** scale - f)
            float_max, max_err, mean_err = (float(np.abs(f).max()), float(err.max()),
                                            float(err.mean()))
        else:                        # a SmartDeal basis output: no tensor of the model
            float_max = max_err = mean_err = float("nan")
        rows.append({"layer": index, "name": layer.name, "op": layer.torch_op,
                     "elements": g[0].size, "float_max": float_max, "max_err": max_err,
                     "mean_err": mean_err, "lsb": 2.0 ** scale,
                     "saturated": int(((g == 127) | (g == -128)).sum()),
                     "mismatches": mismatches})
    with torch.no_grad():
        reference = model(torch.from_numpy(x).float()).numpy().reshape(len(x), -1)
    last = max(i for i, name in enumerate(names) if name == program.output)
    final_g = golden[last].reshape(len(x), -1)
    final_d = np.stack(device_trace[last]).reshape(len(x), -1)
    summary = {"samples": len(x),
               "agree_float": float((final_g.argmax(1) == reference.argmax(1)).mean()),
               "agree_golden": float((final_d.argmax(1) == final_g.argmax(1)).mean()),
               "bit_exact": all(r["mismatches"] == 0 for r in rows)}
    return rows, summary


def compare_table(rows, target):
    from rich.table import Table
    table = Table(title=f"per layer: golden vs torch float, {target} vs golden")
    for column in ("#", "layer", "op", "outputs", "max |float|", "LSB", "max |err|",
                   "mean |err|", "saturated", f"{target} != golden"):
        table.add_column(column, justify="left" if column in ("layer", "op") else "right")
    for r in rows:
        table.add_row(str(r["layer"]), r["name"], r["op"], str(r["elements"]),
                      f"{r['float_max']:.4g}", f"{r['lsb']:.4g}", f"{r['max_err']:.4g}",
                      f"{r['mean_err']:.4g}", str(r["saturated"]),
                      str(r["mismatches"]) if r["mismatches"] else "0")
    return table
