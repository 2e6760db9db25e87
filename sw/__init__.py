"""The host side of gsaccel, one sub-package per job; imports point down only::

    cli        the ``gsaccel`` command (one module per group of subcommands)
    bench      benchmarks: RTL cycles, pruning, board builds
    demo       the digits flow that ``make demo`` runs
    runtime    protocol, transports, Device, targets, offload
    compile    torch.fx lowering, quantisation, packing, device image, .gsp program
    prune      GS / 1xN / SmartDeal / unstructured pruning (torch)
    models     the model zoo (digits proxies)
    golden     the bit-exact numpy model and the cycle model
    format     GSMatrix, the .gsf file, weight codes, memory-word codec
    errors     typed errors (the bottom)

docs/architecture.md has the whole map, :mod:`gsaccel.sim` and :mod:`gsaccel.boards`
included.

The flat module names of earlier releases (``gsaccel.sw.compiler``, ``gsaccel.sw.targets``,
...) still import: :mod:`gsaccel._compat` maps them to the modules that took their place.
"""

__all__ = []
