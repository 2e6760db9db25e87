"""A compiled program: loop-nest device layers on planned tensors, and the host's contract
around them.

A :class:`Program` is what :func:`gsaccel.sw.compile.compile` produces and every target runs
(DESIGN §4): the activation tensors (their :class:`~gsaccel.sw.format.geometry.TensorGeometry`
in the scratchpad, bank address included), the device layers in execution order
(:class:`~gsaccel.sw.compile.layers.GSLayer` loop nests, ``BasisLayer``, ``ClearLayer``), the
:class:`CoreConfig` it was compiled for, how the host turns a float input into the input
tensor (transform, power-of-two scale) and reads the output tensor back.

``.gsp`` file layout (all integers little-endian)::

    magic   4 bytes  b"GSP\\x1a"
    version u16      GSP_VERSION
    hlen    u32      length of the JSON header
    header  hlen     UTF-8 JSON: config, tensors (shape, geometry, scale, producer, lifetime),
                     input (tensor, shape, geometry, scale, transform), output (tensor, shape,
                     geometry, scale), per-layer records with their loop nests and the byte
                     ranges of each GS layer's .gsf matrix and int64 bias in the payload, and
                     the per-layer report (``info``), and how many layers are setup
                     layers (``setup_layers``: run once, at load)
    plen    u32      payload length
    payload plen     the concatenated .gsf images and biases
    crc     u32      zlib.crc32 of everything before it

docs/format.md describes every field. Anything truncated, corrupt, of another version or not
a program raises :class:`~gsaccel.sw.errors.FormatError`.
"""

import dataclasses
import json
import math
import re
import struct
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...hw.config import ENCODINGS, CoreConfig
from ..errors import FormatError, GsaccelError, ShapeError
from ..format import GSMatrix, check_head, check_sealed, seal
from ..format.geometry import LoopNest, TensorGeometry, conv_output_size
from ..golden import (RUN_OVERHEAD, basis_layer_cycles, clear_layer_cycles,
                      dequantize, loop_layer_cycles, quantize, row_words, writer_cycles)
from ..golden.loopnest import OPS
from .image import MAX_OUTPUT_SIDE, build_image, phase_ranges
from .graph import _as_float64
from .layers import BasisLayer, ClearLayer, GSLayer, InputTransform, ResidualNest
from .plan import Lifetime, MemoryPlan, peak_live

__all__ = ["Program", "ProgramTensor", "region", "gather_region", "jsonable", "GSP_MAGIC",
           "GSP_VERSION"]

GSP_MAGIC = b"GSP\x1a"
#: 1: two-buffer Toeplitz programs; 2: loop-nest programs on planned tensors; 3: setup
#: layers (run once, at load).
GSP_VERSION = 3
_PREFIX = struct.Struct("<4sHI")


@dataclass
class ProgramTensor:
    """An activation tensor of a program.

    Attributes
    ----------
    name : str
        The graph tensor's (fx node's) name; ``<op>.z`` for a SmartDeal basis output.
    shape : (int, int, int)
        (C, H, W) as the device holds it: a flat (F,) tensor is (F, 1, 1); an im2col'd input
        is (kh·kw·C, Ho, Wo).
    geometry : TensorGeometry
        Where it is stored (base included). Its channels may exceed ``shape[0]`` for a
        one-pixel tensor that a SmartDeal layer reads in whole 3-element chunks.
    scale_log2 : int
        ``value = int8 · 2**scale_log2``.
    producer : str or None
        The graph op (or SmartDeal basis layer) writing it; None for the host's input.
    first, last : int
        Steps (graph ops) during which it is live.
    """

    name: str
    shape: tuple
    geometry: TensorGeometry = None
    scale_log2: int = 0
    producer: str = None
    first: int = 0
    last: int = 0

    @property
    def view(self):
        """The geometry with ``shape[0]`` channels: what its writer and its GS readers use
        (the same addresses as ``geometry`` for every element they touch)."""
        g = self.geometry
        return TensorGeometry(g.height, g.width, self.shape[0], g.lanes, g.pad, g.base)

    @property
    def needs_clear(self):
        """A device layer writes it and something reads words it does not write: a halo,
        or channels past ``shape[0]``."""
        return self.producer is not None and (
            self.geometry.pad > 0 or self.geometry.channels > self.shape[0])


