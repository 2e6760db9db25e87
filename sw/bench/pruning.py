"""Accuracy of each pruning pattern on the digits models (``gsaccel bench pruning``).

For each seed, model (:class:`~gsaccel.sw.models.DigitsMLP`, :class:`~gsaccel.sw.models.DigitsCNN`),
pattern and sparsity: train dense, prune every Linear/Conv2d layer and fine-tune (SmartDeal:
C and B trained as such), every pattern within the dense model's training budget plus the
fine-tuning's, which the dense baseline gets too. 1×N spends that budget on a fresh model: a
dense warm-up, rows rearranged for 1×N (:func:`~gsaccel.sw.prune.rearrange_rows`), then
gradual pruning with the cubic schedule; SmartDeal with a 1×N C′ factors that model before
its last epochs. Then it reports test accuracy, real sparsity and the bytes of every layer
packed with :meth:`GSMatrix.from_dense` (pow2 codes; conv layers in their GEMM view). The table
replaces the section between the ``bench:pruning`` markers of ``<out_dir>/pruning.md``; the
plot goes to ``<out_dir>/img/pruning.png``.

The quantisation rows (between the ``bench:qat`` markers) compile the pruned digits MLP at
75 % for the pow2 core, once as it is and once after quantisation-aware fine-tuning
(:func:`gsaccel.quantize_aware`), and run the programs on the golden model (bit-exact to the
RTL): device accuracy on the test split and argmax agreement of the device with the model
it was compiled from. The DS-CNN rows do the same for :class:`~gsaccel.sw.models.DSCNN` (16
and 64 channels, dense) on the digits resized to its 49×10 input.
"""

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["run", "SETTINGS", "QUICK_SETTINGS", "PATTERN_RUNS", "QAT_LABELS", "measure",
           "time_gs_layer", "qat_measure"]

logger = logging.getLogger(__name__)

LANES = 8

#: (label, prune() pattern, per_row, options) of every row of the table.
PATTERN_RUNS = (
    ("GS-gather e=1", "gs-gather", 1, {}),
    (f"GS-gather e={LANES}", "gs-gather", LANES, {}),
    ("GS-scatter e=1", "gs-scatter", 1, {}),
    ("1×N (SUBP, rearranged)", "1xN", 1, {}),
    ("SmartDeal (C' 1×N)", "smartdeal", 1, {}),
    ("SmartDeal (C' GS-gather)", "smartdeal", 1, {"c_pattern": "gs-gather"}),
    ("unstructured", "unstructured", 1, {}),
)


#: The PATTERN_RUNS rows (at :attr:`Settings.qat_sparsity`, MLP) compiled for pow2, with and
#: without quantisation-aware fine-tuning.
QAT_LABELS = ("GS-gather e=1", f"GS-gather e={LANES}", "1×N (SUBP, rearranged)",
              "SmartDeal (C' 1×N)", "SmartDeal (C' GS-gather)")
#: The learning rate of QAT fine-tuning decays in these steps (equal shares of the epochs).
QAT_DECAY = (1.0, 0.5, 0.25, 0.1)


@dataclass(frozen=True)
class Settings:
    seeds: tuple
    models: tuple
    sparsities: tuple
    dense_epochs: int
    finetune_epochs: int
    lr: tuple = (("MLP", 3e-3), ("CNN", 1e-2))
    finetune_lr: tuple = (("MLP", 1e-3), ("CNN", 3e-3))
    smartdeal_lr: float = 5e-3      # C's exponents only move under larger steps
    #: 1×N (and SmartDeal with a 1×N C'): a fresh model, trained dense for onebyn_warmup
    #: epochs, its rows rearranged (:func:`~gsaccel.sw.prune.rearrange_rows`), then pruned
    #: with the cubic schedule over the first onebyn_ramp of the rest of the dense +
    #: fine-tuning budget, at onebyn_lr (larger steps than fine-tuning's: on the MLP at 75 %
    #: they recovered more of what the shared keep decisions cost).
    onebyn_warmup: int = 10
    onebyn_ramp: float = 0.5
    onebyn_lr: tuple = (("MLP", 1e-2), ("CNN", 1e-2))
    #: SmartDeal with a 1×N C': of that budget, the last smartdeal_epochs fine-tune C and B
    #: after the 1×N model is factored.
    smartdeal_epochs: int = 10
    #: Layers left dense: the CNN's first conv has 72 weights (9 per output), too few to prune.
    exclude: tuple = (("MLP", ()), ("CNN", ("0",)))
    qat_sparsity: float = 0.75
    qat_epochs: int = 32
    #: DS-CNN widths, seeds, float training epochs and QAT epochs on the resized digits.
    dscnn_channels: tuple = (16, 64)
    dscnn_seeds: tuple = (0,)
    dscnn_epochs: int = 30
    dscnn_lr: float = 3e-3
    dscnn_qat_epochs: int = 8


