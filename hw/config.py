"""Core configuration: one frozen, self-validating record that every block, the packer, the
golden model and the host runtime derive their widths from."""

from dataclasses import dataclass

__all__ = ["CoreConfig", "check_config", "ENCODINGS", "POW2_EXP_MAX"]

#: Weight value encodings the lanes understand.
ENCODINGS = ("pow2", "int8")

#: Largest exponent of a power-of-two weight: values are ±2**k with 0 <= k <= POW2_EXP_MAX
#: (a 4-bit exponent; DESIGN §1.3).
POW2_EXP_MAX = 15


def _is_pow2(n):
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class CoreConfig:
    """Parameters of one gsaccel core.

    Parameters
    ----------
    lanes : int
        V: lanes = scratchpad banks = weights per group (2, 4, 8 or 16).
    bank_depth : int
        Words per scratchpad bank; the scratchpad holds ``lanes * bank_depth`` int8
        activations in one address space, where the compiler places every tensor at a
        bank address of its own (docs/architecture.md, "Tensors"). A power of two.
    encoding : str
        Weight value encoding, ``"pow2"`` (6-bit sign/zero/exponent code, shift lanes) or
        ``"int8"`` (multiplier lanes).
    acc_width : int
        Accumulator width in bits (two's complement, wraps on overflow).
    weight_depth : int
        Group words in the weight memory.
    row_depth : int
        Row records (output address and bias) in the row memory.
    layer_depth : int
        Layer descriptors in the layer table.
    result_queue : int
        Results the queue between the engine and the requantising writer holds; it holds
        ``result_queue // lanes`` sum vectors, which must cover the engine latency for
        horizontal layers to run without stalls.
    max_payload : int
        Largest frame payload the device accepts, in bytes.
    basis : bool
        Include the SmartDeal basis unit (BASIS layers, ``z = B·x``). It needs at least 4
        lanes (it reads a 3-element chunk per cycle), so with fewer the field is set to
        False; it costs 9 multipliers and about 1100 LUTs, so small FPGAs leave it out.
    deep_pipeline : bool
        The pipeline that 100 MHz on an ECP5 needs: a register after every scratchpad bank
        and one engine stage per level of the adder tree (log2 V stages). False: neither,
        which saves the flip-flops (each a logic cell on an iCE40) that a small FPGA at a
        lower clock does not need. ``golden.engine_latency`` and ``golden.basis_latency``
        follow.
    vector_writer : bool
        The result writer takes a whole *row line* per cycle: up to V outputs of one sum
        vector, one per bank, requantised by V requantisers in parallel (the ROWS memory's
        word is then a line of V records, V times as wide). False: the serial writer, one
        output slot per cycle and one record per ROWS word, for small FPGAs whose row
        memory cannot be V times wider (the iCEBreaker's lives in SPRAM).
    bank_halves : bool
        Every scratchpad bank is two single-port halves of ``bank_depth / 2`` words (bank
        addresses below and from ``bank_depth / 2``): the iCE40UP's SPRAMs, four 16384-word
        blocks that hold 32 times an EBR, with one address port each. A layer then reads one
        half while it writes the other, and the memory planner places every tensor in one
        half, a layer's inputs in the half its output is not in
        (:func:`~gsaccel.sw.compile.plan.plan_memory`). A read and a write of the same half
        in one cycle would lose the read; no program the compiler makes has one.
    """

    lanes: int = 8
    bank_depth: int = 128
    encoding: str = "pow2"
    acc_width: int = 24
    weight_depth: int = 2048
    row_depth: int = 1024
    layer_depth: int = 16
    result_queue: int = 128
    max_payload: int = 1024
    act_width: int = 8
    basis: bool = True
    deep_pipeline: bool = True
    vector_writer: bool = True
    bank_halves: bool = False

    def __post_init__(self):
        for name in ("lanes", "bank_depth", "acc_width", "weight_depth", "row_depth",
                     "layer_depth", "result_queue", "max_payload", "act_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise TypeError(f"{name.replace('_', ' ').capitalize()} must be a positive "
                                f"integer, not {value!r}")
        if self.lanes not in (2, 4, 8, 16):
            raise ValueError(f"Lane count must be 2, 4, 8 or 16, not {self.lanes!r}")
        if not _is_pow2(self.bank_depth):
            raise ValueError(f"Bank depth must be a power of two, not {self.bank_depth!r}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"Encoding must be one of {', '.join(ENCODINGS)}, "
                             f"not {self.encoding!r}")
        if not isinstance(self.basis, bool):
            raise TypeError(f"Basis must be a bool, not {self.basis!r}")
        if self.lanes < 4:
            object.__setattr__(self, "basis", False)
        if not isinstance(self.deep_pipeline, bool):
            raise TypeError(f"Deep pipeline must be a bool, not {self.deep_pipeline!r}")
        if not isinstance(self.vector_writer, bool):
            raise TypeError(f"Vector writer must be a bool, not {self.vector_writer!r}")
        if not isinstance(self.bank_halves, bool):
            raise TypeError(f"Bank halves must be a bool, not {self.bank_halves!r}")
        if self.bank_halves and self.bank_depth < 2:
            raise ValueError(f"Bank depth must be at least 2 with bank halves, not "
                             f"{self.bank_depth!r}")
        if self.act_width != 8:
            raise ValueError(f"Activation width must be 8, not {self.act_width!r}")
        if self.acc_width < (lo := self.act_width + POW2_EXP_MAX + 1):
            raise ValueError(f"Accumulator width must be at least {lo}, not {self.acc_width!r}")
        if self.acc_width > 32:
            raise ValueError(f"Accumulator width must be at most 32, not {self.acc_width!r}")
        if self.result_queue < self.lanes:
            raise ValueError(f"Result queue must hold at least one row group ({self.lanes}), "
                             f"not {self.result_queue!r}")
        if self.layer_depth > 256:
            raise ValueError(f"Layer depth must be at most 256, not {self.layer_depth!r}")
        for name in ("weight_depth", "row_depth"):
            if getattr(self, name) > 65536:
                raise ValueError(f"{name.replace('_', ' ').capitalize()} must be at most "
                                 f"65536, not {getattr(self, name)!r}")
        if self.bank_depth > 32768:
            # HELLO reports it in 16 bits (and it is a power of two).
            raise ValueError(f"Bank depth must be at most 32768, not {self.bank_depth!r}")
        if self.lanes * self.bank_depth > 1 << 24:
            # The host addresses ACTS elements with 24 bits (WRITE and READ frames).
            raise ValueError(f"Scratchpad size lanes*bank_depth must be at most {1 << 24}, "
                             f"not {self.lanes * self.bank_depth!r}")

    # Derived widths ------------------------------------------------------------------------
    @property
    def act_size(self):
        """Activations the scratchpad holds: ``lanes * bank_depth``."""
        return self.lanes * self.bank_depth

    @property
    def act_addr_width(self):
        """Bits of a bank address: ``log2(bank_depth)``. Address arithmetic wraps at
        ``bank_depth`` (every adder of the datapath is this wide)."""
        return max(1, (self.bank_depth - 1).bit_length())

    @property
    def result_vectors(self):
        """Sum vectors the result queue holds: the engine's credits."""
        return self.result_queue // self.lanes

    @property
    def bank_bits(self):
        """Bits that select a bank: log2(lanes)."""
        return self.lanes.bit_length() - 1

    @property
    def col_width(self):
        """Bits of an element index into the scratchpad (bank in the low bits)."""
        return max(1, (self.act_size - 1).bit_length())

    @property
    def value_width(self):
        """Bits of one weight value code."""
        return 6 if self.encoding == "pow2" else 8

    @property
    def groups_width(self):
        return (self.weight_depth).bit_length()

    @property
    def weight_addr_width(self):
        return max(1, (self.weight_depth - 1).bit_length())

    @property
    def row_addr_width(self):
        return max(1, (self.row_depth - 1).bit_length())

    def to_json(self):
        import dataclasses, json
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        import json
        return cls(**json.loads(text))


def check_config(cfg):
    """Raise TypeError unless ``cfg`` is a :class:`CoreConfig` (every block's first check)."""
    if not isinstance(cfg, CoreConfig):
        raise TypeError(f"Configuration must be a CoreConfig, not {cfg!r}")
    return cfg
