"""A compiled program: device layers plus what the host needs to feed and read them.

A :class:`Program` is what :func:`gsaccel.sw.compile.compile` produces and every target runs:
the :class:`~gsaccel.sw.compile.image.LayerSpec` list, the :class:`CoreConfig` it was compiled for,
how to quantise inputs (a power-of-two scale) and where the outputs land.

``.gsp`` file layout (all integers little-endian)::

    magic   4 bytes  b"GSP\\x1a"
    version u16      GSP_VERSION
    hlen    u32      length of the JSON header
    header  hlen     UTF-8 JSON: config, shapes, scales, per-layer fields and the byte ranges
                     of each layer's .gsf matrix and int64 bias inside the payload
    plen    u32      payload length
    payload plen     the concatenated .gsf images and biases
    crc     u32      zlib.crc32 of everything before it

Anything truncated, corrupt, of another version or not a program raises
:class:`~gsaccel.sw.errors.FormatError`.
"""

import dataclasses
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...hw.config import CoreConfig
from ..errors import FormatError, ShapeError
from ..format import GSMatrix, check_head, check_sealed, seal
from ..golden import basis_layer, dequantize, gs_layer, quantize
from .image import LayerSpec, build_image

__all__ = ["Program", "GSP_MAGIC", "GSP_VERSION"]

GSP_MAGIC = b"GSP\x1a"
GSP_VERSION = 1
_PREFIX = struct.Struct("<4sHI")


