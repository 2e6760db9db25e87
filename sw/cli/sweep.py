"""``gsaccel sweep``: design-space exploration on Ray (or a local process pool)."""

import argparse
from pathlib import Path

from ..errors import GsaccelError

__all__ = ["register", "run", "DEFAULT_OUTPUT"]

#: Where ``gsaccel sweep`` writes when no ``--output`` is given.
DEFAULT_OUTPUT = "./gsaccel-sweep"

#: Axis flags: option -> (axis, element type).
_AXIS_FLAGS = {"--model": ("model", str), "--board": ("board", str), "--lanes": ("lanes", int),
               "--encoding": ("encoding", str), "--bank-depth": ("bank_depth", int),
               "--weight-depth": ("weight_depth", int), "--pattern": ("pattern", str),
               "--sparsity": ("sparsity", float), "--seed": ("seed", int)}


def register(subparsers):
    from .main import add_command
    from ..sweep.spec import AXES, SETTINGS
    parser = add_command(
        subparsers, "sweep",
        help="explore a design space: a table, Pareto front and plots over models × cores "
             "× patterns × sparsities",
        description="Measure every point of the product of the axes (from SPEC.toml, its "
                    "[axes] and [settings] tables, and/or the flags, which replace the "
                    "spec's axes): prune and fine-tune the model for the point's core, "
                    "compile it, count cycles, latency at the board's clock, utilisation and "
                    "bytes, the accuracy on the digits test set (digits models), run it on "
                    "the Verilator RTL (--rtl), and build each distinct core with yosys + "
                    "nextpnr for LUT/FF/BRAM/DSP, Fmax and fit (--build). Each point and "
                    "build is a Ray task (a local instance of --workers CPUs, or the cluster "
                    "at --address); --local runs them in a process pool instead. Finished "
                    "points are cached (DIR/cache) by their inputs and the code behind them: "
                    "a rerun runs only what is new or failed, and Ctrl-C keeps what "
                    "finished. A failing point is recorded in the table, and the command "
                    "then exits 1. Writes DIR/sweep.md, sweep.csv, sweep.jsonl, sweep.toml "
                    "and DIR/img/sweep-*.png; docs/sweep.md has more.",
        example="gsaccel sweep --model digits-mlp --lanes 4,8,16 --sparsity 0.5,0.75 "
                "--pattern gs-gather,1xN -o /tmp/sweep")
    parser.add_argument("spec", nargs="?", metavar="SPEC.toml",
                        help="axes and settings of the sweep (else flags and defaults)")
    for flag, (axis, kind) in _AXIS_FLAGS.items():
        _, default, what = AXES[axis]
        shown = ",".join("board's" if v is None else str(v) for v in default)
        parser.add_argument(flag, metavar=kind.__name__.upper() + ",…",
                            help=f"{what}; comma-separated (default: {shown})")
    parser.add_argument("--epochs", type=int, metavar="N",
                        help=f"{SETTINGS['epochs'][2]} (default: {SETTINGS['epochs'][1]})")
    parser.add_argument("--finetune-epochs", type=int, metavar="N",
                        help=f"{SETTINGS['finetune_epochs'][2]} (default: "
                             f"{SETTINGS['finetune_epochs'][1]})")
    parser.add_argument("--finetune", metavar="MODE",
                        help=f"{SETTINGS['finetune'][2]} (default: masked)")
    parser.add_argument("--rtl", action="store_true", default=None,
                        help="run each fitting program on the Verilator RTL (the default)")
    parser.add_argument("--no-rtl", dest="rtl", action="store_false", default=argparse.SUPPRESS,
                        help="golden model and cycle model only: no Verilator builds")
    parser.add_argument("--build", action="store_true", default=None,
                        help="build each distinct core (yosys + nextpnr, 1-20 min each; "
                             "default: no)")
    parser.add_argument("--local", action="store_true",
                        help="a process pool on this machine instead of Ray")
    parser.add_argument("--address", metavar="ray://HOST:PORT",
                        help="a Ray cluster (Ray Client), or auto for one `ray start` "
                             "began here (default: a local Ray instance)")
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="CPUs of the local Ray instance, or processes of --local")
    parser.add_argument("-o", "--output", metavar="DIR", default=DEFAULT_OUTPUT,
                        help="folder for the table, plots and cache")
    parser.add_argument("--cache", metavar="DIR",
                        help="cache of finished points (default: DIR/cache)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the points and what is cached; run nothing")
    parser.set_defaults(func=run)


