"""``gsaccel prune``: prune a saved torch model to an accelerator pattern.

MODEL.pt is a whole ``nn.Module`` saved with ``torch.save(model, path)`` (not a state_dict);
it is loaded with ``torch.load(path, weights_only=False)``, so its class must be importable and
the file must come from a source you trust (it is a pickle). The output is saved the same way,
with masks applied (``weight_orig`` / ``weight_mask``) and the pattern metadata buffers that
``gsaccel pack`` reads.

With ``--finetune DATA`` the pruned model is then made quantisation-aware
(:func:`gsaccel.quantize_aware`, calibrated on DATA's training inputs) and fine-tuned on DATA,
so the saved model is what the core computes bit for bit; ``gsaccel compile`` takes its
scales and integer weights as they are.
"""

import logging
from pathlib import Path

import numpy as np

from ..errors import GsaccelError
from .common import add_encoding, add_lanes, add_model_options, check_array, load_model, writing

__all__ = ["register", "run_prune", "load_finetune_data"]

#: Fraction of a .npz's samples held out for the test accuracy when it has no x_test/y_test.
HOLD_OUT = 0.2

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
                "mlp-gs.pt\n  gsaccel prune model.pt --pattern gs-gather --sparsity 0.75 "
                "--finetune digits --epochs 10 -o qat.pt")
    parser.add_argument("model", metavar="MODEL.pt", help="the model to prune")
    add_model_options(parser)
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
    parser.add_argument("--finetune", metavar="DATA",
                        help="then fine-tune quantisation-aware (the device's own rounding, "
                             "straight-through) on DATA: 'digits' (scikit-learn's 8x8 digits) "
                             "or a .npz with x (inputs, the model's layout) and y (integer "
                             "labels), optionally x_test and y_test (else 20 %% of x is held "
                             "out); the output is then a model gsaccel compile takes as is "
                             "(default: no fine-tuning)")
    parser.add_argument("--epochs", metavar="N", type=int, default=10,
                        help="--finetune: epochs (default: %(default)s)")
    parser.add_argument("--lr", metavar="LR", type=float, default=1e-3,
                        help="--finetune: Adam learning rate (default: %(default)s)")
    add_encoding(parser)
    parser.add_argument("-o", "--output", metavar="OUT.pt", required=True,
                        help="where to save the pruned model")
    parser.set_defaults(func=run_prune)


def load_finetune_data(source, seed=0):
    """``DigitsData`` (x/y train and test tensors) of ``--finetune``: ``digits`` or a
    ``.npz`` of ``x`` and ``y`` (and optionally ``x_test``, ``y_test``).

    Raises
    ------
    FormatError, ShapeError
        A missing or unreadable file, missing arrays, or arrays that do not pair up.
    """
    import torch

    from ..errors import FormatError, ShapeError
    from ..models import digits_data
    from ..models.digits import DigitsData
    if source == "digits":
        return digits_data(seed)
    path = Path(source)
    if not path.is_file():
        raise FormatError(f"{path}: no such data file; give 'digits' or a .npz with arrays x "
                          f"and y (np.savez(path, x=inputs, y=labels))")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as error:          # np.load raises many types for a damaged file
        raise FormatError(f"{path}: not a .npz archive ({type(error).__name__}: "
                          f"{error})") from None
    missing = [name for name in ("x", "y") if name not in arrays]
    if missing:
        raise FormatError(f"{path}: the archive must hold arrays x and y, but has "
                          f"{sorted(arrays) or 'none'}; save it with np.savez(path, x=inputs, "
                          f"y=labels)")
    for name, array in arrays.items():
        check_array(array, f"array {name}", path)

    def pair(x, y, what):
        if y.ndim != 1 or y.dtype.kind not in "iu" or len(x) != len(y) or (y < 0).any():
            raise ShapeError(f"{path}: {what} must be one non-negative integer label per "
                             f"input ({len(x)} inputs), not {y.dtype} of shape {y.shape}")
        return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)

    x, y = pair(arrays["x"], arrays["y"], "y")
    if "x_test" in arrays and "y_test" in arrays:
        x_test, y_test = pair(arrays["x_test"], arrays["y_test"], "y_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise ShapeError(f"{path}: x_test must have inputs of shape {tuple(x.shape[1:])} "
                             f"like x, not {tuple(x_test.shape[1:])}")
    else:
        if len(x) < 2:
            raise ShapeError(f"{path}: x must hold at least 2 inputs to hold some out for "
                             f"testing, not {len(x)}")
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        test = order[:max(1, int(HOLD_OUT * len(x)))]
        train = order[len(test):]
        x, y, x_test, y_test = x[train], y[train], x[test], y[test]
    return DigitsData(x, y, x_test, y_test)


