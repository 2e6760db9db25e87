"""What the fuzzers share (not a test module): the memory a parser allocates per input."""

import tracemalloc

from gsaccel.sw.errors import FormatError


def peak_allocations(parse, inputs):
    """Yield ``(data, peak bytes)``: what tracemalloc (numpy's buffers included) sees
    ``parse(data)`` allocate at most, for each of ``inputs``; a FormatError is an answer."""
    tracemalloc.start()
    try:
        for data in inputs:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            try:
                parse(data)
            except FormatError:
                pass
            yield data, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