SETTINGS = Settings(seeds=(0, 1, 2), models=("MLP", "CNN"), sparsities=(0.5, 0.75, 0.875),
                    dense_epochs=25, finetune_epochs=15)
QUICK_SETTINGS = Settings(seeds=(0,), models=("MLP",), sparsities=(0.75,), dense_epochs=10,
                          finetune_epochs=3, onebyn_warmup=5, smartdeal_epochs=2, qat_epochs=2,
                          dscnn_channels=(16,), dscnn_epochs=2, dscnn_qat_epochs=1)

_START = "<!-- bench:pruning:start -->"
_END = "<!-- bench:pruning:end -->"
_QAT_START = "<!-- bench:qat:start -->"
_QAT_END = "<!-- bench:qat:end -->"


def _build(model_name):
    from ..models import DigitsCNN, DigitsMLP
    return DigitsMLP() if model_name == "MLP" else DigitsCNN()


def _quantise_pow2(matrix):
    """Round kept weights to pow2 integers (exponents 0..15, by the one rounding rule
    :func:`gsaccel.sw.format.pow2_round`) for measuring packed bytes; a kept weight never
    rounds to zero, so the pattern is preserved."""
    from ..format import pow2_round
    kept = matrix != 0
    if not kept.any():
        return np.zeros(matrix.shape, dtype=np.int64)
    scale = np.abs(matrix[kept]).max() / 2.0 ** 15
    return (pow2_round(matrix / scale) * kept).astype(np.int64)


def measure(model, lanes=LANES):
    """(real sparsity, packed bytes, utilisation) over the model's prunable layers.

    Each layer is the matrix the engine runs: its hardware GEMM view (a conv's columns
    ``tap·Cp + c``, channels padded to V; a dense conv on fewer channels than lanes, which the
    compiler runs im2col'd, ``tap·C + c``; C' for SmartDeal). Sparsity counts the zeros among
    the layer's own weights (not the structural zeros of padding channels); bytes are the
    .gsf sizes of every layer packed under its pattern (SmartDeal adds 9 bytes of B)."""
    from ..compile.quantize import masked_gemm_view
    from ..format import GSMatrix
    from ..prune import pattern_info, prunable_layers, smartdeal_cprime
    zeros = total = nbytes = nnz = lanes_issued = 0
    for _, module in prunable_layers(model):
        info = pattern_info(module)
        order = getattr(module, "gsaccel_row_order", None)
        order = None if order is None else order.cpu().numpy()
        if info is not None and info.pattern == "smartdeal":
            matrix, pattern, per_row = smartdeal_cprime(module), info.c_pattern, info.per_row
            own = np.ones(matrix.shape, bool)
            nbytes += 9
        elif info is None and _sent_im2col(module, lanes):
            # A dense conv on fewer channels than lanes (the first layer): the compiler sends
            # its input im2col'd and runs it as a 1x1 conv over kh·kw·C channels.
            matrix = module.weight.detach().double().numpy().reshape(module.out_channels, -1)
            matrix = matrix.reshape(module.out_channels, module.in_channels, -1) \
                .transpose(0, 2, 1).reshape(module.out_channels, -1)
            own, pattern, per_row = np.ones(matrix.shape, bool), "dense", 1
        else:
            matrix, _ = masked_gemm_view(module, lanes)
            own = _own_weights(module, lanes)
            if info is None:
                pattern, per_row = ("dense" if own.all() else "unstructured"), 1
            else:
                pattern, per_row = info.pattern, info.per_row
        packed = GSMatrix.from_dense(_quantise_pow2(matrix), pattern, lanes, per_row, "pow2",
                                     row_order=order if pattern == "gs-scatter" else None)
        stats = packed.stats()
        zeros += int(((matrix == 0) & own).sum())
        total += int(own.sum())
        nbytes += stats["bytes"]
        nnz += stats["nnz"]
        lanes_issued += lanes * stats["groups"]
    return zeros / total, nbytes, nnz / lanes_issued


