"""``gsaccel bench``: regenerate the benchmark tables and plots (numbers, not timed tests)."""

import importlib
import time
from pathlib import Path

__all__ = ["register", "BENCHES", "DEFAULT_OUTPUT"]

#: bench name -> (module with run(*, out_dir, quick) -> markdown, what it measures)
BENCHES = {
    "pruning": ("gsaccel.sw.bench.pruning",
                "accuracy, real sparsity and packed bytes per pattern on the digits models"),
    "hw":      ("gsaccel.sw.bench.hw",
                "RTL cycles, lane utilisation and speed-up per pattern; LUTs per lane; "
                "Verilator cycles/s"),
    "boards":  ("gsaccel.sw.bench.boards", "LUT/FF/BRAM/DSP use and Fmax per board"),
    "conv":    ("gsaccel.sw.bench.conv",
                "native convolutions on the RTL: bytes per nonzero, utilisation and cycles; "
                "the digits CNN against golden; compile time and memory"),
    "tiny":    ("gsaccel.sw.bench.tiny",
                "the MLPerf Tiny networks on every board's core: fit, RTL cycles, latency, "
                "utilisation, weight and streamed bytes, against the published anchors"),
}


#: Where ``gsaccel bench`` writes when no ``--output`` is given (``make bench`` passes docs/).
DEFAULT_OUTPUT = "./gsaccel-bench"


def register(subparsers):
    from .main import add_command
    parser = add_command(
        subparsers, "bench",
        help="run benchmarks and write their tables (DIR/*.md) and plots (DIR/img/)",
        description="Run benchmarks: " + "; ".join(f"{name}: {what}" for name, (_, what)
                                                   in BENCHES.items())
        + ". Tables and plots go to the folder -o names (`make bench` writes docs/); "
          "Verilator and board builds go to the cache folder ($GSACCEL_CACHE, else "
          "$XDG_CACHE_HOME/gsaccel or ~/.cache/gsaccel).",
        example="gsaccel bench hw --quick -o /tmp/bench")
    parser.add_argument("which", nargs="+", metavar="BENCH", choices=[*BENCHES, "all"],
                        help=f"what to measure: {', '.join(BENCHES)} or all")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sweeps, for a first look (default: %(default)s)")
    parser.add_argument("-o", "--output", metavar="DIR", default=DEFAULT_OUTPUT,
                        help="folder for tables and plots, made if missing (default: "
                             "%(default)s)")
    parser.set_defaults(func=run)


def run(args):
    names = list(BENCHES) if "all" in args.which else list(dict.fromkeys(args.which))
    out_dir = Path(args.output)
    (out_dir / "img").mkdir(parents=True, exist_ok=True)
    for name in names:
        module = importlib.import_module(BENCHES[name][0])
        started = time.monotonic()
        print(f"== bench {name}: {BENCHES[name][1]}")
        table = module.run(out_dir=out_dir, quick=args.quick)
        print(table)
        print(f"== bench {name} took {time.monotonic() - started:.0f} s; tables and plots "
              f"in {out_dir}/")
