"""``gsaccel compile`` and ``gsaccel run``: torch model → .gsp program → any target."""

import logging

import numpy as np

from ..errors import GsaccelError, ShapeError
from .common import add_encoding, add_lanes, add_target, console, load_array, load_model

__all__ = ["register", "compare_layers"]

logger = logging.getLogger(__name__)


def register(subparsers):
    from .main import add_command
    compile_ = add_command(
        subparsers, "compile",
        help="compile a torch model (.pt) into a device program (.gsp)",
        description="Trace a saved torch model (torch.save of an nn.Module, pruned or not), "
                    "calibrate int8 activation scales on an example batch, quantise the "
                    "weights and pack every layer for the core.",
        example="gsaccel compile model.pt --example x.npy --lanes 8 -o model.gsp")
    compile_.add_argument("model", metavar="MODEL.pt", help="torch.save of an nn.Module")
    compile_.add_argument("--example", metavar="X.npy", required=True,
                          help="calibration batch (N, ...) of float inputs")
    add_lanes(compile_)
    add_encoding(compile_)
    compile_.add_argument("--bank-depth", metavar="D", type=int, default=64,
                          help="words per scratchpad bank; a buffer holds V*D activations "
                               "(default: %(default)s)")
    compile_.add_argument("--weight-depth", metavar="G", type=int, default=2048,
                          help="group words in the weight memory (default: %(default)s)")
    compile_.add_argument("--row-depth", metavar="R", type=int, default=1024,
                          help="row records in the row memory (default: %(default)s)")
    compile_.add_argument("--board", metavar="BOARD",
                          help="compile for this board's default core (icebreaker, "
                               "ulx3s-85f, orangecrab) instead of the size options above")
    compile_.add_argument("-o", "--output", metavar="M.gsp", required=True,
                          help="program file to write")
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
    from ...hw.config import CoreConfig
    model = load_model(args.model)
    example = load_array(args.example, "example input")
    if args.board is not None:
        from ...boards.catalog import get_board
        cfg = get_board(args.board).config
    else:
        try:
            cfg = CoreConfig(lanes=args.lanes, encoding=args.encoding,
                             bank_depth=args.bank_depth, weight_depth=args.weight_depth,
                             row_depth=args.row_depth)
        except (TypeError, ValueError) as error:
            raise GsaccelError(f"Core configuration is invalid: {error}") from None
    program = compile(model, example, cfg=cfg)
    program.save(args.output)
    out = console()
    out.print(program_table(program))
    stats = program.stats()
    out.print(f"wrote {args.output}: {stats['layers']} layers, {stats['weight_bytes']} "
                  f"weight bytes, {stats['cycles']} cycles per inference, utilisation "
                  f"{stats['utilisation']:.1%}", soft_wrap=True)


def program_table(program):
    from rich.table import Table
    table = Table(title=f"program for V={program.cfg.lanes}, {program.cfg.encoding} weights")
    for column in ("#", "layer", "op", "kind", "shape", "pattern", "e", "nnz", "groups",
                   "util", "shift", "relu"):
        table.add_column(column, justify="right" if column in
                         ("#", "nnz", "groups", "util", "shift", "e") else "left")
    for index, (spec, info) in enumerate(zip(program.layers, program.info)):
        if spec.kind == "gs":
            m = spec.matrix
            util = m.nnz / (m.lanes * m.n_groups) if m.n_groups else 0.0
            row = (f"{m.shape[0]}x{m.shape[1]}", m.pattern, str(m.per_row), str(m.nnz),
                   str(m.n_groups), f"{util:.0%}")
        else:
            row = (f"{spec.n_chunks} chunks", "basis", "-", "9", str(spec.n_chunks), "-")
        table.add_row(str(index), info.get("name", spec.name), info.get("op", ""), spec.kind,
                      *row, str(spec.shift), "yes" if spec.relu else "")
    return table


# run --------------------------------------------------------------------------------------------

def run_run(args):
    from ..compile.program import Program
    from ..runtime.targets import connect
    out = console()
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
    model = load_model(args.compare) if args.compare else None
    with connect(args.target, cfg=program.cfg, waves=args.waves) as device:
        device.load(program)
        y = device.run(x)
        counters = dict(device.counters)
        if model is not None:
            n = min(len(x), max(1, args.compare_samples))
            rows, summary = compare_layers(program, model, x[:n], device)
    if args.output:
        np.save(args.output, y)
    n = counters["inferences"]
    util = counters["busy_lane_cycles"] / (program.cfg.lanes * counters["groups"]) \
        if counters["groups"] else 0.0
    out.print(f"target {args.target}: {n} inputs, {counters['cycles'] / n:.1f} cycles per "
                  f"inference, {counters['stall_cycles'] / n:.1f} stall cycles, utilisation "
                  f"{util:.1%}", soft_wrap=True)
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


def compare_layers(program, model, x, device):
    """Per-layer comparison of torch float, the golden model and ``device``.

    The device runs each input one layer at a time (RUN of one layer, then a READ of its
    destination buffer), so every intermediate activation is checked.

    Returns
    -------
    rows : list of dict
        Per layer: name, op, elements, max/mean abs error of golden vs float (dequantised),
        saturated outputs (at -128 or 127), device mismatches vs golden.
    summary : dict
        samples, agree_float, agree_golden (final argmax agreement), bit_exact.
    """
    import torch
    from ...hw.layouts import Memory
    from ..compile import float_trace, lower
    model.eval()
    floats = lower(model, program.input_shape)
    if len(floats) != len(program.layers):
        raise ShapeError(f"Model must lower to the program's {len(program.layers)} layers, "
                         f"not {len(floats)}; is it the model the program came from?")
    float_out = float_trace(floats, x)
    xq = program.quantize_input(x)
    cfg = program.cfg
    golden = [[] for _ in program.layers]
    dev = [[] for _ in program.layers]
    for sample in xq:
        for index, y in enumerate(program.trace_quantized(sample)):
            golden[index].append(y)
        device.write(Memory.ACTS, program.input_buffer * cfg.buffer_size,
                     [int(v) for v in sample])
        for index, spec in enumerate(program.layers):
            device.run_layers(index, 1)
            words = device.read(Memory.ACTS, spec.dst * cfg.buffer_size, spec.out_size)
            dev[index].append(np.array(words, dtype=np.uint8).view(np.int8))
    rows = []
    for index, (spec, info) in enumerate(zip(program.layers, program.info)):
        g = np.stack(golden[index]).astype(np.int64)
        d = np.stack(dev[index]).astype(np.int64)
        f = float_out[index][:, :g.shape[1]]
        deq = g * 2.0 ** info["scale_log2"]
        err = np.abs(deq - f)
        rows.append({"layer": index, "name": info["name"], "op": info["op"],
                     "elements": g.shape[1], "float_max": float(np.abs(f).max()),
                     "max_err": float(err.max()), "mean_err": float(err.mean()),
                     "lsb": 2.0 ** info["scale_log2"],
                     "saturated": int(((g == 127) | (g == -128)).sum()),
                     "mismatches": int((g != d).sum())})
    with torch.no_grad():
        reference = model(torch.from_numpy(x).float()).numpy().reshape(len(x), -1)
    final_g = np.stack(golden[-1])[:, program.output_offset:][:, :program.n_outputs]
    final_d = np.stack(dev[-1])[:, program.output_offset:][:, :program.n_outputs]
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