def _sent_im2col(module, lanes):
    from torch import nn
    return isinstance(module, nn.Conv2d) and module.groups == 1 and module.in_channels < lanes


def _own_weights(module, lanes):
    """Where the layer's own weights land in its GEMM view (the structural zeros excluded)."""
    from ..prune import gemm_layout
    return gemm_layout(module, lanes).candidates()


def _one_by_n_model(data, sparsity, seed, model_name, settings, epochs, options):
    """The 1×N recipe: a fresh model (seeded apart from the dense one) trained dense for
    ``settings.onebyn_warmup`` epochs, its rows rearranged for 1×N, then ``epochs − warmup``
    epochs at ``onebyn_lr`` under the cubic schedule (full sparsity after ``onebyn_ramp`` of
    them)."""
    import torch

    from ..models import train
    from ..prune import PruningScheduler, rearrange_rows
    exclude = dict(settings.exclude)[model_name]
    torch.manual_seed(1000 + seed)
    model = _build(model_name)
    warmup = min(settings.onebyn_warmup, epochs - 1)
    train(model, data, warmup, lr=dict(settings.lr)[model_name], seed=seed)
    rearrange_rows(model, sparsity, LANES, exclude=exclude)
    rest = epochs - warmup
    scheduler = PruningScheduler(model, "1xN", sparsity, LANES, t0=0,
                                 t1=max(1, round(settings.onebyn_ramp * rest)), seed=seed,
                                 exclude=exclude, **options)
    train(model, data, rest, lr=dict(settings.onebyn_lr)[model_name], seed=seed + 1,
          on_epoch=scheduler.step)
    return model


def _one_run(dense, data, pattern, per_row, options, sparsity, seed, model_name, settings):
    finetune_lr = dict(settings.finetune_lr)[model_name]
    exclude = dict(settings.exclude)[model_name]
    budget = settings.dense_epochs + settings.finetune_epochs

    from ..models import train
    from ..prune import prune, smartdeal_freeze, smartdeal_trainable
    if pattern == "1xN":
        # The same budget as dense + fine-tuning, spent on a warm-up, rearranged rows and
        # gradual pruning (_one_by_n_model).
        return _one_by_n_model(data, sparsity, seed, model_name, settings, budget, options)
    if pattern == "smartdeal" and options.get("c_pattern", "1xN") == "1xN":
        # C' inherits its 1×N structure from the 1×N recipe's model: factored after
        # budget − smartdeal_epochs epochs of it, then C and B fine-tuned for the rest.
        model = _one_by_n_model(data, sparsity, seed, model_name, settings,
                                budget - settings.smartdeal_epochs, {})
        epochs = settings.smartdeal_epochs
    else:
        model = copy.deepcopy(dense)
        epochs = settings.finetune_epochs
    prune(model, pattern, sparsity, LANES, per_row, exclude=exclude, **options)
    if pattern == "smartdeal":
        # Fine-tune C (straight-through pow2 rounding, zeros fixed) and B directly.
        smartdeal_trainable(model)
    train(model, data, epochs, seed=seed,
          lr=settings.smartdeal_lr if pattern == "smartdeal" else finetune_lr)
    if pattern == "smartdeal":
        smartdeal_freeze(model)
    return model


