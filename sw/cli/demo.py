"""``gsaccel demo``: the whole flow on the digits set (what ``make demo`` runs)."""

from .common import add_lanes, add_target

__all__ = ["register"]


def register(subparsers):
    from .main import add_command
    demo = add_command(
        subparsers, "demo",
        help="train, prune, compile and run the digits MLP on the RTL simulation",
        description="Train the 64-128-64-10 digits MLP, prune it, compile it, run the whole "
                    "test split on golden and on the target, and print accuracy, cycles per "
                    "inference, utilisation and weight bytes. The target is opened first: "
                    "without Verilator, make or a C++ compiler the sim target fails at once "
                    "with the tool to install.",
        example="gsaccel demo --target sim --sparsity 0.75 --pattern gs-gather")
    add_target(demo, "sim", "; golden runs the golden model against itself, not the RTL")
    add_lanes(demo)
    demo.add_argument("--sparsity", metavar="S", type=float, default=0.75,
                      help="fraction of weights pruned (default: %(default)s)")
    demo.add_argument("--pattern", metavar="P", default="gs-gather",
                      help="gs-gather, gs-scatter, 1xN, smartdeal or unstructured "
                           "(default: %(default)s)")
    demo.add_argument("--seed", metavar="N", type=int, default=0,
                      help="seed of the split, initialisation and training (default: "
                           "%(default)s)")
    demo.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    demo.set_defaults(func=run)


def run(args):
    import json
    from ..demo import run_demo
    result = run_demo(target=args.target, lanes=args.lanes, sparsity=args.sparsity,
                      pattern=args.pattern, seed=args.seed)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, sort_keys=True)
    return 0 if result["bit_exact"] and result["cycle_exact"] else 1
