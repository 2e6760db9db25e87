"""What the commands share: their common options, loading the files they read and writing
the files they make (with one-line typed errors that name the file), and the console they
print tables to."""

from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import FormatError, GsaccelError, ShapeError

__all__ = ["add_lanes", "add_encoding", "add_target", "load_model", "load_array",
           "check_array", "output_path", "writing", "finite_json", "console"]


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
    if path.is_dir():
        raise FormatError(f"{path}: is a directory, not a model file")
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
    """A numeric ``.npy`` array (no pickles); ``what`` names it in the errors.

    Raises
    ------
    FormatError
        A missing file, a directory, a file that is not a ``.npy`` array (a ``.npz`` archive,
        say), or an array of something other than numbers (strings, say).
    ShapeError
        An empty array, NaN or infinity in it, or an unsigned value beyond int64
        (:func:`check_array`).
    """
    path = Path(path)
    if path.is_dir():
        raise FormatError(f"{path}: is a directory, not a {what} file")
    if not path.is_file():
        raise FormatError(f"{path}: no such {what} file")
    _check_npy_header(path, what)
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as error:          # np.load raises many types for a damaged file
        raise FormatError(f"{path}: not a .npy array ({type(error).__name__}: "
                          f"{error})") from None
    return check_array(array, what, path)


def _check_npy_header(path, what):
    """FormatError unless ``path`` starts with a ``.npy`` header whose shape and dtype are the
    bytes that follow it: checked before ``np.load`` allocates what the header asks for."""
    from numpy.lib import format as npy
    try:
        with open(path, "rb") as file:
            if file.read(4) == b"PK\x03\x04":
                raise FormatError(f"{path}: a .npz archive, not a .npy array; save the {what} "
                                  f"with np.save")
            file.seek(0)
            version = npy.read_magic(file)
            read = npy.read_array_header_1_0 if version == (1, 0) else \
                npy.read_array_header_2_0
            shape, _, dtype = read(file)
            data = path.stat().st_size - file.tell()
    except FormatError:
        raise
    except Exception as error:          # a damaged header: many types again
        raise FormatError(f"{path}: not a .npy array ({type(error).__name__}: "
                          f"{error})") from None
    if dtype.hasobject:
        raise FormatError(f"{path}: an array of Python objects (a pickle), not of numbers")
    size = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if size != data:
        raise FormatError(f"{path}: truncated or padded: its .npy header promises "
                          f"{size} bytes of data ({dtype} {shape}), the file holds {data}")


def check_array(array, what, source=None):
    """``array`` if it is a non-empty array of finite numbers (bool, int, or float; unsigned
    values within int64): what every command reads as weights, inputs or labels. Else a
    :class:`FormatError` (not numbers) or :class:`ShapeError` naming ``source`` and ``what``."""
    name = f"{source}: {what}" if source is not None else what.capitalize()
    kind = array.dtype.kind
    if kind not in "biuf":
        raise FormatError(f"{name} must be an array of numbers, not dtype {array.dtype}")
    if array.size == 0:
        raise ShapeError(f"{name} is empty (shape {array.shape})")
    if kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ShapeError(f"{name} holds {int(bad.sum())} NaN or infinite values, the "
                             f"first {array[index]} at {index}")
    if kind == "u" and array.max() > np.iinfo(np.int64).max:
        index = tuple(int(i) for i in np.argwhere(array > np.iinfo(np.int64).max)[0])
        raise ShapeError(f"{name} holds {array[index]} at {index}, beyond the int64 range")
    return array


def output_path(path, what):
    """``path`` as a :class:`~pathlib.Path` a command may write ``what`` to: not a directory,
    in a folder that exists; else a one-line :class:`GsaccelError`."""
    path = Path(path)
    if path.is_dir():
        raise GsaccelError(f"{path}: is a directory; give a file name for the {what}")
    if not path.parent.is_dir():
        raise GsaccelError(f"{path}: no such folder {str(path.parent)!r} for the {what}")
    return path


@contextmanager
def writing(path, what):
    """Turn an OS error while writing ``what`` to ``path`` into a one-line
    :class:`GsaccelError`."""
    try:
        yield
    except OSError as error:
        raise GsaccelError(f"{path}: cannot write the {what}: "
                           f"{error.strerror or error}") from None


def finite_json(value):
    """``value`` with every NaN or infinite float as None (JSON null), so that ``json.dump``
    writes standard JSON (no ``Infinity``)."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# Output -----------------------------------------------------------------------------------------

def console():
    """A rich console; written to a log or a pipe, it is wide enough for whole tables."""
    from rich.console import Console
    out = Console()
    if not out.is_terminal:
        out.width = max(out.width, 120)
    return out