def _core():
    from ...hw.config import CoreConfig
    # The default pow2 core with room for the DS-CNN's 49×10 maps (numerics do not depend
    # on the memory sizes).
    return CoreConfig(lanes=LANES, encoding="pow2", bank_depth=4096)


def staged_train(model, data, epochs, *, lr, seed):
    """:func:`gsaccel.sw.models.train` for ``epochs`` epochs with the learning rate decaying
    in the steps of :data:`QAT_DECAY` (the last steps get the remainder, at least one epoch
    in all)."""
    from ..models import train
    shares = np.diff(np.round(np.linspace(0, max(1, epochs), len(QAT_DECAY) + 1))).astype(int)
    for step, (factor, share) in enumerate(zip(QAT_DECAY, shares)):
        if share:
            train(model, data, int(share), lr=lr * factor, seed=seed + step)


def qat_measure(model, data, *, epochs, lr, seed, cfg=None, calibration=None):
    """Compile ``model`` for the pow2 core as it is (one-shot rounding), then make it
    quantisation-aware, fine-tune it ``epochs`` epochs (:func:`staged_train` from ``lr``) and
    compile that; run both programs on the golden model over ``data.x_test``.

    Returns
    -------
    dict
        ``float``: the model's test accuracy; ``oneshot``: the one-shot program's device
        accuracy, ``oneshot_agreement``: its argmax agreement with the float model; ``qat``:
        the fine-tuned fake-quantised model's accuracy, ``qat_device``: its program's device
        accuracy, ``qat_agreement``: device vs the fine-tuned model, ``qat_vs_float``: device
        vs the float model (before fine-tuning).
    """
    import torch

    from ..compile import compile
    from ..compile.qat import quantize_aware
    from ..models import evaluate
    cfg = cfg or _core()
    calibration = data.x_train if calibration is None else calibration
    x, labels = data.x_test.numpy(), data.y_test.numpy()
    model.eval()
    with torch.no_grad():
        reference = model(data.x_test).numpy().argmax(1)
    result = {"float": evaluate(model, data)}
    device = compile(model, calibration, cfg=cfg).run_golden(x).argmax(1)
    result.update(oneshot=float((device == labels).mean()),
                  oneshot_agreement=float((device == reference).mean()))
    qmodel = quantize_aware(model, calibration, cfg=cfg)
    staged_train(qmodel, data, epochs, lr=lr, seed=seed)
    result["qat"] = evaluate(qmodel, data)
    device = compile(qmodel, calibration, cfg=cfg).run_golden(x).argmax(1)
    with torch.no_grad():
        trained = qmodel(data.x_test).numpy().argmax(1)
    result.update(qat_device=float((device == labels).mean()),
                  qat_agreement=float((device == trained).mean()),
                  qat_vs_float=float((device == reference).mean()))
    return result


def resized_digits(seed):
    """The digits split with its 8×8 images resized (bilinear) to the DS-CNN's 1×49×10."""
    from torch.nn import functional

    from ..models import digits_data
    from ..models.digits import DigitsData
    data = digits_data(seed)

    def resize(x):
        return functional.interpolate(x, size=(49, 10), mode="bilinear", align_corners=False)

    return DigitsData(resize(data.x_train), data.y_train, resize(data.x_test), data.y_test)


def _collect_dscnn(settings, progress):
    import torch

    from ..models import DSCNN, train
    results = {}
    for seed in settings.dscnn_seeds:
        data = resized_digits(seed)
        for channels in settings.dscnn_channels:
            torch.manual_seed(seed)
            model = DSCNN(num_classes=10, channels=channels)
            train(model, data, settings.dscnn_epochs, lr=settings.dscnn_lr, seed=seed)
            row = qat_measure(model, data, epochs=settings.dscnn_qat_epochs,
                              lr=settings.dscnn_lr, seed=seed, calibration=data.x_train[:512])
            results.setdefault(channels, []).append(row)
            progress(f"seed {seed} DS-CNN {channels} ch: {row}")
    return results


