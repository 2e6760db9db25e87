"""The whole flow on the digits set: train, prune, compile, run on the RTL, compare.

``gsaccel demo`` (and ``make demo``) calls :func:`run_demo`: train the 64-128-64-10 digits
MLP, prune it (default GS-gather 75 % for V = 8) and fine-tune with the masks, compile it,
then run every test image on the golden model and on the chosen target (default ``sim``,
the Verilator-compiled core), and print float vs golden vs target accuracy, cycles per
inference, utilisation and weight bytes.

The target is opened first, before any training: a board reports its core, and a ``sim``
target whose toolchain is missing (Verilator, make, a C++ compiler) fails at once with the
one-line :class:`~gsaccel.sw.errors.ToolNotFound` that names the tool and its fix. Nothing
falls back silently: golden against golden runs only when asked for, with ``target="golden"``.
"""

import logging
import time

import numpy as np

from .errors import ToolNotFound

__all__ = ["run_demo", "DemoResult"]

logger = logging.getLogger(__name__)


class DemoResult(dict):
    """The numbers the demo prints (a dict, so it can be dumped as JSON)."""


def run_demo(*, target="sim", lanes=8, sparsity=0.75, pattern="gs-gather", seed=0,
             epochs=20, finetune_epochs=10, console=None):
    """Run the digits demo; return a :class:`DemoResult`.

    Parameters
    ----------
    target : str
        Where the compiled program runs besides golden: ``sim``, ``golden`` (the golden model
        against itself: checks the flow, not the RTL) or ``serial:PORT[@BAUD]``.
    lanes, sparsity, pattern, seed
        V, the pruned fraction, the pruning pattern (``gsaccel.sw.prune.PRUNE_PATTERNS``) and
        the seed of the data split, initialisation and minibatches. A ``serial:`` target's
        board says what its core is (HELLO), and its V replaces ``lanes``.

    Raises
    ------
    ToolNotFound
        If the ``sim`` target cannot be built (Verilator, make or a C++ compiler missing),
        before anything is trained.
    """
    import torch

    # These models are tiny: one thread is faster than several fighting for shared cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_demo(target=target, lanes=lanes, sparsity=sparsity, pattern=pattern,
                         seed=seed, epochs=epochs, finetune_epochs=finetune_epochs,
                         console=console or _console())
    finally:
        torch.set_num_threads(threads)


def _run_demo(*, target, lanes, sparsity, pattern, seed, epochs, finetune_epochs, console):
    from ..hw.config import CoreConfig
    from .runtime.device import GoldenDevice
    from .runtime.targets import connect, parse_target

    # Open the target before pruning: a board's core is what its bitstream made it (HELLO),
    # so prune and compile for that core; the sim target is built for the lanes, and a
    # missing toolchain stops the demo here rather than after the training.
    kind, _, _ = parse_target(target)
    if kind == "golden":
        device = GoldenDevice(CoreConfig(lanes=lanes))
        console.print("[bold yellow]Target golden: the golden model runs against itself; this "
                      "checks the flow, nothing runs on the RTL (the default target sim "
                      "does).[/]")
    elif kind == "sim":
        try:
            device = connect(target, cfg=CoreConfig(lanes=lanes))
        except ToolNotFound as error:
            raise ToolNotFound(f"{error} (or run `gsaccel demo --target golden`: the golden "
                               f"model alone, not the RTL)") from None
    else:
        device = connect(target)
    with device:
        return _train_prune_run(
            target=target, cfg=device.config, device=device, sparsity=sparsity,
            pattern=pattern, seed=seed, epochs=epochs, finetune_epochs=finetune_epochs,
            console=console)