@dataclass
class Program:
    """A model compiled to loop-nest device layers.

    Attributes
    ----------
    cfg : CoreConfig
        The core it was compiled for.
    depth : int
        Scratchpad words per bank the tensors may use (:func:`~.plan.scratchpad_depth`).
    tensors : dict of str to ProgramTensor
        Every stored tensor, input first, in creation order.
    layers : list
        :class:`~.layers.ClearLayer`, :class:`~.layers.GSLayer` and
        :class:`~.layers.BasisLayer` records in execution order; one RUN runs them all.
    input : str
        The input tensor (written by the host after ``input_transform``).
    input_shape : tuple
        Per-sample shape of the model's input ((C, H, W) or (F,)).
    input_scale_log2 : int
        The host sends ``quantize(transform(x), input_scale_log2)``.
    input_transform : InputTransform
    output : str
        The output tensor (read back by the host).
    output_shape : tuple
        Per-sample shape of the model's output.
    output_scale_log2 : int
        The int8 outputs ``q`` mean ``q · 2**output_scale_log2``.
    info : list of dict
        Per device layer, for reports: name, kind, torch op, input/weight/output scales,
        shift, pattern, per_row, nnz, groups, pixels and ``kernel_weights`` (the kept weights
        of the kernel); ``float_factor``: the layer's output is the float model's tensor
        divided by it (an average pool whose divisor is not a power of two).
    plan : MemoryPlan
        The scratchpad plan (rebuilt from the tensors when a program is loaded).
    calibration_output : ndarray of int8 or None
        The device output on the example batch, as the compiler's calibration computed it
        (torch convolutions on the integers); :meth:`run_golden_int` on the same batch must
        equal it bit for bit. Not stored in ``.gsp`` files.
    setup_layers : int
        The first ``setup_layers`` layers are CLEAR layers of *resident* tensors (a halo or
        padding channels, and words no other tensor uses: live from the first step to the
        last). A one-phase program runs them once, when it is loaded, and every inference
        runs the layers after them; a phased one runs them in its first phase.
    """

    cfg: CoreConfig
    depth: int
    tensors: dict
    layers: list
    input: str
    input_shape: tuple
    input_scale_log2: int
    input_transform: InputTransform
    output: str
    output_shape: tuple
    output_scale_log2: int
    info: list = field(default_factory=list)
    plan: object = None
    calibration_output: np.ndarray = None
    setup_layers: int = 0

    def __post_init__(self):
        self.input_shape = tuple(int(n) for n in self.input_shape)
        self.output_shape = tuple(int(n) for n in self.output_shape)
        if not self.layers:
            raise ShapeError("Program must have at least one layer, not 0")
        if not 0 <= self.setup_layers < len(self.layers) or any(
                layer.kind != "clear" for layer in self.layers[:self.setup_layers]):
            raise ShapeError(f"Program's setup layers must be CLEAR layers before the last "
                             f"layer, not the first {self.setup_layers} of "
                             f"{len(self.layers)}")
        for what in ("input", "output"):
            if getattr(self, what) not in self.tensors:
                raise ShapeError(f"Program's {what} tensor {getattr(self, what)!r} must be one "
                                 f"of its tensors")
        if self.plan is None:
            self.plan = plan_of(self.tensors, self.depth)

    # Tensors ------------------------------------------------------------------------------
    @property
    def input_geometry(self):
        return self.tensors[self.input].geometry

    @property
    def output_geometry(self):
        return self.tensors[self.output].view

    @property
    def n_outputs(self):
        return int(np.prod(self.output_shape))

    # Host-side numerics -------------------------------------------------------------------
    def quantize_input(self, x):
        """(N, H, W, C) int8: the batch ``x`` (model layout) as the host writes it."""
        x = _as_float64(x)
        if x.shape[1:] != tuple(self.input_shape):
            raise ShapeError(f"Input must have shape (N,) + {tuple(self.input_shape)}, not "
                             f"{x.shape}")
        if not np.isfinite(x).all():
            bad = np.argwhere(~np.isfinite(x))[0]
            raise ShapeError(f"Input must be finite, but sample {int(bad[0])} holds "
                             f"{x[tuple(bad)]} at {tuple(int(i) for i in bad[1:])}")
        return quantize(self.input_transform.apply(x), self.input_scale_log2)

    def dequantize_output(self, q):
        """float32 ``(N,) + output_shape`` of int8 outputs ``(N,) + output_shape``."""
        q = np.asarray(q)
        return dequantize(q, self.output_scale_log2).astype(np.float32).reshape(
            (len(q),) + self.output_shape)

    def input_region(self):
        """``(first ACTS element, elements)`` the host writes per input: bank words
        ``[base, end)`` of the input tensor, every bank (elements ``base·V .. end·V − 1``)."""
        return region(self.input_geometry)

    def output_region(self):
        """``(first ACTS element, elements)`` the host reads per output: the output tensor's
        bank words ``[base, end)`` in every bank."""
        return region(self.output_geometry)

    def input_elements(self, sample):
        """The int8 ACTS elements of :meth:`input_region` for one quantised input
        (``(H, W, C)``, a row of :meth:`quantize_input`): the tensor, its halo and padding
        channels zero."""
        g = self.input_geometry
        banks = np.zeros((g.lanes, g.end), dtype=np.int8)
        g.scatter(np.asarray(sample), banks)
        return banks[:, g.base:].T.ravel()

    def output_from_elements(self, elements):
        """int8 ``output_shape`` of the :meth:`output_region` elements read back."""
        return gather_region(self.output_geometry, elements).transpose(2, 0, 1).reshape(
            self.output_shape)

    # Golden runs --------------------------------------------------------------------------
    def _scratchpad(self, rng, stale):
        shape = (self.cfg.lanes, self.depth)
        return (rng.integers(-128, 128, shape) if stale else np.zeros(shape)).astype(np.int8)

    def run_golden_int(self, x, *, stale=True, seed=0):
        """int8 outputs ``(N,) + output_shape`` of the golden loop-nest run of every layer.

        Each sample runs on its own ``(V, depth)`` scratchpad, filled with random bytes first
        when ``stale`` (what earlier inferences leave behind: nothing may read it).
        """
        xq = self.quantize_input(x)
        rng = np.random.default_rng(seed)
        results = []
        for sample in xq:
            acts = self._scratchpad(rng, stale)
            self.input_geometry.scatter(sample, acts)
            for layer in self.layers:
                layer.run(acts, self.cfg.acc_width)
            results.append(self.output_geometry.gather(acts).transpose(2, 0, 1)
                           .reshape(self.output_shape))
        return np.stack(results).astype(np.int8) if results else \
            np.zeros((0,) + tuple(self.output_shape), dtype=np.int8)

    def run_golden(self, x, **options):
        """Float32 outputs ``(N,) + output_shape`` of the golden run: quantise the input,
        scatter it into the scratchpad, run the layers, gather and dequantise the output."""
        return self.dequantize_output(self.run_golden_int(x, **options))

    def trace_golden_int(self, x, *, stale=True, seed=0):
        """Every layer's output tensor after it ran, for the batch ``x``: a list (one entry
        per layer) of int8 ``(N, C, H, W)`` arrays, ``C`` the channels it writes (a CLEAR
        layer: its tensor's stored channels, all zero)."""
        xq = self.quantize_input(x)
        rng = np.random.default_rng(seed)
        trace = [[] for _ in self.layers]
        for sample in xq:
            acts = self._scratchpad(rng, stale)
            self.input_geometry.scatter(sample, acts)
            for index, layer in enumerate(self.layers):
                layer.run(acts, self.cfg.acc_width)
                trace[index].append(self.written(layer).gather(acts).transpose(2, 0, 1))
        return [np.stack(t).astype(np.int8) for t in trace]

    def written(self, layer):
        """The geometry of the elements ``layer`` writes (its output tensor's view; a CLEAR
        layer's: the whole stored tensor)."""
        tensor = self.tensors[layer.output]
        return tensor.geometry if layer.kind == "clear" else tensor.view

    # Device image and statistics ----------------------------------------------------------
    def image(self):
        """The :class:`~gsaccel.sw.compile.image.DeviceImage` a target loads (the whole
        program at once: CapacityError if it runs in phases, see :meth:`phase_images`)."""
        return build_image(self.cfg, self.layers)

    def phases(self):
        """``[(first layer, layer count), ...]``: the phases the runtime runs one after the
        other, each with its own weights, rows and layer table loaded first (one phase, the
        whole program, when it fits the core's memories). Activations stay on chip."""
        return phase_ranges(self.cfg, self.layers)

    def phase_images(self):
        """``[(first, count, DeviceImage), ...]`` of :meth:`phases`; the image of a phase
        places its layers from address 0 of every memory."""
        return [(first, count, build_image(self.cfg, self.layers[first:first + count]))
                for first, count in self.phases()]

    def layer_stats(self):
        """Per layer, what it costs on the core: the loop nest (output pixels, taps), groups
        and row words per pixel, and from the golden cycle model the counters one run of
        it adds (``cycles``, ``stall_cycles``, ``groups`` issued, ``busy_lane_cycles``)."""
        cfg, rows = self.cfg, []
        for layer in self.layers:
            entry = {"name": layer.name, "kind": layer.kind, "torch_op": layer.torch_op,
                     "pixels": 1, "output": (1, 1), "taps": 0, "groups_per_pixel": 0,
                     "rows_per_pixel": 0, "groups": 0, "busy_lane_cycles": 0,
                     "stall_cycles": 0, "nnz": 0, "weight_bytes": 0}
            if layer.kind == "gs":
                m, nest = layer.matrix, layer.nest
                cycles, stalls = loop_layer_cycles(m.rg_groups, writer_cycles(m, cfg),
                                                   nest.pixels, cfg)
                entry.update(op=layer.op, pattern=m.pattern, per_row=m.per_row,
                             pixels=nest.pixels, output=(nest.dest.height, nest.dest.width),
                             taps=nest.taps, groups_per_pixel=m.n_groups,
                             rows_per_pixel=row_words(m, cfg), groups=m.n_groups * nest.pixels,
                             busy_lane_cycles=m.nnz * nest.pixels, cycles=int(cycles),
                             stall_cycles=int(stalls), nnz=m.nnz,
                             weight_bytes=len(m.to_bytes()))
            elif layer.kind == "basis":
                entry.update(cycles=basis_layer_cycles(layer.n_chunks, cfg), nnz=9,
                             weight_bytes=9, chunks=layer.n_chunks)
            else:
                entry.update(cycles=clear_layer_cycles(layer.words), words=layer.words)
            rows.append(entry)
        return rows

    def run_ranges(self):
        """``(setup, per inference)``: the ``(first, count)`` layer ranges a one-phase program
        runs once at load (``None`` without setup layers) and in every inference."""
        setup = self.setup_layers
        return ((0, setup) if setup else None), (setup, len(self.layers) - setup)

    def stats(self):
        """What one inference costs and what the program needs of a core.

        Keys: ``cycles``, ``stall_cycles``, ``groups`` (issued), ``busy_lane_cycles`` — the
        counters the RUNs of an inference report, from the golden cycle model (a one-phase
        program's setup layers run at load: ``setup_cycles``) —,
        ``utilisation`` (busy lanes / (V · groups)), ``layers``, ``group_words`` and
        ``row_words`` (weight and row memory), ``nnz`` (stored kept weights),
        ``weight_bytes`` (the packed .gsf matrices, 9 per basis), ``activation_words``
        (scratchpad words per bank the plan uses), ``peak_live_words``,
        ``scratchpad_words``, ``per_layer`` (:meth:`layer_stats`), ``phases``
        (:meth:`phases`; each phase is one RUN, ``cycles`` counts every RUN's overhead),
        ``load_bytes`` (the image written once, when there is one phase) and
        ``streamed_bytes`` (the images written before every inference, when there are more).
        """
        per_layer = self.layer_stats()
        phases = self.phase_images()
        # A phased program's first phase runs its setup layers in every inference.
        skip = self.setup_layers if len(phases) == 1 else 0
        total = {name: sum(entry[name] for entry in per_layer[skip:])
                 for name in ("cycles", "stall_cycles", "groups", "busy_lane_cycles", "nnz",
                              "weight_bytes")}
        total["cycles"] += RUN_OVERHEAD * len(phases)
        setup_cycles = sum(entry["cycles"] for entry in per_layer[:skip])
        gs = [layer for layer in self.layers if layer.kind == "gs"]
        image_bytes = sum(image.nbytes for _, _, image in phases)
        return {
            "phases": len(phases),
            # A one-phase image is loaded once; phases stream every image every inference.
            "load_bytes": image_bytes if len(phases) == 1 else 0,
            "streamed_bytes": image_bytes if len(phases) > 1 else 0,
            **total,
            "utilisation": total["busy_lane_cycles"] / (self.cfg.lanes * total["groups"])
            if total["groups"] else 0.0,
            "layers": len(self.layers),
            "setup_cycles": setup_cycles + (RUN_OVERHEAD if skip else 0),
            "group_words": sum(layer.matrix.n_groups for layer in gs),
            "row_words": sum(row_words(layer.matrix, self.cfg) for layer in gs),
            "activation_words": self.plan.top, "peak_live_words": self.plan.peak_words,
            "scratchpad_words": self.depth, "per_layer": per_layer,
        }

    # Files --------------------------------------------------------------------------------
    def to_bytes(self):
        """The ``.gsp`` file image."""
        payload = bytearray()

        def put(data):
            payload.extend(data)
            return [len(payload) - len(data), len(data)]

        layers = [_layer_to_json(layer, put) for layer in self.layers]
        header = {
            "cfg": dataclasses.asdict(self.cfg), "depth": int(self.depth),
            "tensors": [_tensor_to_json(t) for t in self.tensors.values()],
            "input": {"tensor": self.input, "shape": list(self.input_shape),
                      "geometry": _geometry_to_json(self.input_geometry),
                      "scale_log2": int(self.input_scale_log2),
                      "transform": _transform_to_json(self.input_transform)},
            "output": {"tensor": self.output, "shape": list(self.output_shape),
                       "geometry": _geometry_to_json(self.output_geometry),
                       "scale_log2": int(self.output_scale_log2)},
            "layers": layers, "info": jsonable(self.info),
            "setup_layers": int(self.setup_layers)}
        header = json.dumps(header, sort_keys=True).encode()
        body = (_PREFIX.pack(GSP_MAGIC, GSP_VERSION, len(header)) + header
                + struct.pack("<I", len(payload)) + bytes(payload))
        return seal(body)

    @classmethod
    def from_bytes(cls, data, *, source="data"):
        """Parse a ``.gsp`` image.

        Sizes are checked against the bytes present and the JSON header against its size
        and nesting limits before it is parsed; then every field's type and range, and every
        record against the core's memories (docs/format.md, "What a program reader
        checks"). Any damage raises :class:`FormatError` naming the file and the field."""
        data = bytes(data)
        check_head(data, source, "gsaccel program", _PREFIX.size + 8, GSP_MAGIC, GSP_VERSION)
        _, _, hlen = _PREFIX.unpack_from(data)
        if _PREFIX.size + hlen + 8 > len(data):
            raise FormatError(f"{source}: truncated: header of {hlen} bytes does not fit "
                              f"{len(data)} bytes")
        if hlen > MAX_HEADER_BYTES:
            raise FormatError(f"{source}: header of {hlen} bytes; a program's header holds at "
                              f"most {MAX_HEADER_BYTES}")
        (plen,) = struct.unpack_from("<I", data, _PREFIX.size + hlen)
        expected = _PREFIX.size + hlen + 4 + plen + 4
        check_sealed(data, expected, source)
        payload = data[_PREFIX.size + hlen + 4:expected - 4]
        header = _parse_header(data[_PREFIX.size:_PREFIX.size + hlen], source)
        try:
            return cls._from_header(header, payload, source)
        except FormatError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError,
                GsaccelError) as error:
            # The checks below cover every field; this is only a net under them.
            raise FormatError(f"{source}: header does not describe a program "
                              f"({type(error).__name__}: {error})") from None

    @classmethod
    def _from_header(cls, header, payload, source):
        read = _HeaderReader(source, payload)
        read.keys(header, "header", _HEADER_KEYS)
        cfg = read.config(header["cfg"])
        depth = read.integer(header["depth"], "depth", 1, cfg.bank_depth)
        read.cfg, read.depth = cfg, depth
        entries = read.array(header["tensors"], "tensors", 1, MAX_TENSORS)
        tensors = {}
        for index, entry in enumerate(entries):
            tensor = read.tensor(entry, f"tensors[{index}]")
            if tensor.name in tensors:
                read.fail(f"tensors[{index}]", f"tensor {tensor.name!r} appears twice")
            tensors[tensor.name] = tensor
        read.tensors = tensors
        entries = read.array(header["layers"], "layers", 1, MAX_LAYERS)
        layers = [read.layer(entry, f"layers[{index}]") for index, entry in enumerate(entries)]
        if read.offset != len(payload):
            read.fail("payload", f"{len(payload)} bytes, the layers' matrices and biases "
                                 f"take {read.offset}")
        inp = read.input(header["input"])
        out = read.output(header["output"])
        info = read.info(header["info"], len(layers))
        with read.context("header"):
            program = cls(
                cfg=cfg, depth=depth, tensors=tensors, layers=layers, input=inp["tensor"],
                input_shape=inp["shape"], input_scale_log2=inp["scale_log2"],
                input_transform=inp["transform"], output=out["tensor"],
                output_shape=out["shape"], output_scale_log2=out["scale_log2"], info=info,
                setup_layers=read.integer(header["setup_layers"], "setup_layers", 0,
                                          len(layers) - 1))
        return program

    def save(self, path):
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path):
        """Read and parse a ``.gsp`` file; a missing or unreadable file, a directory or a
        damaged program is a :class:`FormatError` naming it."""
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise FormatError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise FormatError(f"{path}: is a directory, not a program file") from None
        except OSError as error:
            raise FormatError(f"{path}: cannot read: {error.strerror or error}") from None
        return cls.from_bytes(data, source=str(path))