def _collect(settings, progress):
    import torch

    from ..models import digits_data, evaluate, train
    results = {}      # (model, label, sparsity) -> list of (accuracy, sparsity, bytes, util)
    qat = {}          # (model, label) -> list of qat_measure dicts (dense: float accuracy)
    for seed in settings.seeds:
        data = digits_data(seed)
        for model_name in settings.models:
            torch.manual_seed(seed)
            dense = _build(model_name)
            train(dense, data, settings.dense_epochs, lr=dict(settings.lr)[model_name], seed=seed)
            # The dense baseline gets the same extra epochs as the pruned models' fine-tuning,
            # so that a difference is the pattern's, not the training budget's.
            baseline = copy.deepcopy(dense)
            train(baseline, data, settings.finetune_epochs,
                  lr=dict(settings.finetune_lr)[model_name], seed=seed)
            accuracy = evaluate(baseline, data)
            results.setdefault((model_name, "dense", 0.0), []).append(
                (accuracy, *measure(baseline)))
            progress(f"seed {seed} {model_name} dense {accuracy:.4f}")
            for label, pattern, per_row, options in PATTERN_RUNS:
                for sparsity in settings.sparsities:
                    model = _one_run(dense, data, pattern, per_row, options, sparsity, seed,
                                     model_name, settings)
                    accuracy = evaluate(model, data)
                    results.setdefault((model_name, label, sparsity), []).append(
                        (accuracy, *measure(model)))
                    progress(f"seed {seed} {model_name} {label} {sparsity}: {accuracy:.4f}")
                    # QAT starts at the learning rate the model last trained at.
                    lr = settings.smartdeal_lr if pattern == "smartdeal" else \
                        dict(settings.onebyn_lr if pattern == "1xN" else
                             settings.finetune_lr)[model_name]
                    if model_name == "MLP" and label in QAT_LABELS and \
                            sparsity == settings.qat_sparsity:
                        row = qat_measure(model, data, epochs=settings.qat_epochs, lr=lr,
                                          seed=seed)
                        qat.setdefault((model_name, label), []).append(row)
                        progress(f"seed {seed} {model_name} {label} {sparsity} pow2: {row}")
    return results, qat


