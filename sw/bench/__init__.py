"""``gsaccel bench``: benchmarks that measure the RTL, the pruners and the board builds and
write tables and plots (one module per benchmark, each with a ``run`` function).

Layer: above :mod:`gsaccel.sw.runtime` and :mod:`gsaccel.boards`; below :mod:`gsaccel.sw.cli`.
"""
