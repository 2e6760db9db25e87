"""What one sweep task does, in whichever process runs it (a Ray worker, a pool process or
another machine): measure a point, or build a core.

A point: build the model (a digits model trained dense, or an MLPerf Tiny topology with
random weights, or the user's), prune it for the point's core and fine-tune it (digits),
compile it for the core (:func:`gsaccel.sw.api.compile`), then read cycles, utilisation and
bytes from the program, accuracy from the golden model on the digits test set, and — if it
fits in one load and ``rtl`` is set — run inputs on the Verilator RTL of the core, whose
outputs and counters must equal the golden model's (:func:`gsaccel.sw.bench.conv.check_program`).

A build: :func:`gsaccel.boards.build.build_board` of the board with the core; a design that
does not fit or misses timing is a result (``core_fit`` ``no`` / ``timing``), not a failure.

:func:`run_task` never raises for a failing task: the record holds the error instead, so that
one bad point does not stop a sweep.
"""

import socket
import time
import traceback

__all__ = ["run_task", "measure_point", "build_core", "load_user_model"]

#: Calibration inputs per compile: digits training images, or Gaussian inputs for the
#: random-weight topologies (as ``bench tiny``).
DIGITS_CALIBRATION = 512
TINY_CALIBRATION = 16


def run_task(task):
    """Run one task ``{"kind": "point" | "build", "key", "inputs", ...}``; return its record
    (a JSON-able dict): the measurements, or ``error`` and ``traceback``; with ``seconds``,
    ``host`` and ``code`` (the digest of the code that ran it, which the driver checks)."""
    from .spec import code_digest
    started = time.monotonic()
    try:
        if task["kind"] == "point":
            record = measure_point(task["inputs"], task.get("model_source"))
        else:
            record = build_core(task["inputs"], task["key"])
    except Exception as error:          # recorded, not raised: one point must not stop a sweep
        record = {"error": f"{type(error).__name__}: {error}".splitlines()[0][:500],
                  "traceback": "".join(traceback.format_exception(error))[-4000:]}
    record.update(seconds=round(time.monotonic() - started, 2), host=socket.gethostname(),
                  code=code_digest(task["kind"]))
    return record


# Points ---------------------------------------------------------------------------------------

def load_user_model(model, source):
    """``(module, input_shape)`` of a user model ``FILE.py:FUNCTION`` (``source`` holds the
    file's text) or ``package.module:FUNCTION``: the function returns an ``nn.Module`` with
    an ``input_shape`` attribute (C, H, W or features), or a ``(module, input_shape)``
    pair."""
    import importlib
    import torch
    from ..errors import GsaccelError
    target, _, function = model.rpartition(":")
    if source is not None and source[0] == "file":
        namespace = {"__name__": "gsaccel_sweep_user_model", "__file__": target}
        exec(compile(source[1], target, "exec"), namespace)
        factory = namespace.get(function)
    else:
        factory = getattr(importlib.import_module(target), function, None)
    if not callable(factory):
        raise GsaccelError(f"Model {model!r}: {target} defines no function {function!r}")
    made = factory()
    module, shape = made if isinstance(made, tuple) else (made, getattr(made, "input_shape",
                                                                        None))
    if not isinstance(module, torch.nn.Module) or shape is None:
        raise GsaccelError(f"Model {model!r}: {function}() must return an nn.Module with an "
                           f"input_shape attribute, or a (module, input_shape) pair")
    return module, tuple(int(n) for n in shape)


def _prepared_model(point, lanes, source):
    """``(model in eval mode, calibration input, digits data or None, dense accuracy or
    None, float accuracy or None)`` with the point's layers pruned."""
    import torch
    from ..bench.tiny import prunable_layers
    from ..models import DigitsCNN, DigitsMLP, digits_data, evaluate, train
    from ..models.tiny import TINY_MODELS, tiny_model
    from ..prune import prune
    name, data = point["model"], None
    dense_accuracy = float_accuracy = None
    if name in ("digits-mlp", "digits-cnn"):
        torch.manual_seed(point["seed"])
        data = digits_data(point["seed"])
        model = DigitsMLP() if name == "digits-mlp" else DigitsCNN()
        train(model, data, point["epochs"], seed=point["seed"])
        dense_accuracy = evaluate(model, data)
        calibration = data.x_train[:DIGITS_CALIBRATION]
    else:
        if name in TINY_MODELS:
            model, shape = tiny_model(name, seed=point["seed"]), TINY_MODELS[name][0].input_shape
        else:
            model, shape = load_user_model(name, source)
        calibration = torch.randn(TINY_CALIBRATION, *shape,
                                  generator=torch.Generator().manual_seed(1))
    if point["pattern"] != "dense" and data is not None:
        # The digits models as `bench pruning` prunes them: every layer but the CNN's first
        # conv (72 weights, 9 per output: too few to prune).
        prune(model, point["pattern"], point["sparsity"], lanes=lanes,
              exclude=("0",) if name == "digits-cnn" else ())
        _finetune(model, data, point)
    elif point["pattern"] != "dense":
        # The others as `bench tiny` prunes them (:func:`prunable_layers`).
        example = calibration[:2]
        prune(model, point["pattern"], point["sparsity"], lanes=lanes,
              layers=prunable_layers(model, lanes, example), example_input=example)
    model.eval()
    if data is not None:
        float_accuracy = evaluate(model, data)
    return model, calibration, data, dense_accuracy, float_accuracy