def _finetune(model, data, args):
    """The pruned model made quantisation-aware and fine-tuned on ``data``."""
    import torch
    from rich.progress import Progress

    from ..compile.qat import finetune, quantize_aware
    from ..errors import ShapeError
    from ..models import evaluate
    model.eval()
    try:
        with torch.no_grad():
            out = model(data.x_test[:2])
    except Exception as error:          # the user's model raises what it raises
        raise ShapeError(f"{args.finetune}: inputs of shape {tuple(data.x_test.shape[1:])} "
                         f"do not fit the model ({type(error).__name__}: {error}); give x in "
                         f"the layout the model takes") from None
    classes = out.reshape(len(out), -1).shape[1]
    labels = int(max(data.y_train.max(), data.y_test.max()))
    if labels >= classes:
        raise ShapeError(f"{args.finetune}: label {labels} is out of range for a model with "
                         f"{classes} outputs")
    before = evaluate(model, data)
    qmodel = quantize_aware(model, data.x_train, encoding=args.encoding, lanes=args.lanes)
    start = evaluate(qmodel, data)
    steps = args.epochs * -(-len(data.x_train) // 64)
    with Progress(transient=True) as progress:
        task = progress.add_task(f"QAT fine-tuning, {args.epochs} epochs", total=steps)
        after = finetune(qmodel, data, epochs=args.epochs, lr=args.lr,
                         on_step=lambda: progress.advance(task))
    with torch.no_grad():
        qmodel.frozen_numerics()            # the saved float layers match what was trained
    print(f"test accuracy on {len(data.x_test)} inputs: pruned float {before:.2%}, "
          f"{args.encoding} before fine-tuning {start:.2%}, after {args.epochs} epochs of "
          f"quantisation-aware fine-tuning {after:.2%} (what the device computes)")
    return qmodel


def run_prune(args):
    import torch

    from ..prune import pattern_info, prunable_layers, prune, smartdeal_cprime
    model = load_model(args.model, args)
    data = None
    if args.finetune is not None:       # bad data or options fail before any pruning
        if args.epochs < 1 or not args.lr > 0:
            raise GsaccelError(f"--epochs must be at least 1 and --lr positive, not "
                               f"{args.epochs} and {args.lr}")
        data = load_finetune_data(args.finetune)
    output = Path(args.output)
    if output.is_dir():
        raise GsaccelError(f"{output}: is a directory; give a file name for the pruned model")
    options = {"c_pattern": args.c_pattern} if args.pattern == "smartdeal" else {}
    skipped = []        # grouped convs that cannot take the pattern stay dense, with a note
    prune(model, args.pattern, args.sparsity, args.lanes, args.per_row,
          exclude=args.exclude, skipped=skipped, **options)
    skipped = dict(skipped)
    total = kept = 0
    for name, module in prunable_layers(model):
        info = pattern_info(module)
        weight = module.weight.detach().reshape(module.weight.shape[0], -1).numpy()
        if info is None:
            if name in skipped:
                reason = skipped[name].removeprefix(f"Layer {name}: ")
                print(f"{name}: {weight.shape[0]}x{weight.shape[1]} dense (skipped, a grouped "
                      f"convolution: {reason})")
            else:
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
    if args.finetune is not None:
        model = _finetune(model, data, args)
    with writing(output, "pruned model"):
        output.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.save(model, output)
        except RuntimeError as error:          # torch reports a file it cannot open so
            raise GsaccelError(f"{output}: cannot write the pruned model: "
                               f"{str(error).splitlines()[0]}") from None
    print(f"saved {output}")
