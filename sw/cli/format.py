"""``gsaccel pack``, ``unpack`` and ``inspect``: the GS compact format from the command line."""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from ...hw.config import POW2_EXP_MAX
from .. import golden
from ..errors import FormatError, GsaccelError, ShapeError
from ..format import PATTERNS, GSMatrix
from .common import (add_encoding, add_lanes, add_model_options, console, finite_json, load_array, load_model,
                     output_path, writing)

__all__ = ["register"]


def register(subparsers):
    from .main import add_command
    pack = add_command(
        subparsers, "pack",
        help="pack an integer weight matrix (.npy) or every pruned layer of a model (.pt)",
        description="Pack weights into the GS compact format (.gsf). A .npy matrix must already "
                    "follow its pattern and encoding; a .pt model (torch.save of a pruned "
                    "nn.Module) has each prunable layer quantised and packed by its mask.",
        example="gsaccel pack --weights W.npy --pattern gs-gather --lanes 8 -o W.gsf")
    pack.add_argument("model", nargs="?", metavar="MODEL.pt",
                      help="a saved pruned model; packs every prunable layer into DIR/<layer>.gsf")
    add_model_options(pack)
    pack.add_argument("--weights", metavar="W.npy", help="a 2-D integer matrix")
    pack.add_argument("--pattern", metavar="P", choices=PATTERNS, default=None,
                      help=f"sparsity pattern: {', '.join(PATTERNS)} (default: unstructured for a "
                           f"matrix, each layer's pruning metadata for a model)")
    add_lanes(pack)
    pack.add_argument("--per-row", metavar="E", type=int, default=1,
                      help="weights per row per group: 1 vertical, V horizontal "
                      )
    add_encoding(pack)
    pack.add_argument("--row-order", metavar="ORDER.npy",
                      help="gs-scatter: a permutation of the rows, V/e per row group")
    pack.add_argument("-o", "--output", metavar="OUT", required=True,
                      help="output .gsf file (or folder, for a model)")
    pack.set_defaults(func=run_pack)

    unpack = add_command(subparsers, "unpack", help="unpack a .gsf file into a dense .npy matrix",
                         example="gsaccel unpack W.gsf -o W.npy")
    unpack.add_argument("file", metavar="W.gsf")
    unpack.add_argument("-o", "--output", metavar="W.npy", required=True)
    unpack.set_defaults(func=run_unpack)

    inspect = add_command(subparsers, "inspect",
                          help="show a .gsf matrix (shape, pattern, groups, padding, predicted "
                               "cycles) or a .gsp program (per layer its loop nest, taps, "
                               "groups per pixel and cycles)",
                          example="gsaccel inspect W.gsf --json")
    inspect.add_argument("file", metavar="FILE", help="a .gsf matrix or a .gsp program")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(func=run_inspect)


def run_pack(args):
    if args.model:
        return _pack_model(args)
    if not args.weights:
        raise ShapeError("Nothing to pack: give --weights W.npy or a MODEL.pt")
    output = output_path(args.output, "packed matrix")
    weights = load_array(args.weights, "weights")
    row_order = load_array(args.row_order, "row order") if args.row_order else None
    matrix = GSMatrix.from_dense(weights, args.pattern or "unstructured", args.lanes,
                                 args.per_row, args.encoding, row_order=row_order)
    with writing(output, "packed matrix"):
        matrix.save(output)
    _print_summary(args.output, matrix.stats())


def _pack_model(args):
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise GsaccelError(f"{out}: is a file; a model packs into a folder of .gsf files")
    for name, matrix, basis in pack_model(args.model, args=args, lanes=args.lanes,
                                          encoding=args.encoding,
                                          pattern=args.pattern, per_row=args.per_row):
        with writing(out, "packed layers"):
            out.mkdir(parents=True, exist_ok=True)
        path = out / f"{name or 'model'}.gsf"
        with writing(path, "packed layer"):
            matrix.save(path)
        _print_summary(path, matrix.stats())
        if basis is not None:
            basis_path = out / f"{name or 'model'}.basis.npy"
            with writing(basis_path, "SmartDeal basis"):
                np.save(basis_path, basis)
            print(f"{basis_path}: SmartDeal basis B (3x3 float); the .gsf holds C' times "
                  f"2**10")