@dataclass
class Program:
    """Device layers and the host-side contract around them.

    Attributes
    ----------
    cfg : CoreConfig
        The core the program was compiled for.
    layers : list of LayerSpec
        Executed in order by one RUN; activations alternate between buffers 0 and 1.
    input_shape : tuple of int
        Shape of one input (without the batch axis).
    input_scale_log2 : int
        A float input ``x`` is sent as ``quantize(x, input_scale_log2)`` (int8 of
        ``x / 2**input_scale_log2``, rounded half up, saturated).
    output_shape : tuple of int
        Shape of one output.
    output_scale_log2 : int
        The int8 outputs ``q`` mean ``q * 2**output_scale_log2``.
    input_size : int
        Elements written per input: the flattened input, zero-padded (a SmartDeal first
        layer reads whole 3-element chunks).
    output_offset : int
        First output element in the last layer's destination buffer.
    info : list of dict
        Per layer, for reports: ``name``, ``op`` (the torch op), ``scale_log2`` of its
        output, ``weight_scale_log2``, ``pattern``, ``float_index`` (which entry of the
        compiler's float reference it matches, or None).
    """

    cfg: CoreConfig
    layers: list
    input_shape: tuple
    input_scale_log2: int
    output_shape: tuple
    output_scale_log2: int
    input_size: int = None
    output_offset: int = 0
    info: list = field(default_factory=list)

    def __post_init__(self):
        self.input_shape = tuple(int(n) for n in self.input_shape)
        self.output_shape = tuple(int(n) for n in self.output_shape)
        if not self.layers:
            raise ShapeError("Program must have at least one layer, not 0")
        if self.input_size is None:
            self.input_size = self.n_inputs
        if self.input_size < self.n_inputs:
            raise ShapeError(f"Input size must be at least {self.n_inputs}, "
                             f"not {self.input_size}")

    # Shapes and buffers -----------------------------------------------------------------
    @property
    def n_inputs(self):
        return int(np.prod(self.input_shape))

    @property
    def n_outputs(self):
        return int(np.prod(self.output_shape))

    @property
    def input_buffer(self):
        return self.layers[0].src

    @property
    def output_buffer(self):
        return self.layers[-1].dst

    # Host-side numerics -----------------------------------------------------------------
    def quantize_input(self, x):
        """int8 ``(N, input_size)`` of float inputs ``(N,) + input_shape``."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape[1:] != self.input_shape:
            raise ShapeError(f"Inputs must have shape (N, {', '.join(map(str, self.input_shape))})"
                             f", not {x.shape}")
        q = quantize(x.reshape(len(x), -1), self.input_scale_log2)
        if self.input_size > self.n_inputs:
            q = np.pad(q, ((0, 0), (0, self.input_size - self.n_inputs)))
        return q

    def dequantize_output(self, q):
        """float32 ``(N,) + output_shape`` of int8 outputs ``(N, n_outputs)``."""
        q = np.asarray(q)
        return dequantize(q, self.output_scale_log2).astype(np.float32).reshape(
            (len(q),) + self.output_shape)

    def trace_quantized(self, xq):
        """Every layer's int8 output for one quantised input, by the golden kernels.

        Returns a list of int8 vectors (layer ``i``'s ``out_size`` elements, in element
        order). These are the values the core writes to each layer's destination buffer.
        """
        x = np.zeros(self.cfg.buffer_size, dtype=np.int64)
        x[:len(xq)] = xq
        buffers = {self.input_buffer: x}
        outputs = []
        for spec in self.layers:
            src = buffers.get(spec.src, np.zeros(self.cfg.buffer_size, dtype=np.int64))
            if spec.kind == "basis":
                y = basis_layer(spec.basis, src, spec.n_chunks, spec.shift, spec.relu,
                                self.cfg.acc_width)
            else:
                y = gs_layer(spec.matrix, src, spec.bias, spec.shift, spec.relu,
                             self.cfg.acc_width)
            dst = buffers.get(spec.dst, np.zeros(self.cfg.buffer_size, dtype=np.int64)).copy()
            dst[:len(y)] = y
            buffers[spec.dst] = dst
            outputs.append(np.asarray(y, dtype=np.int8))
        return outputs

    def run_golden(self, x):
        """Float outputs of float inputs by the golden kernels (no device image involved)."""
        xq = self.quantize_input(np.asarray(x))
        out = np.stack([self.trace_quantized(row)[-1][self.output_offset:][:self.n_outputs]
                        for row in xq])
        return self.dequantize_output(out)

    # Device image and statistics --------------------------------------------------------
    def image(self):
        """The :class:`~gsaccel.sw.compile.image.DeviceImage` a target loads."""
        return build_image(self.cfg, self.layers)

    def stats(self):
        """Weight bytes, nonzeros, groups and the golden cycle count of one inference."""
        from ..golden import RUN_OVERHEAD, basis_layer_cycles, gs_layer_cycles
        nnz = groups = busy = 0
        weight_bytes = 0
        cycles = RUN_OVERHEAD
        for spec in self.layers:
            if spec.kind == "basis":
                cycles += basis_layer_cycles(spec.n_chunks, self.cfg)
                weight_bytes += 9
                continue
            m = spec.matrix
            nnz += m.nnz
            groups += m.n_groups
            busy += m.nnz
            weight_bytes += len(m.to_bytes())
            cycles += gs_layer_cycles(m.rg_groups, m.segments, self.cfg)[0]
        return {"layers": len(self.layers), "nnz": nnz, "groups": groups,
                "weight_bytes": weight_bytes, "cycles": cycles,
                "utilisation": busy / (self.cfg.lanes * groups) if groups else 0.0}

    # Files ------------------------------------------------------------------------------
    def to_bytes(self):
        """The ``.gsp`` file image."""
        payload = bytearray()
        layers = []
        for spec in self.layers:
            entry = {"kind": spec.kind, "shift": int(spec.shift), "relu": bool(spec.relu),
                     "src": int(spec.src), "dst": int(spec.dst), "name": spec.name,
                     "n_chunks": int(spec.n_chunks)}
            if spec.kind == "basis":
                entry["basis"] = np.asarray(spec.basis, dtype=np.int64).ravel().tolist()
            else:
                matrix = spec.matrix.to_bytes()
                entry["matrix"] = [len(payload), len(matrix)]
                payload += matrix
                if spec.bias is not None:
                    bias = np.asarray(spec.bias, dtype="<i8").tobytes()
                    entry["bias"] = [len(payload), len(bias)]
                    payload += bias
            layers.append(entry)
        header = {"cfg": dataclasses.asdict(self.cfg), "input_shape": list(self.input_shape),
                  "input_scale_log2": int(self.input_scale_log2),
                  "output_shape": list(self.output_shape),
                  "output_scale_log2": int(self.output_scale_log2),
                  "input_size": int(self.input_size), "output_offset": int(self.output_offset),
                  "info": self.info, "layers": layers}
        header = json.dumps(header, sort_keys=True).encode()
        body = (_PREFIX.pack(GSP_MAGIC, GSP_VERSION, len(header)) + header
                + struct.pack("<I", len(payload)) + bytes(payload))
        return seal(body)

    @classmethod
    def from_bytes(cls, data, *, source="data"):
        """Parse a ``.gsp`` image."""
        data = bytes(data)
        check_head(data, source, "gsaccel program", _PREFIX.size + 8, GSP_MAGIC, GSP_VERSION)
        _, _, hlen = _PREFIX.unpack_from(data)
        if _PREFIX.size + hlen + 8 > len(data):
            raise FormatError(f"{source}: truncated: header of {hlen} bytes does not fit "
                              f"{len(data)} bytes")
        (plen,) = struct.unpack_from("<I", data, _PREFIX.size + hlen)
        expected = _PREFIX.size + hlen + 4 + plen + 4
        check_sealed(data, expected, source)
        payload = data[_PREFIX.size + hlen + 4:expected - 4]
        try:
            header = json.loads(data[_PREFIX.size:_PREFIX.size + hlen])
            cfg = CoreConfig(**header["cfg"])
            layers = []
            for index, entry in enumerate(header["layers"]):
                spec = LayerSpec(kind=entry["kind"], shift=entry["shift"], relu=entry["relu"],
                                 src=entry["src"], dst=entry["dst"], name=entry["name"],
                                 n_chunks=entry["n_chunks"])
                if spec.kind == "basis":
                    spec.basis = np.asarray(entry["basis"], dtype=np.int64).reshape(3, 3)
                else:
                    start, length = entry["matrix"]
                    spec.matrix = GSMatrix.from_bytes(payload[start:start + length],
                                                      source=f"{source} layer {index}")
                    if "bias" in entry:
                        start, length = entry["bias"]
                        spec.bias = np.frombuffer(payload[start:start + length], dtype="<i8") \
                            .astype(np.int64)
                layers.append(spec)
            return cls(cfg=cfg, layers=layers, input_shape=tuple(header["input_shape"]),
                       input_scale_log2=header["input_scale_log2"],
                       output_shape=tuple(header["output_shape"]),
                       output_scale_log2=header["output_scale_log2"],
                       input_size=header["input_size"], output_offset=header["output_offset"],
                       info=header["info"])
        except FormatError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise FormatError(f"{source}: header does not describe a program ({error})") \
                from None

    def save(self, path):
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path):
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise FormatError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise FormatError(f"{path}: is a directory, not a program file") from None
        return cls.from_bytes(data, source=str(path))
