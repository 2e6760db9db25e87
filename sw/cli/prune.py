"""``gsaccel prune``: prune a saved torch model to an accelerator pattern.

MODEL.pt is a whole ``nn.Module`` saved with ``torch.save(model, path)`` (not a state_dict);
it is loaded with ``torch.load(path, weights_only=False)``, so its class must be importable and
the file must come from a source you trust (it is a pickle). The output is saved the same way,
with masks applied (``weight_orig`` / ``weight_mask``) and the pattern metadata buffers that
``gsaccel pack`` reads.
"""

import logging
from pathlib import Path

import numpy as np

from ..errors import GsaccelError
from .common import add_lanes, load_model, writing

__all__ = ["register", "run_prune"]

logger = logging.getLogger(__name__)


def register(subparsers):
    from .main import add_command
    from ..prune import PRUNE_PATTERNS
    parser = add_command(
        subparsers, "prune",
        help="prune a saved torch model (torch.save of an nn.Module) to a sparsity pattern",
        description="Prune every Linear and Conv2d layer of MODEL.pt (a whole nn.Module saved "
                    "with torch.save, loaded with weights_only=False: only load files you "
                    "trust) to one pattern and save the pruned model. Masks follow "
                    "torch.nn.utils.prune; each layer records its pattern for gsaccel pack.",
        example="gsaccel prune mlp.pt --pattern gs-gather --sparsity 0.875 --lanes 8 -o "
                "mlp-gs.pt")
    parser.add_argument("model", metavar="MODEL.pt", help="the model to prune")
    parser.add_argument("--pattern", metavar="P", required=True,
                        help=f"one of {', '.join(PRUNE_PATTERNS)}")
    parser.add_argument("--sparsity", metavar="S", type=float, required=True,
                        help="fraction of weights to remove per layer, in [0, 1)")
    add_lanes(parser)
    parser.add_argument("--per-row", metavar="E", type=int, default=1,
                        help="GS weights per row per group, divides V: 1 vertical, V "
                             "horizontal (default: %(default)s)")
    parser.add_argument("--c-pattern", metavar="P", default="1xN",
                        help="smartdeal only: pattern of C' (1xN, gs-gather, gs-scatter, "
                             "unstructured) (default: %(default)s)")
    parser.add_argument("--exclude", metavar="LAYER", action="append", default=[],
                        help="leave this layer dense (a name from model.named_modules(); "
                             "repeatable) (default: none)")
    parser.add_argument("-o", "--output", metavar="OUT.pt", required=True,
                        help="where to save the pruned model")
    parser.set_defaults(func=run_prune)


def run_prune(args):
    import torch

    from ..prune import pattern_info, prunable_layers, prune, smartdeal_cprime
    model = load_model(args.model)
    output = Path(args.output)
    if output.is_dir():
        raise GsaccelError(f"{output}: is a directory; give a file name for the pruned model")
    options = {"c_pattern": args.c_pattern} if args.pattern == "smartdeal" else {}
    prune(model, args.pattern, args.sparsity, args.lanes, args.per_row,
          exclude=args.exclude, **options)
    total = kept = 0
    for name, module in prunable_layers(model):
        info = pattern_info(module)
        weight = module.weight.detach().reshape(module.weight.shape[0], -1).numpy()
        if info is None:
            print(f"{name}: {weight.shape[0]}x{weight.shape[1]} dense (excluded)")
            continue
        if info.pattern == "smartdeal":
            matrix = smartdeal_cprime(module)
            what = f"C' {matrix.shape[0]}x{matrix.shape[1]} ({info.c_pattern}), relative " \
                   f"error {module.smartdeal_error:.4f}"
        else:
            matrix = weight
            what = f"{weight.shape[0]}x{weight.shape[1]}"
        nonzero = int(np.count_nonzero(matrix))
        total += matrix.size
        kept += nonzero
        print(f"{name}: {what} {info.pattern} V={info.lanes} e={info.per_row}: "
              f"{nonzero}/{matrix.size} kept, sparsity {1 - nonzero / matrix.size:.2%}")
    if total:
        print(f"total: {kept}/{total} kept, sparsity {1 - kept / total:.2%}")
    with writing(output, "pruned model"):
        output.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.save(model, output)
        except RuntimeError as error:          # torch reports a file it cannot open so
            raise GsaccelError(f"{output}: cannot write the pruned model: "
                               f"{str(error).splitlines()[0]}") from None
    print(f"saved {output}")