def pack_model(path, *, lanes=8, encoding="pow2", pattern=None, per_row=1, args=None):
    """``(layer name, GSMatrix, SmartDeal basis or None)`` for every Linear/Conv2d of a
    torch.save'd model.

    Each layer's masked weight in the hardware's GEMM view
    (``gsaccel.sw.prune.gemm_layout(module, lanes).to_gemm(weight * mask)``: a Conv2d's rows
    are its output channels and its columns ``tap·Cp + c``, channels padded to V, what the
    core's loop nest runs; a Linear's is its weight) is quantised with a power-of-two scale
    to ``encoding``, then packed with ``pattern`` or, when that is None, the pattern its
    pruning recorded (``gsaccel.sw.prune.pattern_info``, with its gs-scatter row order;
    unstructured when it has none). A SmartDeal layer packs C′ (its power-of-two factor,
    exact: scaled by 2**10 to integers) under its C pattern, and returns B beside it.
    """
    from ..compile.quantize import _scale_log2, masked_gemm_view, quantize_weights
    from ..prune import (SMARTDEAL_EXP_MIN, pattern_info, prunable_layers, smartdeal_cprime,
                         smartdeal_factors)
    model = load_model(path, args)
    layers = prunable_layers(model)
    if not layers:
        raise ShapeError(f"{path}: the model has no Linear or Conv2d layer to pack")
    for name, module in layers:
        info = pattern_info(module)
        if info is not None and info.pattern == "smartdeal" and pattern is None:
            c_prime = smartdeal_cprime(module) * 2.0 ** -SMARTDEAL_EXP_MIN
            order = getattr(module, "gsaccel_row_order", None)
            try:
                yield name, GSMatrix.from_dense(
                    np.round(c_prime).astype(np.int64), info.c_pattern, lanes, info.per_row,
                    "pow2", row_order=None if order is None or info.c_pattern != "gs-scatter"
                    else order.cpu().numpy()), smartdeal_factors(module)[1]
            except GsaccelError as error:
                raise type(error)(f"layer {name!r}: {error}") from None
            continue
        weight, mask = masked_gemm_view(module, lanes)
        limit = 2 ** POW2_EXP_MAX if encoding == "pow2" else 127
        kept = weight[mask]
        scale = _scale_log2(float(np.abs(kept).max()) if kept.size else 0.0, limit)
        q = quantize_weights(weight, mask, scale, encoding)
        layer_pattern, layer_e, order = pattern, per_row, None
        if layer_pattern is None:
            if info is not None and info.pattern in ("gs-gather", "gs-scatter", "1xN"):
                layer_pattern, layer_e = info.pattern, info.per_row
                if info.lanes != lanes:
                    raise ShapeError(f"Layer {name!r} was pruned for {info.lanes} lanes, not "
                                     f"{lanes}; pass --lanes {info.lanes}")
            else:
                layer_pattern = "unstructured"
        if layer_pattern == "gs-scatter" and hasattr(module, "gsaccel_row_order"):
            order = module.gsaccel_row_order.cpu().numpy()
        try:
            yield name, GSMatrix.from_dense(q, layer_pattern, lanes, layer_e, encoding,
                                            row_order=order), None
        except GsaccelError as error:
            raise type(error)(f"layer {name!r}: {error}") from None


def _print_summary(path, stats):
    print(f"{path}: {stats['shape'][0]}x{stats['shape'][1]} {stats['pattern']} V={stats['lanes']} "
          f"e={stats['per_row']}, {stats['nnz']} nonzeros, {stats['groups']} groups, "
          f"utilisation {stats['utilisation']:.1%}, {stats['bytes']} bytes "
          f"({stats['bytes_per_nonzero']:.2f} B/nz)")


def run_unpack(args):
    output = output_path(args.output, "dense matrix")
    matrix = GSMatrix.load(args.file)
    with writing(output, "dense matrix"):
        np.save(output, matrix.to_dense())
    kind = "int64" if matrix.exp_bias >= 0 else \
        f"float64 (pow2 exponent bias {matrix.exp_bias})"
    print(f"{args.output}: {matrix.shape[0]}x{matrix.shape[1]} {kind}")


def _read(path):
    """The bytes of the file ``inspect`` was given, or a one-line FormatError."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FormatError(f"{path}: is a directory, not a .gsf or .gsp file") from None
    except OSError as error:
        raise FormatError(f"{path}: cannot read: {error.strerror or error}") from None


def run_inspect(args):
    from ..compile.program import GSP_MAGIC
    data = _read(args.file)
    if data[:len(GSP_MAGIC)] == GSP_MAGIC:
        return _inspect_program(args, data)
    stats = golden.layer_stats(GSMatrix.from_bytes(data, source=str(args.file)))
    if args.json:
        json.dump(finite_json(stats), sys.stdout, indent=2, allow_nan=False)
        print()
        return
    from rich.table import Table
    table = Table(title=str(args.file), show_header=False)
    rows = [
        ("shape", f"{stats['shape'][0]} x {stats['shape'][1]}"),
        ("pattern", stats["pattern"]), ("lanes V", stats["lanes"]),
        ("weights per row e", stats["per_row"]),
        ("encoding", stats["encoding"] + (f", exponent bias {stats['exp_bias']} (weights = "
                                          f"codes · 2**{stats['exp_bias']})"
                                          if stats["exp_bias"] else "")),
        ("nonzeros", stats["nnz"]), ("sparsity", f"{stats['sparsity']:.2%}"),
        ("row groups", stats["rowgroups"]), ("groups", stats["groups"]),
        ("groups per row group", _summarise(stats["groups_per_rowgroup"])),
        ("padding lanes", stats["padding_lanes"]),
        ("utilisation", f"{stats['utilisation']:.2%}"),
        ("file bytes", stats["bytes"]),
        ("bytes per nonzero", f"{stats['bytes_per_nonzero']:.3f}"),
        ("CSR bytes (int8 + u16 index)", stats["csr_bytes"]),
        ("dense int8 bytes", stats["dense_bytes"]),
        ("predicted cycles", stats["cycles"]),
        ("dense cycles", stats["dense_cycles"]),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    console().print(table)


def _inspect_program(args, data):
    from ..compile.program import Program
    from .runtime import program_summary, program_table
    program = Program.from_bytes(data, source=str(args.file))
    if args.json:
        from ..compile.program import jsonable
        json.dump(finite_json(jsonable({"cfg": dataclasses.asdict(program.cfg),
                                        **program.stats()})),
                  sys.stdout, indent=2, allow_nan=False)
        print()
        return
    out = console()
    out.print(program_table(program, title=f"{args.file}: V={program.cfg.lanes}, "
                                           f"{program.cfg.encoding} weights"))
    out.print(program_summary(program), soft_wrap=True)


def _summarise(values):
    if len(values) <= 8:
        return " ".join(map(str, values))
    return f"{' '.join(map(str, values[:6]))} … (min {min(values)}, max {max(values)})"