def region(geometry):
    """``(first ACTS element, elements)`` of a tensor's bank words ``[base, end)`` in every
    bank: ACTS element ``a`` is bank ``a mod V`` at bank address ``a div V``."""
    return geometry.base * geometry.lanes, geometry.words * geometry.lanes


def gather_region(geometry, elements):
    """The int8 (H, W, C) tensor of the :func:`region` elements read back (signed, or raw
    unsigned bytes as a READ returns them)."""
    elements = np.asarray(elements, dtype=np.int64)
    if elements.size != geometry.words * geometry.lanes:
        raise ShapeError(f"Tensor region must hold {geometry.words * geometry.lanes} elements, "
                         f"not {elements.size}")
    banks = np.zeros((geometry.lanes, geometry.end), dtype=np.int8)
    banks[:, geometry.base:] = (elements.reshape(geometry.words, geometry.lanes).T + 128) \
        % 256 - 128
    return geometry.gather(banks)


def plan_of(tensors, depth):
    """The :class:`~.plan.MemoryPlan` of tensors already placed: their lifetimes and bases
    as they are (nothing is searched)."""
    lifetimes = {t.name: Lifetime(t.name, t.geometry.words, t.first, t.last)
                 for t in tensors.values()}
    step, peak, live = peak_live(lifetimes.values())
    return MemoryPlan(depth=depth, lifetimes=lifetimes,
                      bases={t.name: t.geometry.base for t in tensors.values()},
                      top=max((t.geometry.end for t in tensors.values()), default=0),
                      peak_words=peak, peak_step=step, peak_tensors=live, strategy="as stored")


