"""Set-up the host-side unit tests share."""

import pytest


@pytest.fixture
def one_thread():
    """One torch and one BLAS thread: the two cores are shared, and oversubscribed threads
    make the many small convolutions and solves of compilation several times slower."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
    else:
        with threadpool_limits(1):
            yield
    torch.set_num_threads(threads)

