"""``gsaccel sweep``: design-space exploration over models, cores, patterns and sparsities.

Each point (a model pruned and compiled for one core, measured; optionally run on the RTL) and
each distinct core build is a task run on Ray (:mod:`.runners`; a local instance, or a
cluster) or a local process pool; finished tasks are cached by a key over their inputs and
the code behind them (:mod:`.spec`), and the table marks the Pareto front (:mod:`.results`).

>>> spec = make_spec({"lanes": [4, 8], "sparsity": [0.5, 0.75]}, {"rtl": False})
>>> len(spec.points())
4
"""

from .driver import SweepResult, run_sweep
from .results import OBJECTIVES, mark_pareto, pareto_front
from .spec import AXES, SETTINGS, Point, SpecError, SweepSpec, load_spec, make_spec

__all__ = ["run_sweep", "SweepResult", "SweepSpec", "Point", "SpecError", "load_spec",
           "make_spec", "pareto_front", "mark_pareto", "OBJECTIVES", "AXES", "SETTINGS"]
