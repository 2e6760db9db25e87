"""What the commands share: their common options, loading the files they read and writing
the files they make (with one-line typed errors that name the file), and the console they
print tables to."""

from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import FormatError, GsaccelError, ShapeError

__all__ = ["add_lanes", "add_encoding", "add_target", "add_model_options", "zoo_models",
           "load_model", "load_array", "check_array", "output_path", "writing", "finite_json",
           "console"]


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

def zoo_models():
    """``{name: class}`` of the architectures ``--zoo`` builds (the digits models and the
    MLPerf Tiny networks)."""
    from ..models import TINY_MODELS, DigitsCNN, DigitsMLP
    return {"digits-mlp": DigitsMLP, "digits-cnn": DigitsCNN,
            **{name: cls for name, (cls, _) in TINY_MODELS.items()}}


def add_model_options(parser):
    """``--import MODULE`` and ``--zoo NAME``: how :func:`load_model` finds a model's class."""
    parser.add_argument("--import", metavar="MODULE", dest="imports", action="append",
                        default=[],
                        help="import this module (a dotted name, found from the current folder "
                             "too, or a .py file) before loading, so that the model's class "
                             "can be unpickled; repeatable")
    parser.add_argument("--zoo", metavar="NAME", choices=sorted(zoo_models()),
                        help=f"the file holds a state_dict of this architecture: "
                             f"{', '.join(sorted(zoo_models()))} (default: a whole nn.Module)")


def _import(name):
    import importlib
    import importlib.util
    import sys
    if name.endswith(".py"):
        path = Path(name)
        if not path.is_file():
            raise FormatError(f"--import {name}: no such Python file")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module       # pickles name the class by its module
        try:
            spec.loader.exec_module(module)
        except Exception as error:            # the user's module raises what it raises
            del sys.modules[path.stem]
            raise FormatError(f"--import {name}: importing it failed ({type(error).__name__}: "
                              f"{error})") from None
        return
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -c` would find it
    try:
        importlib.import_module(name)
    except Exception as error:
        raise FormatError(f"--import {name}: cannot import it ({type(error).__name__}: "
                          f"{error}); give a module importable from here or a .py file") \
            from None


def load_model(path, args=None):
    """A whole ``nn.Module`` saved with ``torch.save(model, path)``, or a state_dict of a
    ``--zoo`` architecture (pruned ones included).

    It is loaded on the CPU with ``weights_only=False``: the file is a pickle, so its classes
    must be importable (``--import MODULE`` imports the one defining them) and it must come
    from a source you trust. ``args`` carries ``imports`` and ``zoo``
    (:func:`add_model_options`); without them, neither is used.

    Raises
    ------
    FormatError
        If the file is missing, is not a torch file, names a class that cannot be imported,
        or holds something other than a module (a state_dict without ``--zoo``, say); each
        message says what to pass.
    """
    import torch
    imports, zoo = getattr(args, "imports", None) or [], getattr(args, "zoo", None)
    path = Path(path)
    if path.is_dir():
        raise FormatError(f"{path}: is a directory, not a model file")
    if not path.is_file():
        raise FormatError(f"{path}: no such model file")
    for name in imports:
        _import(name)
    names = ", ".join(sorted(zoo_models()))
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as error:
        # The pickle names a class this process cannot find.
        raise FormatError(f"{path}: the model's class cannot be imported ({type(error).__name__}"
                          f": {error}); pass --import MODULE (the module or .py file that "
                          f"defines it), or save model.state_dict() and pass --zoo NAME "
                          f"({names})") from None
    except Exception as error:      # torch.load raises many types for a non-torch file
        raise FormatError(f"{path}: not a torch model file ({type(error).__name__}: "
                          f"{error})") from None
    state_dict = isinstance(model, dict) and bool(model) and all(
        isinstance(value, torch.Tensor) for value in model.values())
    if state_dict and zoo is not None:
        from ..prune import restore
        fresh = zoo_models()[zoo]()
        try:
            return restore(fresh, model).eval()
        except (RuntimeError, KeyError, ValueError) as error:
            first = str(error).strip().splitlines()[0]
            raise FormatError(f"{path}: not a state_dict of --zoo {zoo} ({first})") from None
    if state_dict:
        raise FormatError(f"{path}: holds a state_dict, not a whole nn.Module; pass --zoo NAME "
                          f"if it is one of {names}, or save the whole model with "
                          f"torch.save(model, path)")
    if not isinstance(model, torch.nn.Module):
        raise FormatError(f"{path}: must hold a whole nn.Module (torch.save(model, ...)), "
                          f"not a {type(model).__name__}")
    if zoo is not None:
        raise FormatError(f"{path}: holds a whole {type(model).__name__}, not a state_dict; "
                          f"drop --zoo")
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
