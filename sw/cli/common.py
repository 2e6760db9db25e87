"""What the commands share: their common options, loading the files they read (with one-line
typed errors that name the file), and the console they print tables to."""

from pathlib import Path

import numpy as np

from ..errors import FormatError

__all__ = ["add_lanes", "add_encoding", "add_target", "load_model", "load_array", "console"]


# Options ----------------------------------------------------------------------------------------

def add_lanes(parser):
    """``--lanes V`` (default 8): the core's lane count, one group's width."""
    parser.add_argument("--lanes", metavar="V", type=int, default=8,
                        help="lanes of the core (weights per group): 2, 4, 8 or 16 "
                             "(default: %(default)s)")


def add_encoding(parser):
    """``--encoding ENC`` (default pow2): the weight code."""
    from ..format import ENCODINGS
    parser.add_argument("--encoding", metavar="ENC", choices=ENCODINGS, default="pow2",
                        help="weight encoding: pow2 or int8 (default: %(default)s)")


def add_target(parser, default, note=""):
    """``--target T``: where a program runs (:data:`gsaccel.sw.runtime.targets.TARGETS`)."""
    from ..runtime.targets import TARGETS
    parser.add_argument("--target", metavar="T", default=default,
                        help=f"one of {', '.join(TARGETS)}{note} (default: %(default)s)")


# Files ------------------------------------------------------------------------------------------

def load_model(path):
    """A whole ``nn.Module`` saved with ``torch.save(model, path)``.

    It is loaded on the CPU with ``weights_only=False``: the file is a pickle, so its classes
    must be importable and it must come from a source you trust.

    Raises
    ------
    FormatError
        If the file is missing, is not a torch file, or holds something other than a module
        (a state_dict, say).
    """
    import torch
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such model file")
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:      # torch.load raises many types for a non-torch file
        raise FormatError(f"{path}: not a torch model file ({type(error).__name__}: "
                          f"{error})") from None
    if not isinstance(model, torch.nn.Module):
        raise FormatError(f"{path}: must hold a whole nn.Module (torch.save(model, ...)), "
                          f"not a {type(model).__name__}")
    return model


def load_array(path, what):
    """A ``.npy`` array (no pickles); ``what`` names it in the errors. A missing file, or one
    that is not a ``.npy`` array, is a :class:`~gsaccel.sw.errors.FormatError`."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such {what} file")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise FormatError(f"{path}: not a .npy array ({error})") from None


# Output -----------------------------------------------------------------------------------------

def console():
    """A rich console; written to a log or a pipe, it is wide enough for whole tables."""
    from rich.console import Console
    out = Console()
    if not out.is_terminal:
        out.width = max(out.width, 120)
    return out
