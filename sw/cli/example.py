"""``gsaccel example``: the files the README's tour runs on, made from nothing.

It writes, into one folder: ``model.pt`` (the digits MLP, trained for a few epochs — a whole
``nn.Module`` whose class ships with gsaccel, so every command can load it), ``x.npy`` and
``y.npy`` (digits test images and labels), ``W.npy`` (an integer matrix already in the form
``gsaccel pack`` takes: pruned GS-gather for V lanes and rounded to signed powers of two),
and ``resnet8.pt`` (the MLPerf Tiny ResNet-8 topology, untrained) with ``images.npy``.
"""

from pathlib import Path

import numpy as np

from ..errors import GsaccelError

__all__ = ["register", "write_example"]


def register(subparsers):
    from .main import add_command
    example = add_command(
        subparsers, "example",
        help="write a small trained model, inputs and a packable matrix to try every command on",
        description="Write the files the README's tour uses into DIR: model.pt (the digits "
                    "MLP, trained a few epochs), x.npy / y.npy (digits test images and labels), "
                    "W.npy (a 64x96 integer matrix pruned gs-gather for V lanes and rounded to "
                    "signed powers of two: what `gsaccel pack --weights` takes), resnet8.pt "
                    "(the MLPerf Tiny ResNet-8, untrained) and images.npy (32x32 RGB inputs "
                    "for it).",
        example="gsaccel example tour && cd tour && gsaccel prune model.pt --pattern "
                "gs-gather --sparsity 0.75 -o pruned.pt")
    example.add_argument("folder", metavar="DIR", help="folder to write (made if missing)")
    example.add_argument("--lanes", metavar="V", type=int, default=8,
                         help="lanes the matrix W.npy is pruned for")
    example.add_argument("--epochs", metavar="N", type=int, default=8,
                         help="training epochs of the digits MLP")
    example.set_defaults(func=run)


def write_example(folder, *, lanes=8, epochs=8, seed=0):
    """Write the tour's files into ``folder``; return ``{name: path}``."""
    import torch
    from ..format import pow2_round
    from ..models import DigitsMLP, digits_data, evaluate, train
    from ..models.tiny import tiny_model
    from ..prune import gs_mask
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GsaccelError(f"{folder}: cannot make the folder ({error.strerror})") from None
    if not folder.is_dir():
        raise GsaccelError(f"{folder}: not a folder")
    data = digits_data(seed)
    torch.manual_seed(seed)
    model = DigitsMLP()
    train(model, data, epochs, seed=seed)
    paths = {name: folder / name for name in ("model.pt", "x.npy", "y.npy", "W.npy",
                                              "resnet8.pt", "images.npy")}
    torch.save(model.eval(), paths["model.pt"])
    np.save(paths["x.npy"], data.x_test[:64].numpy().astype(np.float32))
    np.save(paths["y.npy"], data.y_test[:64].numpy().astype(np.int64))
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((64, 96)) * 8
    mask, _ = gs_mask(weights, 0.75, lanes, 1)
    np.save(paths["W.npy"], np.where(mask, pow2_round(weights), 0).astype(np.int64))
    torch.save(tiny_model("resnet8", seed=seed), paths["resnet8.pt"])
    np.save(paths["images.npy"], rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    return paths, evaluate(model, data)


def run(args):
    from .common import console
    paths, accuracy = write_example(args.folder, lanes=args.lanes, epochs=args.epochs)
    out = console()
    out.print(f"wrote {', '.join(str(p) for p in paths.values())}", soft_wrap=True)
    out.print(f"model.pt: the digits MLP, {accuracy:.1%} test accuracy; next: gsaccel prune "
              f"{paths['model.pt']} --pattern gs-gather --sparsity 0.75 -o pruned.pt",
              soft_wrap=True)
    return 0