def _table(results, settings):
    lines = ["| model | pattern | target sparsity | test accuracy (%) | Δ vs dense | real "
             "sparsity | packed bytes | lane utilisation |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for model_name in settings.models:
        dense = np.array([r[0] for r in results[(model_name, "dense", 0.0)]]) * 100
        for label in ["dense"] + [run[0] for run in PATTERN_RUNS]:
            for sparsity in ([0.0] if label == "dense" else settings.sparsities):
                rows = np.array(results[(model_name, label, sparsity)])
                acc = rows[:, 0] * 100
                delta = acc.mean() - dense.mean()
                lines.append(
                    f"| {model_name} | {label} | {sparsity:.1%} | {acc.mean():.2f} ± "
                    f"{acc.std():.2f} | {delta:+.2f} | {rows[:, 1].mean():.1%} | "
                    f"{rows[:, 2].mean():.0f} | {rows[:, 3].mean():.1%} |")
    return "\n".join(lines)


def _pct(values):
    values = np.asarray(values) * 100
    return f"{values.mean():.2f} ± {values.std():.2f}"


def _qat_table(results, qat, dscnn, settings):
    lines = ["| model | pattern | float accuracy (%) | pow2 one-shot: device accuracy (%) | "
             "one-shot: agreement with float | pow2 after QAT: device accuracy (%) | Δ vs "
             "dense float | QAT: agreement device vs fine-tuned model | QAT: device vs float "
             "model |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]

    def row(model, label, rows, reference):
        qat_device = np.array([r["qat_device"] for r in rows])
        delta = (qat_device.mean() - np.mean(reference)) * 100
        return (f"| {model} | {label} | {_pct([r['float'] for r in rows])} | "
                f"{_pct([r['oneshot'] for r in rows])} | "
                f"{_pct([r['oneshot_agreement'] for r in rows])} | {_pct(qat_device)} | "
                f"{delta:+.2f} | {_pct([r['qat_agreement'] for r in rows])} | "
                f"{_pct([r['qat_vs_float'] for r in rows])} |")

    if "MLP" in settings.models:
        dense = [r[0] for r in results[("MLP", "dense", 0.0)]]
        for label in QAT_LABELS:
            lines.append(row("MLP", f"{label} {settings.qat_sparsity:.0%}",
                             qat[("MLP", label)], dense))
    for channels, rows in dscnn.items():
        lines.append(row(f"DS-CNN {channels} ch", "dense", rows, [r["float"] for r in rows]))
    return "\n".join(lines)


def _replace_section(path, start, end, section, heading, after=None):
    """Put ``section`` (which holds its markers) between ``start`` and ``end`` of ``path``,
    or else, under ``heading``, right after the marker ``after`` (or at the end)."""
    if path.exists() and start in (text := path.read_text()) and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    elif path.exists() and after is not None and after in text:
        head, rest = text.split(after, 1)
        text = head + after + f"\n\n{heading}\n\n{section}" + rest
    elif path.exists():
        text = path.read_text().rstrip("\n") + f"\n\n{heading}\n\n{section}\n"
    else:
        text = f"# Pruning\n\n{heading}\n\n{section}\n"
    path.write_text(text)


def _plot(results, settings, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(settings.models), figsize=(6 * len(settings.models), 4),
                             squeeze=False)
    for ax, model_name in zip(axes[0], settings.models):
        dense = np.array([r[0] for r in results[(model_name, "dense", 0.0)]]) * 100
        ax.axhline(dense.mean(), color="k", linestyle="--", label="dense")
        for label, *_ in PATTERN_RUNS:
            means = [np.mean([r[0] for r in results[(model_name, label, s)]]) * 100
                     for s in settings.sparsities]
            stds = [np.std([r[0] for r in results[(model_name, label, s)]]) * 100
                    for s in settings.sparsities]
            ax.errorbar([s * 100 for s in settings.sparsities], means, yerr=stds, marker="o",
                        capsize=3, label=label)
        ax.set_title(f"Digits {model_name}, V = {LANES}")
        ax.set_xlabel("target sparsity (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(out_dir) / "img" / "pruning.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def time_gs_layer(size=4096, sparsity=0.875, lanes=LANES, per_row=1, seed=0):
    """Seconds to prune a size×size Gaussian layer with gs-gather and to decompose it into
    groups (``GSMatrix.from_dense``): (prune, pack, utilisation)."""
    from ..format import GSMatrix
    from ..prune import gs_mask
    weights = np.random.default_rng(seed).standard_normal((size, size)).astype(np.float32)
    started = time.perf_counter()
    mask, _ = gs_mask(weights, sparsity, lanes, per_row)
    pruned = time.perf_counter()
    matrix = GSMatrix.from_dense(mask.astype(np.int64), "gs-gather", lanes, per_row, "int8")
    packed = time.perf_counter()
    return pruned - started, packed - pruned, matrix.stats()["utilisation"]


def _lrs(pairs):
    return "/".join(f"{lr:g}" for _, lr in pairs)


def run(*, out_dir, quick=False, progress=None):
    """Run the sweep, write ``<out_dir>/pruning.md`` (bench section) and
    ``<out_dir>/img/pruning.png``; return the markdown section.

    ``quick`` runs one seed of the MLP at 75 % with short training and times a 1024² layer
    instead of 4096² (under 30 s)."""
    import torch
    settings = QUICK_SETTINGS if quick else SETTINGS
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.monotonic()
    try:
        say = progress or (lambda text: logger.info("%s", text))
        results, qat = _collect(settings, say)
        dscnn = _collect_dscnn(settings, say)
    finally:
        torch.set_num_threads(threads)
    elapsed = time.monotonic() - started
    budget = settings.dense_epochs + settings.finetune_epochs
    size = 1024 if quick else 4096
    timing = [(e, *time_gs_layer(size, per_row=e)) for e in (1, LANES)]
    plot = _plot(results, settings, out_dir)
    section = "\n".join([
        _START,
        f"Generated by `gsaccel bench pruning{' --quick' if quick else ''}` in {elapsed:.0f} s "
        f"(seeds {', '.join(map(str, settings.seeds))}; mean ± std over seeds; dense "
        f"{settings.dense_epochs} epochs (Adam, lr MLP/CNN {_lrs(settings.lr)}), then prune "
        f"(dense: don't) and fine-tune {settings.finetune_epochs} epochs (lr {_lrs(settings.finetune_lr)}, "
        f"SmartDeal {settings.smartdeal_lr:g}); 1×N: the same {budget} epochs as dense + "
        f"fine-tuning, from a fresh model: {settings.onebyn_warmup} dense (lr as dense), rows "
        f"rearranged (`rearrange_rows`), then {budget - settings.onebyn_warmup} epochs at lr "
        f"{_lrs(settings.onebyn_lr)} under the cubic schedule (full sparsity after "
        f"{round(settings.onebyn_ramp * (budget - settings.onebyn_warmup))}); SmartDeal with a "
        f"1×N C′: the 1×N recipe for {budget - settings.smartdeal_epochs} epochs, then factored "
        f"and C, B fine-tuned {settings.smartdeal_epochs} (with a GS-gather C′: factored from "
        f"the dense model, C, B fine-tuned {settings.finetune_epochs}); V = {LANES}; every "
        f"Linear and Conv2d pruned except the CNN's first conv; packed bytes = .gsf size of "
        f"every layer, pow2 codes, convs in GEMM view).", "",
        _table(results, settings), "",
        f"![accuracy vs sparsity](img/{plot.name})", "",
        f"GS-gather on a {size}×{size} Gaussian layer at 87.5 %, V = {LANES} (one thread; "
        f"prune = `gs_mask`, decompose = `GSMatrix.from_dense`):", "",
        "| e | prune (s) | decompose (s) | total (s) | utilisation |",
        "|---:|---:|---:|---:|---:|",
        *[f"| {e} | {p:.2f} | {d:.2f} | {p + d:.2f} | {u:.1%} |" for e, p, d, u in timing],
        _END])
    qat_section = "\n".join([
        _QAT_START,
        f"Generated by `gsaccel bench pruning{' --quick' if quick else ''}` with the table above "
        f"(seeds {', '.join(map(str, settings.seeds))}; mean ± std over seeds; V = {LANES}, "
        f"pow2 weights, every program run on the golden model (bit-exact to the RTL) over the "
        f"test split). MLP: the pruned, fine-tuned models of the table above at "
        f"{settings.qat_sparsity:.0%}; *one-shot* = `gsaccel.compile` of the float model "
        f"(error-feedback rounding, bias correction); *QAT* = `gsaccel.quantize_aware` on the "
        f"training inputs, fine-tuned {settings.qat_epochs} epochs (Adam from the learning rate "
        f"the model last trained at: GS {dict(settings.finetune_lr)['MLP']:g}, 1×N "
        f"{dict(settings.onebyn_lr)['MLP']:g}, SmartDeal {settings.smartdeal_lr:g}; decaying by "
        f"{'/'.join(f'{f:g}' for f in QAT_DECAY)} in equal shares), then compiled. DS-CNN: "
        f"`gsaccel.sw.models.DSCNN` (10 classes, seed "
        f"{', '.join(map(str, settings.dscnn_seeds))}) trained {settings.dscnn_epochs} epochs "
        f"(Adam, lr {settings.dscnn_lr:g}) on the digits resized to 1×49×10, QAT "
        f"{settings.dscnn_qat_epochs} epochs (lr {settings.dscnn_lr:g}, decaying alike), "
        f"calibrated on 512 training inputs. Δ vs dense "
        f"float: QAT device accuracy minus the dense float model's (MLP: the dense row above; "
        f"DS-CNN: its own float model).", "",
        _qat_table(results, qat, dscnn, settings), "",
        _QAT_END])
    path = Path(out_dir) / "pruning.md"
    _replace_section(path, _START, _END, section, "## Accuracy")
    _replace_section(path, _QAT_START, _QAT_END, qat_section,
                     "## Quantisation: pow2 with and without QAT", after=_END)
    section = section + "\n\n" + qat_section
    return section
