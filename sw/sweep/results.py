"""The results of a sweep: one row per point (its axes, its measurements and its core's
build), the Pareto front marked, written as CSV and Parquet (when pyarrow is installed),
JSON lines, a markdown page and plots (latency vs LUTs, accuracy vs latency)."""

import csv
import json
import math
from pathlib import Path

__all__ = ["OBJECTIVES", "pareto_front", "mark_pareto", "eligible", "write_results",
           "COLUMNS", "markdown_table"]

#: Objectives of the front: (column, "min" | "max"). One a sweep measured on none of its
#: points (no build: no LUTs; no digits model: no accuracy) is left out.
OBJECTIVES = (("latency_ms", "min"), ("accuracy", "max"), ("lut", "min"))

#: Columns in table order (a row may hold more; they follow in the CSV).
COLUMNS = ("key", "model", "board", "lanes", "encoding", "bank_depth", "weight_depth",
           "pattern", "sparsity", "seed", "status", "program", "cycles", "stall_cycles",
           "latency_ms", "clock_mhz", "utilisation", "weight_bytes", "nnz", "phases",
           "streamed_bytes", "dense_accuracy", "float_accuracy", "accuracy", "rtl_check", "lut",
           "lut_available", "ff", "ff_available", "bram", "bram_available", "dsp",
           "dsp_available", "spram", "spram_available", "fmax_mhz", "target_mhz", "core_fit",
           "pareto", "reason", "error", "build_error", "build_note", "compile_s", "seconds",
           "build_s", "host", "cached")


def eligible(row):
    """Whether a row may be on the front: measured without error, its program fits the core
    in one load (a phased one streams its weights every inference: its latency is the
    link's), and its core, if built, fits the device and meets the board's clock."""
    return (row.get("status") == "ok" and row.get("program") == "fits"
            and row.get("core_fit") not in ("no", "timing") and not row.get("build_error"))


def _value(row, column):
    value = row.get(column)
    if value is None or value == "" or isinstance(value, float) and math.isnan(value):
        return None
    return float(value)


def pareto_front(rows, objectives=None):
    """Indices of the rows on the Pareto front: the :func:`eligible` rows that no other
    eligible row dominates (at least as good in every objective, better in one). Rows equal
    in every objective are all on it.

    ``objectives``: (column, "min" | "max") pairs; default :data:`OBJECTIVES` less those no
    eligible row has. Eligible rows missing a value of an objective are left out (they
    cannot be compared).
    """
    candidates = [i for i, row in enumerate(rows) if eligible(row)]
    if objectives is None:
        objectives = [(column, sense) for column, sense in OBJECTIVES
                      if any(_value(rows[i], column) is not None for i in candidates)]
    for column, sense in objectives:
        if sense not in ("min", "max"):
            raise ValueError(f"Objective sense must be min or max, not {sense!r} ({column})")
    vectors = {}
    for i in candidates:
        values = [_value(rows[i], column) for column, _ in objectives]
        if None not in values:
            vectors[i] = tuple(v if sense == "min" else -v
                               for v, (_, sense) in zip(values, objectives))

    def dominates(a, b):
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    return [i for i, v in vectors.items()
            if not any(dominates(w, v) for j, w in vectors.items() if j != i)]


def mark_pareto(rows, objectives=None):
    """Set every row's ``pareto`` (True on the front); return the objectives used."""
    if objectives is None:
        candidates = [row for row in rows if eligible(row)]
        objectives = [(column, sense) for column, sense in OBJECTIVES
                      if any(_value(row, column) is not None for row in candidates)]
    front = set(pareto_front(rows, objectives))
    for i, row in enumerate(rows):
        row["pareto"] = i in front
    return objectives


# Files ----------------------------------------------------------------------------------------

def _columns(rows):
    extra = sorted({key for row in rows for key in row} - set(COLUMNS))
    return list(COLUMNS) + extra


def write_csv(rows, path):
    columns = _columns(rows)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


