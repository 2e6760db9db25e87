"""gsaccel: sparse neural-network inference on an open FPGA core.

The distribution maps its top-level folders into one namespace: ``gsaccel.hw`` (gateware),
``gsaccel.sw`` (host side), ``gsaccel.sim`` (simulation harnesses) and ``gsaccel.boards``.

The user-facing API is re-exported here and imported on first use, so that ``import
gsaccel`` stays light (torch is loaded only by what needs it)::

    model = gsaccel.prune(model, pattern="gs-gather", sparsity=0.75, lanes=8)
    qmodel = gsaccel.quantize_aware(model, example_input, encoding="pow2", lanes=8)
    ...                                                         # fine-tune qmodel
    program = gsaccel.compile(qmodel, example_input, lanes=8)    # or board="ulx3s-85f"
    print(gsaccel.capacity(model, example_input, board="icebreaker"))
    with gsaccel.connect("sim") as device: ...
    accelerated = gsaccel.offload(model, target="sim", example_input=example_input)
"""

import importlib

from . import _compat  # noqa: F401  (old module names keep importing)

__version__ = "0.1.0"
__all__ = ["prune", "quantize_aware", "compile", "capacity", "connect", "offload", "CoreConfig", "GSMatrix"]

_EXPORTS = {
    "prune":      ("gsaccel.sw.prune", "prune"),
    "quantize_aware": ("gsaccel.sw.api", "quantize_aware"),
    "compile":    ("gsaccel.sw.api", "compile"),
    "capacity":   ("gsaccel.sw.api", "capacity"),
    "connect":    ("gsaccel.sw.runtime.targets", "connect"),
    "offload":    ("gsaccel.sw.runtime.offload", "offload"),
    "CoreConfig": ("gsaccel.hw.config", "CoreConfig"),
    "GSMatrix":   ("gsaccel.sw.format", "GSMatrix"),
}


def __getattr__(name):
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'gsaccel' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])
