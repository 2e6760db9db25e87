"""gsaccel: sparse neural-network inference on an open FPGA core.

The distribution maps its top-level folders into one namespace: ``gsaccel.hw`` (gateware),
``gsaccel.sw`` (host side), ``gsaccel.sim`` (simulation harnesses) and ``gsaccel.boards``.
"""

__version__ = "0.1.0"