def _train_prune_run(*, target, cfg, device, sparsity, pattern, seed, epochs,
                     finetune_epochs, console):
    import torch
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)
    from rich.table import Table

    from .compile import compile
    from .runtime.device import GoldenDevice
    from .models import DigitsMLP, digits_data, evaluate, train
    from .prune import prune

    lanes = cfg.lanes
    result = DemoResult(target=target, lanes=lanes, sparsity=sparsity, pattern=pattern,
                        seed=seed)
    start = time.monotonic()
    torch.manual_seed(seed)
    data = digits_data(seed)
    model = DigitsMLP()
    console.print(f"[bold]1. train[/] DigitsMLP 64-128-64-10 on {len(data.x_train)} digits "
                  f"({epochs} epochs)")
    train(model, data, epochs, seed=seed)
    result["dense_accuracy"] = evaluate(model, data)
    console.print(f"[bold]2. prune[/] {pattern} {sparsity:.0%} for V={lanes}, fine-tune "
                  f"{finetune_epochs} epochs")
    prune(model, pattern, sparsity, lanes=lanes)
    if pattern == "smartdeal":
        # Train C (straight-through pow2) and B, not a free weight that would leave C·B.
        from .prune import smartdeal_freeze, smartdeal_trainable
        smartdeal_trainable(model)
        train(model, data, finetune_epochs, seed=seed + 1)
        smartdeal_freeze(model)
    else:
        train(model, data, finetune_epochs, seed=seed + 1)
    model.eval()
    result["float_accuracy"] = evaluate(model, data)

    console.print("[bold]3. compile[/] calibrating on 512 training images")
    program = compile(model, data.x_train[:512], cfg=cfg)
    stats = program.stats()
    result.update(weight_bytes=stats["weight_bytes"], nnz=stats["nnz"], groups=stats["groups"],
                  predicted_cycles=stats["cycles"])
    dense = compile_dense_bytes(program)
    result["dense_int8_bytes"] = dense

    x = data.x_test.numpy()
    y = data.y_test.numpy()
    with torch.no_grad():
        float_logits = model(data.x_test).numpy()

    golden = GoldenDevice(cfg)
    golden.load(program)
    golden_out = golden.infer(x)
    result["golden_accuracy"] = float((golden_out.argmax(1) == y).mean())
    result["golden_float_agreement"] = float((golden_out.argmax(1) ==
                                              float_logits.argmax(1)).mean())

    result["ran_on"] = target
    console.print(f"[bold]4. run[/] {len(x)} test images on {target}")
    outputs = []
    totals = {}
    device.load(program)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"inference on {target}", total=len(x))
        for begin in range(0, len(x), 25):
            batch = x[begin:begin + 25]
            outputs.append(device.infer(batch))
            for name, value in device.counters.items():
                totals[name] = totals.get(name, 0) + value
            progress.advance(task, len(batch))
    target_out = np.concatenate(outputs)
    result["target_accuracy"] = float((target_out.argmax(1) == y).mean())
    result["bit_exact"] = bool(np.array_equal(target_out, golden_out))
    result["cycle_exact"] = all(totals[name] == golden.counters[name]
                                for name in golden.counters) and \
        totals["cycles"] == len(x) * stats["cycles"]
    n = totals["inferences"]
    result["cycles_per_inference"] = totals["cycles"] / n
    result["stall_cycles_per_inference"] = totals["stall_cycles"] / n
    result["utilisation"] = totals["busy_lane_cycles"] / (lanes * totals["groups"])
    result["seconds"] = time.monotonic() - start

    table = Table(title=f"digits MLP, {pattern} {sparsity:.0%}, V={lanes}, seed {seed}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("float accuracy (dense)", f"{result['dense_accuracy']:.2%}")
    table.add_row("float accuracy (pruned)", f"{result['float_accuracy']:.2%}")
    table.add_row("golden accuracy (int8 act, pow2 weights)", f"{result['golden_accuracy']:.2%}")
    table.add_row(f"{target} accuracy", f"{result['target_accuracy']:.2%}")
    table.add_row("golden vs float argmax agreement", f"{result['golden_float_agreement']:.2%}")
    table.add_row(f"{target} == golden, bit for bit", "yes" if result["bit_exact"] else "NO")
    table.add_row(f"{target} counters == golden cycle model",
                  "yes" if result["cycle_exact"] else "NO")
    table.add_row("cycles per inference", f"{result['cycles_per_inference']:.0f}")
    table.add_row("cycles per inference, golden cycle model", str(result["predicted_cycles"]))
    table.add_row("stall cycles per inference", f"{result['stall_cycles_per_inference']:.0f}")
    table.add_row("lane utilisation", f"{result['utilisation']:.1%}")
    table.add_row("weight bytes (.gsf, packed)", str(result["weight_bytes"]))
    table.add_row("dense int8 weight bytes", str(dense))
    table.add_row("wall time", f"{result['seconds']:.1f} s")
    console.print(table)
    return result


def _console():
    from rich.console import Console
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 100)
    return console


def compile_dense_bytes(program):
    """Bytes of the same layers stored dense in int8 (the baseline the packing is against):
    each GS layer's kernel in its GEMM view, rows x columns, and 9 per basis."""
    total = 0
    for layer in program.layers:
        if layer.kind == "gs":
            rows, cols = layer.matrix.shape
            total += rows * cols
        elif layer.kind == "basis":
            total += 9
    return total