# JSON of the records ------------------------------------------------------------------------

def jsonable(value):
    """``value`` with numpy scalars and tuples turned into JSON's types."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


_GEOMETRY_FIELDS = ("height", "width", "channels", "lanes", "pad", "base")


def _geometry_to_json(g):
    return {name: int(getattr(g, name)) for name in _GEOMETRY_FIELDS}


def _nest_to_json(nest):
    entry = {"source": _geometry_to_json(nest.source), "dest": _geometry_to_json(nest.dest),
             "kernel": list(nest.kernel), "stride": list(nest.stride),
             "padding": list(nest.padding), "dilation": list(nest.dilation)}
    if isinstance(nest, ResidualNest):
        entry["operand_bases"] = list(nest.operand_bases)
    return entry


def _transform_to_json(transform):
    return {"kind": transform.kind, "kernel": list(transform.kernel),
            "stride": list(transform.stride), "padding": list(transform.padding),
            "dilation": list(transform.dilation), "channels": transform.channels}


def _tensor_to_json(tensor):
    return {"name": tensor.name, "shape": [int(n) for n in tensor.shape],
            "geometry": _geometry_to_json(tensor.geometry),
            "scale_log2": int(tensor.scale_log2), "producer": tensor.producer,
            "first": int(tensor.first), "last": int(tensor.last)}


def _layer_to_json(layer, put):
    if layer.kind == "clear":
        return {"kind": "clear", "name": layer.name, "tensor": layer.tensor,
                "base": int(layer.base), "words": int(layer.words)}
    entry = {"kind": layer.kind, "name": layer.name, "torch_op": layer.torch_op,
             "shift": int(layer.shift), "relu": bool(layer.relu),
             "inputs": list(layer.inputs), "output": layer.output}
    if layer.kind == "basis":
        entry.update(basis=np.asarray(layer.basis, dtype=np.int64).ravel().tolist(),
                     n_chunks=int(layer.n_chunks), source=_geometry_to_json(layer.source),
                     dest=_geometry_to_json(layer.dest))
    else:
        # A .gsf holds whole matrices: a slice's (a layer too big for one load) is stored
        # whole, with the range of its row groups.
        matrix = layer.matrix
        first = matrix.rowgroup_offset
        entry["rowgroups"] = [first, first + matrix.n_rowgroups]
        if matrix.is_slice:
            matrix = matrix.as_whole()
        entry.update(op=layer.op, nest=_nest_to_json(layer.nest),
                     matrix=put(matrix.to_bytes()),
                     bias=put(np.asarray(layer.bias, dtype="<i8").tobytes()))
    return entry


# Reading program files ------------------------------------------------------------------------

#: Limits of a program file (docs/format.md, "What a program reader checks").
MAX_HEADER_BYTES = 16 << 20
#: JSON nesting of the header (a program's is 5 deep).
MAX_JSON_DEPTH = 16
MAX_TENSORS = 1024
MAX_LAYERS = 4096
#: Largest |scale_log2| of a tensor, the input or the output.
MAX_SCALE_LOG2 = 100
#: Largest input sample (elements of ``input_shape``, and of an im2col'd input's padded
#: image) the host quantises.
MAX_INPUT_ELEMENTS = 1 << 22
#: Largest kernel, stride, padding or dilation of the input transform, and length of a name.
_MAX_SIDE = 1 << 16
_MAX_NAME = 1024

_HEADER_KEYS = ("cfg", "depth", "tensors", "input", "output", "layers", "info",
                "setup_layers")
_TENSOR_KEYS = ("name", "shape", "geometry", "scale_log2", "producer", "first", "last")
_TRANSFORM_KEYS = ("kind", "kernel", "stride", "padding", "dilation", "channels")
_LAYER_KEYS = {
    "clear": ("kind", "name", "tensor", "base", "words"),
    "gs": ("kind", "name", "torch_op", "shift", "relu", "inputs", "output", "op", "nest",
           "matrix", "rowgroups", "bias"),
    "basis": ("kind", "name", "torch_op", "shift", "relu", "inputs", "output", "basis",
              "n_chunks", "source", "dest"),
}
_NEST_KEYS = ("source", "dest", "kernel", "stride", "padding", "dilation")
_JSON_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')


def _parse_header(text, source):
    """The JSON header: UTF-8, nested at most MAX_JSON_DEPTH deep (checked before parsing),
    no NaN or infinity, no key twice in an object."""
    try:
        text = text.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FormatError(f"{source}: header is not UTF-8 ({error})") from None
    # Brackets outside strings, counted before json (which recurses) sees them.
    marks = np.frombuffer(_JSON_STRINGS.sub('""', text).encode(), dtype=np.uint8)
    nesting = np.cumsum((marks == ord("[")) | (marks == ord("{")), dtype=np.int32) - \
        np.cumsum((marks == ord("]")) | (marks == ord("}")), dtype=np.int32)
    if nesting.size and nesting.max() > MAX_JSON_DEPTH:
        raise FormatError(f"{source}: header nests more than {MAX_JSON_DEPTH} deep")

    def constant(name):
        raise FormatError(f"{source}: header holds {name}; every number of a program is "
                          f"finite")

    def real(digits):
        value = float(digits)
        if not math.isfinite(value):
            constant(digits[:24])
        return value

    def unique(pairs):
        result = {}
        for key, value in pairs:
            if key in result:
                raise FormatError(f"{source}: header has key {key!r} twice in one object")
            result[key] = value
        return result

    try:
        return json.loads(text, parse_constant=constant, parse_float=real,
                          object_pairs_hook=unique)
    except (ValueError, RecursionError) as error:      # FormatErrors of the hooks pass
        raise FormatError(f"{source}: header is not JSON ({error})") from None


class _HeaderReader:
    """Typed, range-checked reads of a program header's fields: each failure a
    :class:`FormatError` naming the file and the field (``layers[3].nest.kernel``)."""

    def __init__(self, source, payload):
        self.source, self.payload = source, payload
        self.cfg = self.depth = self.tensors = None
        self.offset = 0                  # the payload bytes the layers have taken

    def fail(self, where, message):
        raise FormatError(f"{self.source}: {where}: {message}")

    @contextmanager
    def context(self, where):
        """Errors of the records' own checks (ShapeError, ...) as FormatErrors at ``where``."""
        try:
            yield
        except FormatError:
            raise
        except (GsaccelError, ValueError, TypeError) as error:
            self.fail(where, str(error))

    # Values ------------------------------------------------------------------------------
    def keys(self, value, where, keys):
        if not isinstance(value, dict):
            self.fail(where, f"must be an object, not {_kind(value)}")
        missing = [k for k in keys if k not in value]
        extra = sorted(k for k in value if k not in keys)
        if missing or extra:
            self.fail(where, "must have the keys " + ", ".join(keys) + " ("
                      + "; ".join(filter(None, [
                          missing and "missing " + ", ".join(missing),
                          extra and "unknown " + ", ".join(map(repr, extra[:5]))])) + ")")
        return value

    def integer(self, value, where, lo, hi=None):
        if type(value) is not int or value < lo or hi is not None and value > hi:
            self.fail(where, f"must be an integer in [{lo}, {'∞' if hi is None else hi}], not "
                             f"{_show(value)}")
        return value

    def boolean(self, value, where):
        if type(value) is not bool:
            self.fail(where, f"must be true or false, not {_show(value)}")
        return value

    def string(self, value, where, choices=None):
        if type(value) is not str or not value or len(value) > _MAX_NAME:
            self.fail(where, f"must be a non-empty string of at most {_MAX_NAME} characters, "
                             f"not {_show(value)}")
        if choices is not None and value not in choices:
            self.fail(where, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def array(self, value, where, lo=0, hi=None):
        if type(value) is not list or len(value) < lo or hi is not None and len(value) > hi:
            self.fail(where, f"must be a list of {lo}..{'' if hi is None else hi} entries, not "
                             f"{_show(value)}")
        return value

    def ints(self, value, where, length, lo, hi):
        if type(value) is not list or len(value) != length:
            self.fail(where, f"must be a list of {length} integers, not {_show(value)}")
        return tuple(self.integer(v, f"{where}[{i}]", lo, hi) for i, v in enumerate(value))

    def scale(self, value, where):
        return self.integer(value, where, -MAX_SCALE_LOG2, MAX_SCALE_LOG2)

    def tensor_name(self, value, where):
        self.string(value, where)
        if value not in self.tensors:
            self.fail(where, f"names tensor {value!r}, which the program does not have")
        return value

    # Records -----------------------------------------------------------------------------
    def config(self, value):
        fields = {f.name: f for f in dataclasses.fields(CoreConfig)}
        self.keys(value, "cfg", tuple(fields))
        for name, entry in value.items():
            if name == "encoding":
                self.string(entry, f"cfg.{name}", ENCODINGS)
            elif fields[name].type in (bool, "bool"):
                self.boolean(entry, f"cfg.{name}")
            else:
                self.integer(entry, f"cfg.{name}", 1, 1 << 31)
        with self.context("cfg"):
            cfg = CoreConfig(**value)
        if dataclasses.asdict(cfg) != value:
            changed = next(k for k, v in dataclasses.asdict(cfg).items() if v != value[k])
            self.fail(f"cfg.{changed}", f"must be {getattr(cfg, changed)!r} on this core, not "
                                        f"{value[changed]!r}")
        return cfg

    def geometry(self, value, where):
        """A TensorGeometry of the core's lanes inside the scratchpad's ``depth`` words."""
        self.keys(value, where, _GEOMETRY_FIELDS)
        fields = {name: self.integer(value[name], f"{where}.{name}",
                                     0 if name in ("pad", "base") else 1, _MAX_SIDE)
                  for name in _GEOMETRY_FIELDS}
        if fields["lanes"] != self.cfg.lanes:
            self.fail(f"{where}.lanes", f"must be the core's {self.cfg.lanes}, not "
                                        f"{fields['lanes']}")
        geometry = TensorGeometry(**fields)
        if geometry.end > self.depth:
            self.fail(where, f"bank words [{geometry.base}, {geometry.end}) must lie in the "
                             f"{self.cfg.lanes}-bank scratchpad's {self.depth} words")
        return geometry

    def tensor(self, value, where):
        self.keys(value, where, _TENSOR_KEYS)
        name = self.string(value["name"], f"{where}.name")
        shape = self.ints(value["shape"], f"{where}.shape", 3, 1, _MAX_SIDE)
        geometry = self.geometry(value["geometry"], f"{where}.geometry")
        if (geometry.height, geometry.width) != shape[1:] or geometry.channels < shape[0]:
            self.fail(where, f"tensor {name!r} of shape {list(shape)} must be stored "
                             f"{shape[1]}x{shape[2]} pixels of at least {shape[0]} channels, "
                             f"not {geometry.height}x{geometry.width} of {geometry.channels}")
        producer = value["producer"]
        if producer is not None:
            self.string(producer, f"{where}.producer")
        first = self.integer(value["first"], f"{where}.first", 0, 2 * MAX_LAYERS)
        last = self.integer(value["last"], f"{where}.last", first, 2 * MAX_LAYERS)
        return ProgramTensor(name=name, shape=shape, geometry=geometry,
                             scale_log2=self.scale(value["scale_log2"], f"{where}.scale_log2"),
                             producer=producer, first=first, last=last)

    def nest(self, value, where, inputs):
        residual = isinstance(value, dict) and "operand_bases" in value
        self.keys(value, where, _NEST_KEYS + (("operand_bases",) if residual else ()))
        pairs = {name: self.ints(value[name], f"{where}.{name}", 2,
                                 0 if name == "padding" else 1, _MAX_SIDE)
                 for name in ("kernel", "stride", "padding", "dilation")}
        source = self.geometry(value["source"], f"{where}.source")
        dest = self.geometry(value["dest"], f"{where}.dest")
        for side, size in (("columns", dest.width), ("rows", dest.height)):
            if size > MAX_OUTPUT_SIDE:
                self.fail(f"{where}.dest", f"{size} output {side}; a layer counts at most "
                                           f"{MAX_OUTPUT_SIDE}")
        if residual:
            bases = self.ints(value["operand_bases"], f"{where}.operand_bases", len(inputs), 0,
                              self.depth - source.words)
            with self.context(where):
                return ResidualNest(source=source, dest=dest, operand_bases=bases, **pairs)
        if len(inputs) != 1:
            self.fail(where, f"a loop nest reads one tensor, not {len(inputs)} (an addition's "
                             f"nest has operand_bases)")
        with self.context(where):
            return LoopNest(source=source, dest=dest, **pairs)

    def span(self, value, where, length=None):
        """The next bytes of the payload: each GS layer's matrix then its bias, in layer
        order, with neither gaps nor overlaps."""
        start, size = self.ints(value, where, 2, 0, len(self.payload))
        if start != self.offset:
            self.fail(where, f"starts at byte {start}; the payload holds each GS layer's "
                             f"matrix then its bias in layer order, so it starts at "
                             f"{self.offset}")
        if start + size > len(self.payload):
            self.fail(where, f"spans bytes {start}..{start + size} of a {len(self.payload)}"
                             f"-byte payload")
        if length is not None and size != length:
            self.fail(where, f"must be {length} bytes, not {size}")
        self.offset += size
        return self.payload[start:start + size]

    def layer(self, value, where):
        kind = value.get("kind") if isinstance(value, dict) else None
        if not isinstance(kind, str) or kind not in _LAYER_KEYS:
            self.keys(value, where, ("kind",))          # not an object: say so
            self.fail(f"{where}.kind", f"must be one of {', '.join(_LAYER_KEYS)}, not "
                                       f"{_show(kind)}")
        self.keys(value, where, _LAYER_KEYS[kind])
        name = self.string(value["name"], f"{where}.name")
        if kind == "clear":
            tensor = self.tensors[self.tensor_name(value["tensor"], f"{where}.tensor")]
            base = self.integer(value["base"], f"{where}.base", 0, self.depth)
            words = self.integer(value["words"], f"{where}.words", 1, self.depth)
            if (base, words) != (tensor.geometry.base, tensor.geometry.words):
                self.fail(where, f"clears [{base}, {base + words}), tensor {tensor.name!r} "
                                 f"occupies [{tensor.geometry.base}, {tensor.geometry.end})")
            return ClearLayer(name, tensor.name, base, words)
        common = dict(
            name=name, torch_op=self.string(value["torch_op"], f"{where}.torch_op"),
            shift=self.integer(value["shift"], f"{where}.shift", 0, 31),
            relu=self.boolean(value["relu"], f"{where}.relu"),
            inputs=tuple(self.tensor_name(n, f"{where}.inputs[{i}]") for i, n in
                         enumerate(self.array(value["inputs"], f"{where}.inputs", 1, 2))),
            output=self.tensor_name(value["output"], f"{where}.output"))
        if kind == "basis":
            if not self.cfg.basis:
                self.fail(where, "a basis layer needs the basis unit, which this core leaves "
                                 "out (cfg.basis is false)")
            if len(common["inputs"]) != 1:
                self.fail(f"{where}.inputs", "a basis layer reads one tensor")
            basis = self.ints(value["basis"], f"{where}.basis", 9, -128, 127)
            n_chunks = self.integer(value["n_chunks"], f"{where}.n_chunks", 1, 65535)
            source = self.geometry(value["source"], f"{where}.source")
            dest = self.geometry(value["dest"], f"{where}.dest")
            with self.context(where):
                return BasisLayer(basis=np.asarray(basis, dtype=np.int64).reshape(3, 3),
                                  n_chunks=n_chunks, source=source, dest=dest, **common)
        op = self.string(value["op"], f"{where}.op", OPS)
        nest = self.nest(value["nest"], f"{where}.nest", common["inputs"])
        matrix = GSMatrix.from_bytes(self.span(value["matrix"], f"{where}.matrix"),
                                     source=f"{self.source} {where}.matrix")
        first, end = self.ints(value["rowgroups"], f"{where}.rowgroups", 2, 0,
                               matrix.n_rowgroups)
        if first >= end:
            self.fail(f"{where}.rowgroups", f"must be a range of the matrix's "
                                            f"{matrix.n_rowgroups} row groups, not "
                                            f"{first}..{end}")
        if (first, end) != (0, matrix.n_rowgroups):
            whole, matrix = matrix, matrix.take_rowgroups(first, end)
            if matrix.as_whole() != whole:
                self.fail(f"{where}.rowgroups", f"a slice {first}..{end} is stored whole with "
                                                f"one empty group in each other row group "
                                                f"(gs-scatter: of the rows left, in order)")
        cfg = self.cfg
        if op == "max" and matrix.per_row != 1:
            self.fail(f"{where}.matrix", f"a max layer keeps one weight per row per group "
                                         f"(e = 1), not e = {matrix.per_row}")
        if (matrix.lanes, matrix.encoding) != (cfg.lanes, cfg.encoding):
            self.fail(f"{where}.matrix", f"has {matrix.lanes} lanes and {matrix.encoding} "
                                         f"values, the core {cfg.lanes} lanes and "
                                         f"{cfg.encoding}")
        for need, have, what in ((matrix.n_groups, cfg.weight_depth, "group words"),
                                 (matrix.rg_rows.size, cfg.row_depth, "row records")):
            if need > have:
                self.fail(f"{where}.matrix", f"needs {need} {what}, the core holds {have}")
        bias = np.frombuffer(self.span(value["bias"], f"{where}.bias", 8 * matrix.shape[0]),
                             dtype="<i8").astype(np.int64)
        limit = 1 << (cfg.acc_width - 1)
        if bias.size and (bias.min() < -limit or bias.max() >= limit):
            self.fail(f"{where}.bias", f"a bias is outside the {cfg.acc_width}-bit "
                                       f"accumulator range")
        with self.context(where):
            return GSLayer(matrix=matrix, bias=bias, op=op, nest=nest, **common)

    def transform(self, value, shape, tensor):
        """The input transform, consistent with the input's shape and its tensor."""
        where = "input.transform"
        self.keys(value, where, _TRANSFORM_KEYS)
        kind = self.string(value["kind"], f"{where}.kind", InputTransform.KINDS)
        pairs = {name: self.ints(value[name], f"{where}.{name}", 2,
                                 0 if name == "padding" else 1, _MAX_SIDE)
                 for name in ("kernel", "stride", "padding", "dilation")}
        channels = value["channels"]
        stored = tensor.geometry.channels
        expected = stored if stored > tensor.shape[0] else None
        if type(channels) not in (int, type(None)) or channels != expected:
            self.fail(f"{where}.channels", f"must be {_show(expected)} (the input tensor "
                                           f"stores {stored} channels of {tensor.shape[0]}), "
                                           f"not {_show(channels)}")
        if kind == "im2col":
            if len(shape) != 3:
                self.fail(where, f"im2col takes a (C, H, W) input, not {list(shape)}")
            c, h, w = shape
            (py, px) = pairs["padding"]
            if (h + 2 * py) * (w + 2 * px) * c > MAX_INPUT_ELEMENTS:
                self.fail(f"{where}.padding", f"pads the {h}x{w} input to more than "
                                              f"{MAX_INPUT_ELEMENTS} elements")
            with self.context(where):
                out = tuple(conv_output_size(n, *args) for n, args in zip(
                    (h, w), zip(pairs["kernel"], pairs["stride"], pairs["padding"],
                                pairs["dilation"])))
            produced = (pairs["kernel"][0] * pairs["kernel"][1] * c,) + out
        else:
            if pairs != {"kernel": (1, 1), "stride": (1, 1), "padding": (0, 0),
                         "dilation": (1, 1)}:
                self.fail(where, f"a {kind!r} transform has kernel and stride [1, 1], padding "
                                 f"[0, 0] and dilation [1, 1]")
            size = int(np.prod(shape))
            produced = (size, 1, 1) if kind == "flatten" or len(shape) == 1 else shape
        if produced != tensor.shape:
            self.fail("input", f"the {kind!r} transform of inputs of shape {list(shape)} gives "
                               f"{list(produced)}, the input tensor {tensor.name!r} has shape "
                               f"{list(tensor.shape)}")
        return InputTransform(kind=kind, channels=channels, **pairs)

    def _shape(self, value, where):
        if type(value) is not list or len(value) not in (1, 3):
            self.fail(where, f"must be a list of 1 or 3 integers, not {_show(value)}")
        shape = self.ints(value, where, len(value), 1, MAX_INPUT_ELEMENTS)
        if math.prod(shape) > MAX_INPUT_ELEMENTS:
            self.fail(where, f"{list(shape)} has more than {MAX_INPUT_ELEMENTS} elements")
        return shape

    def _end(self, value, where, keys, geometry_of):
        self.keys(value, where, keys)
        tensor = self.tensors[self.tensor_name(value["tensor"], f"{where}.tensor")]
        shape = self._shape(value["shape"], f"{where}.shape")
        if self.geometry(value["geometry"], f"{where}.geometry") != geometry_of(tensor):
            self.fail(f"{where}.geometry", f"the {where} geometry differs from its tensor's")
        scale = self.scale(value["scale_log2"], f"{where}.scale_log2")
        if scale != tensor.scale_log2:
            self.fail(f"{where}.scale_log2", f"must be its tensor's {tensor.scale_log2}, not "
                                             f"{scale}")
        return tensor, shape, scale

    def input(self, value):
        tensor, shape, scale = self._end(value, "input", ("tensor", "shape", "geometry",
                                                          "scale_log2", "transform"),
                                         lambda t: t.geometry)
        if tensor.producer is not None:
            self.fail("input.tensor", f"tensor {tensor.name!r} is written by "
                                      f"{tensor.producer!r}; the host writes the input")
        return {"tensor": tensor.name, "shape": shape, "scale_log2": scale,
                "transform": self.transform(value["transform"], shape, tensor)}

    def output(self, value):
        tensor, shape, scale = self._end(value, "output", ("tensor", "shape", "geometry",
                                                           "scale_log2"), lambda t: t.view)
        if math.prod(shape) != math.prod(tensor.shape):
            self.fail("output.shape", f"the output shape {list(shape)} does not match the "
                                      f"output tensor's {list(tensor.shape)}")
        return {"tensor": tensor.name, "shape": shape, "scale_log2": scale}

    def info(self, value, layers):
        self.array(value, "info", layers, layers)
        for index, entry in enumerate(value):
            if not isinstance(entry, dict):
                self.fail(f"info[{index}]", f"must be an object, not {_kind(entry)}")
            factor = entry.get("float_factor", 1)
            if type(factor) not in (int, float) or not factor > 0:
                self.fail(f"info[{index}].float_factor", f"must be a positive number, not "
                                                         f"{_show(factor)}")
        return value


def _kind(value):
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value),
                                                                        type(value).__name__)


def _show(value):
    """A field's value for a message: short, and saying what JSON type it has."""
    if isinstance(value, (dict, list)):
        return _kind(value)
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
