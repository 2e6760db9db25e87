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
                     the per-layer report (``info``)
    plen    u32      payload length
    payload plen     the concatenated .gsf images and biases
    crc     u32      zlib.crc32 of everything before it

docs/format.md describes every field. Anything truncated, corrupt, of another version or not
a program raises :class:`~gsaccel.sw.errors.FormatError`.
"""

import dataclasses
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...hw.config import CoreConfig
from ..errors import FormatError, GsaccelError, ShapeError
from ..format import GSMatrix, check_head, check_sealed, seal
from ..format.geometry import LoopNest, TensorGeometry
from ..golden import (RUN_OVERHEAD, basis_layer_cycles, clear_layer_cycles,
                      dequantize, loop_layer_cycles, quantize, row_words, writer_cycles)
from .image import build_image, phase_ranges
from .layers import BasisLayer, ClearLayer, GSLayer, InputTransform, ResidualNest
from .plan import Lifetime, MemoryPlan, peak_live

__all__ = ["Program", "ProgramTensor", "region", "gather_region", "jsonable", "GSP_MAGIC",
           "GSP_VERSION"]

GSP_MAGIC = b"GSP\x1a"
#: 1: two-buffer Toeplitz programs; 2: loop-nest programs on planned tensors.
GSP_VERSION = 2
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

    def __post_init__(self):
        self.input_shape = tuple(int(n) for n in self.input_shape)
        self.output_shape = tuple(int(n) for n in self.output_shape)
        if not self.layers:
            raise ShapeError("Program must have at least one layer, not 0")
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

    def stats(self):
        """What one inference costs and what the program needs of a core.

        Keys: ``cycles``, ``stall_cycles``, ``groups`` (issued), ``busy_lane_cycles`` — the
        counters a RUN of every layer reports, from the golden cycle model —,
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
        total = {name: sum(entry[name] for entry in per_layer)
                 for name in ("cycles", "stall_cycles", "groups", "busy_lane_cycles", "nnz",
                              "weight_bytes")}
        phases = self.phase_images()
        total["cycles"] += RUN_OVERHEAD * len(phases)
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
            "layers": layers, "info": jsonable(self.info)}
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
            return cls._from_header(header, payload, source)
        except FormatError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError,
                GsaccelError) as error:
            raise FormatError(f"{source}: header does not describe a program ({error})") \
                from None

    @classmethod
    def _from_header(cls, header, payload, source):
        cfg = CoreConfig(**header["cfg"])
        tensors = {}
        for entry in header["tensors"]:
            tensor = ProgramTensor(
                name=str(entry["name"]), shape=tuple(int(n) for n in entry["shape"]),
                geometry=_geometry_from_json(entry["geometry"]),
                scale_log2=int(entry["scale_log2"]), producer=entry["producer"],
                first=int(entry["first"]), last=int(entry["last"]))
            if tensor.name in tensors:
                raise ValueError(f"tensor {tensor.name!r} appears twice")
            tensors[tensor.name] = tensor
        depth = int(header["depth"])
        for tensor in tensors.values():
            if tensor.geometry.lanes != cfg.lanes or tensor.geometry.end > depth:
                raise ValueError(f"tensor {tensor.name!r} must lie in the {cfg.lanes}-bank "
                                 f"scratchpad's {depth} words")

        def take(span, what):
            start, length = (int(v) for v in span)
            if start < 0 or length < 0 or start + length > len(payload):
                raise FormatError(f"{source}: {what} spans bytes {start}..{start + length} of "
                                  f"a {len(payload)}-byte payload")
            return payload[start:start + length]

        layers = [_layer_from_json(entry, take, source, index)
                  for index, entry in enumerate(header["layers"])]
        for index, layer in enumerate(layers):
            for name in (*layer.inputs, layer.output):
                if name not in tensors:
                    raise ValueError(f"layer {index} names tensor {name!r}, which the program "
                                     f"does not have")
        inp, out = header["input"], header["output"]
        program = cls(
            cfg=cfg, depth=depth, tensors=tensors, layers=layers, input=inp["tensor"],
            input_shape=tuple(inp["shape"]), input_scale_log2=int(inp["scale_log2"]),
            input_transform=_transform_from_json(inp["transform"]), output=out["tensor"],
            output_shape=tuple(out["shape"]), output_scale_log2=int(out["scale_log2"]),
            info=list(header["info"]))
        for what, geometry in (("input", program.input_geometry),
                               ("output", program.output_geometry)):
            if _geometry_from_json(header[what]["geometry"]) != geometry:
                raise ValueError(f"the {what} geometry differs from its tensor's")
        if int(np.prod(program.output_shape)) != \
                int(np.prod(program.tensors[program.output].shape)):
            raise ValueError(f"the output shape {program.output_shape} does not match the "
                             f"output tensor's {program.tensors[program.output].shape}")
        return program

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

