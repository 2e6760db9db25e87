"""Run a torch model on the accelerator with the calling code unchanged.

>>> import torch
>>> model = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
>>> x = torch.randn(16, 12, generator=torch.Generator().manual_seed(0))
>>> fast = offload(model, target="golden", example_input=x)
>>> fast(x).shape, fast(x).dtype
(torch.Size([16, 3]), torch.float32)
"""

import logging

import numpy as np

from ..compile import compile
from ..errors import ShapeError
from .targets import connect

__all__ = ["offload", "OffloadedModel"]

logger = logging.getLogger(__name__)


def _module_base():
    from torch import nn
    return nn.Module


class OffloadedModel(_module_base()):
    """An ``nn.Module`` whose forward runs a compiled :class:`Program` on a device.

    ``forward`` takes a float tensor ``(N,) + input_shape`` (or one input without the batch
    axis) and returns the dequantised float32 outputs on the input's torch device. Inputs are
    sent one at a time: each is written into the program's input tensor, every layer runs,
    and the output tensor is read back.

    Attributes
    ----------
    program : Program
    device : Accelerator
    """

    def __init__(self, program, device):
        super().__init__()
        self.program = program
        self.device = device

    def forward(self, x):
        import torch
        array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        shape = self.program.input_shape
        if array.shape != shape and array.shape[1:] != shape:
            raise ShapeError(f"Input must have shape {shape} or (N, "
                             f"{', '.join(map(str, shape))}), not {tuple(array.shape)}")
        y = torch.from_numpy(np.ascontiguousarray(self.device.infer(array)))
        return y.to(x.device) if isinstance(x, torch.Tensor) else y

    @property
    def counters(self):
        """Counters of the last forward, summed over its inputs."""
        return self.device.counters

    def close(self):
        self.device.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def offload(model, target="sim", example_input=None, *, lanes=8, encoding="pow2", cfg=None,
            board=None, **connect_options):
    """Compile ``model``, load it on ``target`` and return a module that runs it there.

    Parameters
    ----------
    model : torch.nn.Module
    target : str
        ``golden``, ``sim`` or ``serial:PORT[@BAUD]`` (see :func:`gsaccel.sw.runtime.targets.connect`).
    example_input : tensor (N, ...)
        Calibration batch for the activation scales (required).
    lanes, encoding, cfg
        As for :func:`gsaccel.sw.compile.compile`. For a board, ``cfg`` defaults to the
        board's own configuration (asked with HELLO).
    board : str, optional
        Compile for this board's default core (``icebreaker``, ``ulx3s-85f``,
        ``orangecrab``): on ``sim``, the RTL of that board's core runs.
    **connect_options
        ``timeout``, ``retries``.
    """
    if example_input is None:
        raise ShapeError("Example input must be a calibration batch (N, ...), not None")
    if board is not None:
        if cfg is not None:
            raise ShapeError(f"Give a board or a cfg, not both (board {board!r}, cfg {cfg})")
        from ...boards.catalog import get_board
        cfg = get_board(board).config
    if cfg is None and target.startswith("serial:"):
        device = connect(target, **connect_options)
        cfg = device.config
    else:
        device = None
    try:
        program = compile(model, example_input, lanes=lanes if cfg is None else cfg.lanes,
                          encoding=encoding if cfg is None else cfg.encoding, cfg=cfg)
        if device is None:
            device = connect(target, program=program, **connect_options)
        device.load(program)
    except BaseException:
        if device is not None:
            device.close()
        raise
    return OffloadedModel(program, device)