def _finetune(model, data, point):
    """The masked fine-tuning of ``gsaccel demo`` (SmartDeal: C and B trained, then frozen);
    ``finetune = "qat"`` continues from it in :func:`_quantize_aware`."""
    from ..models import train
    if point["pattern"] == "smartdeal":
        from ..prune import smartdeal_freeze, smartdeal_trainable
        smartdeal_trainable(model)
        train(model, data, point["finetune_epochs"], seed=point["seed"] + 1)
        smartdeal_freeze(model)
    else:
        train(model, data, point["finetune_epochs"], seed=point["seed"] + 1)


def _quantize_aware(model, calibration, data, cfg, point):
    """``finetune = "qat"``: the masked-fine-tuned model with the core's fake quantisation
    (:func:`gsaccel.quantize_aware`), trained ``finetune_epochs`` more; compile then takes
    its frozen scales and weights as they are."""
    from ..api import quantize_aware
    from ..compile.qat import finetune
    from ..errors import GsaccelError
    if data is None:
        raise GsaccelError(f"finetune = \"qat\" needs training data: {point['model']} has "
                           f"none here (use a digits model, or finetune = \"masked\")")
    qmodel = quantize_aware(model, calibration, cfg=cfg)
    finetune(qmodel, data, epochs=point["finetune_epochs"], seed=point["seed"] + 2)
    return qmodel.eval()


def measure_point(point, source=None):
    """The measurements of one point (its :meth:`Point.inputs` dict): see the module
    docstring; the record's keys are columns of the results table."""
    import torch
    from ...boards.catalog import get_board
    from ..api import compile
    from ..bench.tiny import _short_reason
    from ..compile.native import compile_native
    from .spec import Point
    torch.set_num_threads(1)         # a worker has one CPU; several threads fight over it
    board = get_board(point["board"])
    cfg = Point(**point).core()
    model, calibration, data, dense_accuracy, float_accuracy = _prepared_model(
        point, cfg.lanes, source)
    if point["finetune"] == "qat":
        model = _quantize_aware(model, calibration, data, cfg, point)
    record = {"lanes_used": cfg.lanes, "encoding_used": cfg.encoding,
              "bank_depth_used": cfg.bank_depth, "weight_depth_used": cfg.weight_depth,
              "clock_mhz": board.clk_hz / 1e6, "dense_accuracy": dense_accuracy,
              "float_accuracy": float_accuracy}
    started = time.monotonic()
    report = compile_native(model, calibration, cfg, report_only=True)
    record["program"] = report.status
    if report.status == "no":
        record["reason"] = _short_reason(report)
        return record
    program = compile(model, calibration, cfg=cfg)
    record["compile_s"] = round(time.monotonic() - started, 2)
    stats = program.stats()
    record.update(cycles=stats["cycles"], stall_cycles=stats["stall_cycles"],
                  latency_ms=1e3 * stats["cycles"] / board.clk_hz,
                  utilisation=stats["utilisation"], weight_bytes=stats["weight_bytes"],
                  nnz=stats["nnz"], phases=stats["phases"],
                  streamed_bytes=stats["streamed_bytes"])
    if data is not None:
        # Accuracy of the compiled program itself (int8 activations, the core's weight
        # code): the golden model, which the RTL equals bit for bit.
        outputs = program.run_golden_int(data.x_test.numpy(), stale=False)
        record["accuracy"] = float((outputs.argmax(1) == data.y_test.numpy()).mean())
    if point["rtl"] and point["rtl_inputs"]:
        if report.status != "fits":
            record["rtl_check"] = "skipped: phased"
        else:
            inputs = (data.x_test[:point["rtl_inputs"]] if data is not None
                      else calibration[:point["rtl_inputs"]]).numpy()
            record["rtl_check"] = _run_on_rtl(program, cfg, inputs, stats["cycles"])
    return record


def _run_on_rtl(program, cfg, inputs, cycles):
    """``"yes"`` once every input ran on the Verilator RTL of ``cfg`` with outputs and
    counters equal to the golden model's; else raises."""
    from ..bench.conv import check_program
    from ..errors import GsaccelError
    from ..runtime.device import GoldenDevice
    from ..runtime.targets import connect
    with connect("sim", cfg=cfg, timeout=600) as sim, GoldenDevice(cfg) as reference:
        sim.load(program)
        reference.load(program)
        _, counters = check_program("sweep", sim, reference, program, inputs)
    if counters["cycles"] != cycles:
        raise GsaccelError(f"RTL ran {counters['cycles']} cycles, the cycle model says "
                           f"{cycles}")
    return "yes"


# Builds ---------------------------------------------------------------------------------------

def build_core(inputs, key):
    """Build ``inputs["config"]`` on ``inputs["board"]`` into
    ``<cache>/sweep-builds/<key>`` (on the machine that runs it); the record holds each
    resource's use and the device's capacity, Fmax, the target and ``core_fit``."""
    from ...boards.build import FitError, TimingError, build_board
    from ...boards.catalog import get_board
    from ...hw.config import CoreConfig
    from ...sim.build import cache_root
    board = get_board(inputs["board"])
    config = CoreConfig(**inputs["config"])
    out_dir = cache_root() / "sweep-builds" / key
    try:
        result, fit = build_board(board, config=config, out_dir=out_dir,
                                  seed=inputs["seed"]), "yes"
    except TimingError as error:
        result, fit = error.result, "timing"
    except FitError as error:
        return {"core_fit": "no", "build_note": str(error).splitlines()[0][:300]}
    record = {"core_fit": fit, "fmax_mhz": result.fmax_mhz, "target_mhz": result.target_mhz,
              "build_s": round(result.seconds, 1), "bitstream": str(result.bitstream)}
    for kind, (used, available) in result.resources.items():
        record[kind.lower()] = used
        record[f"{kind.lower()}_available"] = available
    return record