def _as_float64(x):
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.array(x, dtype=np.float64)


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


def _geometry_from_json(entry):
    return TensorGeometry(**{name: int(entry[name]) for name in _GEOMETRY_FIELDS})


def _nest_to_json(nest):
    entry = {"source": _geometry_to_json(nest.source), "dest": _geometry_to_json(nest.dest),
             "kernel": list(nest.kernel), "stride": list(nest.stride),
             "padding": list(nest.padding), "dilation": list(nest.dilation)}
    if isinstance(nest, ResidualNest):
        entry["operand_bases"] = list(nest.operand_bases)
    return entry


def _pair(value):
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"a (rows, columns) pair, not {value!r}")
    return pair


def _nest_from_json(entry):
    fields = dict(source=_geometry_from_json(entry["source"]),
                  dest=_geometry_from_json(entry["dest"]),
                  kernel=_pair(entry["kernel"]), stride=_pair(entry["stride"]),
                  padding=_pair(entry["padding"]), dilation=_pair(entry["dilation"]))
    if "operand_bases" in entry:
        return ResidualNest(**fields, operand_bases=tuple(int(b) for b in
                                                          entry["operand_bases"]))
    return LoopNest(**fields)


def _transform_to_json(transform):
    return {"kind": transform.kind, "kernel": list(transform.kernel),
            "stride": list(transform.stride), "padding": list(transform.padding),
            "dilation": list(transform.dilation), "channels": transform.channels}


def _transform_from_json(entry):
    channels = entry["channels"]
    return InputTransform(kind=entry["kind"], kernel=_pair(entry["kernel"]),
                          stride=_pair(entry["stride"]), padding=_pair(entry["padding"]),
                          dilation=_pair(entry["dilation"]),
                          channels=None if channels is None else int(channels))


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
        entry.update(op=layer.op, nest=_nest_to_json(layer.nest),
                     matrix=put(layer.matrix.to_bytes()),
                     bias=put(np.asarray(layer.bias, dtype="<i8").tobytes()))
    return entry


def _layer_from_json(entry, take, source, index):
    kind = entry["kind"]
    if kind == "clear":
        return ClearLayer(str(entry["name"]), str(entry["tensor"]), int(entry["base"]),
                          int(entry["words"]))
    common = dict(name=str(entry["name"]), torch_op=str(entry["torch_op"]),
                  shift=int(entry["shift"]), relu=bool(entry["relu"]),
                  inputs=tuple(str(n) for n in entry["inputs"]), output=str(entry["output"]))
    if kind == "basis":
        return BasisLayer(basis=np.asarray(entry["basis"], dtype=np.int64).reshape(3, 3),
                          n_chunks=int(entry["n_chunks"]),
                          source=_geometry_from_json(entry["source"]),
                          dest=_geometry_from_json(entry["dest"]), **common)
    if kind != "gs":
        raise ValueError(f"layer {index} has kind {kind!r}, not gs, basis or clear")
    matrix = GSMatrix.from_bytes(take(entry["matrix"], f"layer {index}'s matrix"),
                                 source=f"{source} layer {index}")
    bias = take(entry["bias"], f"layer {index}'s bias")
    if len(bias) != 8 * matrix.shape[0]:
        raise FormatError(f"{source}: layer {index}'s bias must be {8 * matrix.shape[0]} "
                          f"bytes ({matrix.shape[0]} rows), not {len(bias)}")
    return GSLayer(matrix=matrix, bias=np.frombuffer(bias, dtype="<i8").astype(np.int64),
                   op=str(entry["op"]), nest=_nest_from_json(entry["nest"]), **common)
