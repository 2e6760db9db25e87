"""Shared pytest set-up: the seeded random generator every randomised test uses."""

import os

import numpy as np
import pytest

DEFAULT_SEED = 20261125


@pytest.fixture
def rng(request):
    """A generator seeded from GSACCEL_SEED (fixed default) and the test's name.

    The seed is printed, so a failing test's captured output says how to reproduce it.
    """
    seed = int(os.environ.get("GSACCEL_SEED", str(DEFAULT_SEED)), 0)
    print(f"GSACCEL_SEED={seed} ({request.node.nodeid})")
    return np.random.default_rng([seed, *request.node.nodeid.encode()])