def _split(flag, text, kind):
    values = []
    for item in text.split(","):
        item = item.strip()
        try:
            values.append(kind(item))
        except ValueError:
            raise GsaccelError(f"{flag} takes comma-separated {kind.__name__} values, not "
                               f"{item!r}") from None
    return values


def spec_from_args(args):
    """The :class:`~gsaccel.sw.sweep.spec.SweepSpec`: SPEC.toml's, with every axis flag given
    replacing that axis and every setting flag that setting."""
    from ..sweep.spec import load_spec, make_spec
    base = load_spec(args.spec) if args.spec else make_spec()
    axes = {name: list(values) for name, values in base.axes.items()}
    for flag, (axis, kind) in _AXIS_FLAGS.items():
        text = getattr(args, axis)
        if text is not None:
            axes[axis] = _split(flag, text, kind)
    settings = dict(base.settings)
    for name in ("epochs", "finetune_epochs", "finetune", "rtl", "build"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if args.address and args.local:
        raise GsaccelError("--address and --local exclude each other: Ray on a cluster, or a "
                           "process pool here")
    source = args.spec or "flags"
    return make_spec(axes, settings, source=source + (" + flags" if args.spec and any(
        getattr(args, a) is not None for a, _ in _AXIS_FLAGS.values()) else ""))


def run(args):
    from .common import console
    from ..sweep.driver import plan_tasks, run_sweep
    spec = spec_from_args(args)
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise GsaccelError(f"{out_dir}: is a file; give a folder for the sweep's results")
    if args.dry_run:
        points, tasks, invalid = plan_tasks(spec)
        cache = Path(args.cache) if args.cache else out_dir / "cache"
        for point, key, _ in points:
            state = "invalid: " + invalid[point] if point in invalid else \
                "cached" if (cache / f"{key}.json").exists() else "to run"
            print(f"{point.label()}: {state}")
        print(f"{len(points)} points, {len(tasks)} tasks")
        return 0
    result = run_sweep(spec, out_dir, local=args.local, address=args.address,
                       workers=args.workers, cache_dir=args.cache)
    out = console()
    front = [row for row in result.rows if row.get("pareto")]
    out.print(f"{len(result.rows)} points: {result.cached} tasks from the cache, {result.ran} "
              f"run, {result.failed} failed, in {result.seconds:.0f} s; "
              + (f"Pareto front ({', '.join(c for c, _ in result.objectives)}):" if front else
                 "no point qualifies for the Pareto front (see docs/sweep.md)"))
    for row in sorted(front, key=lambda r: r.get("latency_ms") or 0):
        accuracy = f", accuracy {100 * row['accuracy']:.1f} %" if row.get("accuracy") \
            is not None else ""
        luts = f", {row['lut']} LUT" if row.get("lut") is not None else ""
        out.print(f"  {row['model']} {row['pattern']} {100 * row['sparsity']:.1f} % "
                  f"V{row.get('lanes_used')} on {row['board']}: {row['latency_ms']:.4f} ms"
                  f"{accuracy}{luts}")
    out.print(f"table and plots in {out_dir}/ (sweep.md, sweep.csv, img/)")
    if result.failed:
        raise GsaccelError(f"{result.failed} of {len(result.rows)} points failed (or their "
                           f"core's build); the errors are in {out_dir / 'sweep.csv'} (columns "
                           f"error, build_error) and {out_dir / 'errors'}/")
    return 0