def write_parquet(rows, path):
    """Write ``rows`` as Parquet if pyarrow is installed (``gsaccel[sweep]`` installs it);
    return whether it was. Every column keeps one type: a column mixing types (an axis of
    numbers and the board's default, say) is written as text."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        return False
    data = {}
    for column in _columns(rows):
        values = [row.get(column) for row in rows]
        kinds = {type(v) for v in values if v is not None}
        if kinds == {int, float}:
            values = [None if v is None else float(v) for v in values]
        elif len(kinds) > 1:
            values = [None if v is None else str(v) for v in values]
        data[column] = values
    pyarrow.parquet.write_table(pyarrow.table(data), path)
    return True


def _fmt(value, kind=""):
    if value is None or value == "":
        return ""
    if kind == "pct":
        return f"{100 * value:.1f}"
    if kind == "ms":
        return f"{value:.4f}" if value < 1 else f"{value:.3f}" if value < 100 else f"{value:.0f}"
    if kind == "mhz":
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "/")


def _resource(row, kind):
    used = row.get(kind)
    if used is None:
        return ""
    available = row.get(f"{kind}_available")
    return f"{used}/{available}" if available else str(used)


def markdown_table(rows):
    """One markdown line per row (a ★ marks the front)."""
    lines = ["| front | model | board | V | enc | pattern | sparsity | fit | cycles | "
             "latency (ms) | util (%) | weight bytes | accuracy (%) | float acc. (%) | "
             "RTL = golden | LUT | FF | BRAM | DSP | Fmax (MHz) | core fit | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---"
             "|---|---|"]
    for row in rows:
        note = (row.get("error") or row.get("reason") or row.get("build_error")
                or row.get("build_note") or "")
        sparsity = "" if row.get("pattern") == "dense" else _fmt(row.get("sparsity"), "pct")
        lines.append("| " + " | ".join([
            "★" if row.get("pareto") else "", row.get("model", ""), row.get("board", ""),
            _fmt(row.get("lanes_used", row.get("lanes"))),
            _fmt(row.get("encoding_used", row.get("encoding"))), row.get("pattern", ""),
            sparsity, _fmt(row.get("program") if row.get("status") == "ok" else "error"),
            _fmt(row.get("cycles")), _fmt(row.get("latency_ms"), "ms"),
            _fmt(row.get("utilisation"), "pct"), _fmt(row.get("weight_bytes")),
            _fmt(row.get("accuracy"), "pct"), _fmt(row.get("float_accuracy"), "pct"),
            _fmt(row.get("rtl_check") or ("off" if row.get("rtl") is False else "")),
            _resource(row, "lut"), _resource(row, "ff"),
            _resource(row, "bram"), _resource(row, "dsp"), _fmt(row.get("fmax_mhz"), "mhz"),
            _fmt(row.get("core_fit")), _fmt(note[:160])]) + " |")
    return "\n".join(lines)


def _label(row):
    what = "dense" if row.get("pattern") == "dense" else \
        f"{row.get('pattern')} {100 * row.get('sparsity', 0):.0f}%"
    core = f"V{row.get('lanes_used', row.get('lanes'))}"
    # The depths, when the sweep set them: they tell apart points of one V.
    core += "".join(f" {short}{row[name]}" for name, short in (("bank_depth", "a"),
                                                                ("weight_depth", "w"))
                    if row.get(name) is not None)
    return f"{core} {what}"


def _plot(rows, x_column, y_column, x_label, y_label, title, path, *, y_scale=1.0):
    """Scatter ``y`` against ``x`` for the measured rows having both (colour by pattern;
    a row that may not be on the front, :func:`eligible`, as a cross; the front ringed);
    None if no row has both."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    points = [row for row in rows if row.get("status") == "ok"
              and _value(row, x_column) is not None and _value(row, y_column) is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    patterns = sorted({row["pattern"] for row in points})
    for colour, pattern in enumerate(patterns):
        for candidates in (True, False):
            mine = [row for row in points if row["pattern"] == pattern
                    and eligible(row) == candidates]
            if mine:
                ax.scatter([_value(r, x_column) for r in mine],
                           [y_scale * _value(r, y_column) for r in mine], s=28,
                           color=f"C{colour}", marker="o" if candidates else "x",
                           label=pattern if candidates else
                           f"{pattern} (phased, or core misses clock / device)")
    front = [row for row in points if row.get("pareto")]
    if front:
        ax.scatter([_value(r, x_column) for r in front],
                   [y_scale * _value(r, y_column) for r in front], s=110, facecolors="none",
                   edgecolors="k", label="Pareto front")
    for row in points:
        ax.annotate(_label(row), (_value(row, x_column), y_scale * _value(row, y_column)),
                    fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results(rows, out_dir, *, title, summary, objectives):
    """Write ``sweep.csv``, ``sweep.jsonl``, ``sweep.parquet`` (with pyarrow), ``sweep.md``
    and ``img/sweep-*.png`` into ``out_dir``; return the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "sweep.csv", out_dir / "sweep.jsonl"]
    write_csv(rows, written[0])
    with open(written[1], "w") as file:
        for row in rows:
            file.write(json.dumps(row, sort_keys=True) + "\n")
    if write_parquet(rows, out_dir / "sweep.parquet"):
        written.append(out_dir / "sweep.parquet")
    plots = [
        _plot(rows, "lut", "latency_ms", "LUTs (nextpnr)", "latency per inference (ms)",
              "latency vs LUTs (built cores)", out_dir / "img" / "sweep-latency-luts.png"),
        _plot(rows, "latency_ms", "accuracy", "latency per inference (ms, board clock)",
              "accuracy of the compiled program (golden, %)", "accuracy vs latency",
              out_dir / "img" / "sweep-accuracy-latency.png", y_scale=100.0),
    ]
    written += [plot for plot in plots if plot is not None]
    front = [row for row in rows if row.get("pareto")]
    front.sort(key=lambda row: _value(row, "latency_ms") or 0.0)
    names = ", ".join(f"{column} ({sense})" for column, sense in objectives) or "none"
    missing = []
    if plots[0] is None:
        missing.append("latency vs LUTs: no point has a built core (set build = true)")
    if plots[1] is None:
        missing.append("accuracy vs latency: no point has an accuracy (digits models only)")
    text = "\n".join([
        f"# {title}", "", summary, "",
        f"## Pareto front ({len(front)} of {len(rows)} points; objectives: {names})", "",
        "A point can be on the front when it ran without error, its program fits the core "
        "in one load and its core (if built) fits the device and meets the board's clock.",
        "", markdown_table(front) if front else "No point qualifies.", "",
        *[f"![{p.stem}](img/{p.name})" for p in plots if p is not None],
        *[f"No plot of {m}." for m in missing], "",
        "## Every point", "", markdown_table(rows), ""])
    (out_dir / "sweep.md").write_text(text)
    written.append(out_dir / "sweep.md")
    return written
