"""Aliases for module names of earlier releases.

Before the host side was split into sub-packages by job, ``gsaccel.sw`` was one flat folder
(``gsaccel.sw.compiler``, ``gsaccel.sw.targets``, ...). Those names still import, as the
modules that took their place, so that user code and models pickled with ``torch.save``
before the move keep loading.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__all__ = ["MOVED_MODULES"]

#: Old module -> the module that holds its contents now.
MOVED_MODULES = {
    "gsaccel.sw.compiler":          "gsaccel.sw.compile.compiler",
    "gsaccel.sw.image":             "gsaccel.sw.compile.image",
    "gsaccel.sw.program":           "gsaccel.sw.compile.program",
    "gsaccel.sw.protocol":          "gsaccel.sw.runtime.protocol",
    "gsaccel.sw.transport":         "gsaccel.sw.runtime.transport",
    "gsaccel.sw.serial_transport":  "gsaccel.sw.runtime.serial",
    "gsaccel.sw.device":            "gsaccel.sw.runtime.device",
    "gsaccel.sw.targets":           "gsaccel.sw.runtime.targets",
    "gsaccel.sw.offload":           "gsaccel.sw.runtime.offload",
    "gsaccel.sw.cmd_format":        "gsaccel.sw.cli.format",
    "gsaccel.sw.cmd_prune":         "gsaccel.sw.cli.prune",
    "gsaccel.sw.cmd_board":         "gsaccel.sw.cli.board",
    "gsaccel.sw.cmd_verilog":       "gsaccel.sw.cli.verilog",
    "gsaccel.sw.cmd_runtime":       "gsaccel.sw.cli.runtime",
    "gsaccel.sw.cmd_demo":          "gsaccel.sw.cli.demo",
    "gsaccel.sw.cmd_bench":         "gsaccel.sw.cli.bench",
    "gsaccel.sw.cli_docs":          "gsaccel.sw.cli.docs",
    "gsaccel.sw.bench_hw":          "gsaccel.sw.bench.hw",
    "gsaccel.sw.bench_boards":      "gsaccel.sw.bench.boards",
    "gsaccel.sw.bench_pruning":     "gsaccel.sw.bench.pruning",
    "gsaccel.sim.verilator_transport": "gsaccel.sw.runtime.verilator",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as the module that replaced it (the same module object,
    so classes pickled under the old name unpickle as today's classes)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        module = importlib.import_module(MOVED_MODULES[spec.name])
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module):
        # Already executed under its new name. The import system has just rebound the
        # module's __spec__ to the alias: give it back its own, or its relative imports
        # resolve against the alias's package.
        module.__spec__ = module.__spec__.loader_state


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())
