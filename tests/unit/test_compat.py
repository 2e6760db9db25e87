"""Module names of the flat ``gsaccel.sw`` of earlier releases keep importing, and models
pickled under those names keep loading."""

import importlib

import pytest
import torch

from gsaccel._compat import MOVED_MODULES
from gsaccel.sw.models import DigitsMLP
from gsaccel.sw.prune import pattern_info, prune


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_old_module_names_import_as_their_replacements(old):
    module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED_MODULES[old])
    # The module keeps its own spec, so its function-level relative imports still resolve
    # (warnings are errors in this suite: a wrong __spec__ raises ImportWarning).
    assert module.__spec__.name == MOVED_MODULES[old]
    exec("from .. import errors", module.__dict__)


def test_a_model_saved_before_the_move_still_loads(tmp_path):
    torch.manual_seed(0)
    model = DigitsMLP()
    prune(model, "gs-gather", 0.75, lanes=8)
    # The legacy (non-zip) format keeps the pickle as it is on disk, so the class path can be
    # rewritten to the one the flat layout wrote. (Only the model class is gsaccel's: pruning
    # leaves torch.nn.utils.prune hooks and plain buffers.)
    path = tmp_path / "model.pt"
    torch.save(model, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    new = DigitsMLP.__module__.encode() + b"\n"
    assert new in data and new != b"gsaccel.sw.models\n"
    data = data.replace(new, b"gsaccel.sw.models\n")
    assert b"gsaccel.sw.models.digits" not in data and b"cgsaccel.sw.models\nDigitsMLP\n" in data
    path.write_bytes(data)

    loaded = torch.load(path, weights_only=False)
    x = torch.rand(5, 1, 8, 8)
    assert type(loaded) is DigitsMLP
    assert [pattern_info(m) for m in loaded.modules()] == [pattern_info(m) for m in model.modules()]
    assert torch.equal(loaded(x), model(x))
