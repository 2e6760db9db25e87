"""``gsaccel sweep``: a 2 × 2 sweep of the digits MLP through a local Ray instance (golden and
cycle model, no RTL, no board build), a rerun from its cache, a failing point recorded beside
a good one, the Pareto marking against a hand-checked case, and the spec's checks."""

import csv
import json
import os
import time
from pathlib import Path

import pytest

from gsaccel.sw.cli.main import main
from gsaccel.sw.sweep import (SpecError, load_spec, make_spec, mark_pareto, pareto_front,
                              run_sweep)
from gsaccel.sw.sweep.driver import plan_tasks

#: Short training: the points measure the flow, not the best accuracy.
QUICK = {"epochs": 2, "finetune_epochs": 1, "rtl": False}


def _children(names=("raylet", "gcs_server", "ray::")):
    """This process's child processes whose name or command line is one of Ray's."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = next((line.split()[1] for line in status.splitlines()
                     if line.startswith("PPid:")), None)
        if ppid == str(os.getpid()) and any(name in status.splitlines()[0] + command
                                            for name in names):
            found.append(f"{entry.name}: {command[:80]}")
    return found


def test_ray_sweep_measures_every_point_then_reruns_from_its_cache(tmp_path):
    # One function, so that pytest-xdist runs the Ray sweep once.
    pytest.importorskip("ray")
    import ray
    out = tmp_path / "sweep"
    spec = make_spec({"model": ["digits-mlp"], "lanes": [4, 8], "sparsity": [0.5, 0.75]},
                     QUICK)
    result = run_sweep(spec, out, workers=2)
    assert not ray.is_initialized()
    assert "Ray" in result.where and (result.ran, result.cached, result.failed) == (4, 0, 0)
    rows = result.rows
    from gsaccel.boards.catalog import get_board
    clock_mhz = get_board(spec.axes["board"][0]).clk_hz / 1e6
    assert [(r["lanes"], r["sparsity"]) for r in rows] == [(4, 0.5), (4, 0.75), (8, 0.5),
                                                           (8, 0.75)]
    for row in rows:
        assert row["status"] == "ok" and row["program"] == "fits", row
        assert row["lanes_used"] == row["lanes"] and row["clock_mhz"] == clock_mhz
        assert row["cycles"] > 0 and row["latency_ms"] == pytest.approx(
            row["cycles"] / (1e3 * clock_mhz))
        assert 0.0 < row["accuracy"] <= 1.0 and 0.0 < row["utilisation"] <= 1.0
    # Twice the lanes, about half the cycles; three quarters pruned, about half of a half's.
    by = {(r["lanes"], r["sparsity"]): r["cycles"] for r in rows}
    assert by[8, 0.75] < by[4, 0.75] and by[4, 0.75] < by[4, 0.5]
    assert [i for i, r in enumerate(rows) if r["pareto"]] == pareto_front(rows)
    assert any(r["pareto"] for r in rows)
    with open(out / "sweep.csv") as file:
        table = list(csv.DictReader(file))
    assert [int(r["cycles"]) for r in table] == [r["cycles"] for r in rows]
    import pyarrow.parquet
    parquet = pyarrow.parquet.read_table(out / "sweep.parquet").to_pylist()
    assert [(r["lanes"], r["cycles"], r["pareto"]) for r in parquet] == \
        [(r["lanes"], r["cycles"], r["pareto"]) for r in rows]
    assert (out / "img" / "sweep-accuracy-latency.png").stat().st_size > 0
    assert not (out / "img" / "sweep-latency-luts.png").exists()     # nothing was built
    page = (out / "sweep.md").read_text()
    assert "## Pareto front" in page and "★" in page and "No plot of latency vs LUTs" in page
    assert load_spec(out / "sweep.toml") == make_spec(spec.axes, spec.settings,
                                                      source=str(out / "sweep.toml"))
    deadline = time.monotonic() + 15
    while _children() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _children() == []

    # The rerun reads every point from the cache and starts no runner.
    again = run_sweep(spec, out, local=True)
    assert (again.ran, again.cached, again.where) == (0, 4, "")
    assert all(row["cached"] for row in again.rows)
    keep = ("key", "cycles", "accuracy", "weight_bytes", "pareto")
    assert [{k: r[k] for k in keep} for r in again.rows] == \
        [{k: r[k] for k in keep} for r in rows]
    # A new axis value runs only the new points (planned, not run here).
    wider = make_spec({**spec.axes, "sparsity": [0.5, 0.75, 0.875]}, spec.settings)
    points, _, _ = plan_tasks(wider)
    cached = {key for _, key, _ in points if (out / "cache" / f"{key}.json").exists()}
    assert len(points) == 6 and len(cached) == 4


def test_a_failing_point_is_recorded_and_the_others_kept(tmp_path, capsys):
    module = tmp_path / "bad.py"
    module.write_text("from torch import nn\n\n"
                      "def make():\n"
                      "    model = nn.Sequential(nn.Linear(16, 8), nn.Sigmoid())\n"
                      "    model.input_shape = (16,)\n"
                      "    return model\n")
    status = main(["sweep", "--model", f"digits-mlp,{module}:make", "--lanes", "4",
                   "--sparsity", "0.5", "--no-rtl", "--epochs", "2", "--finetune-epochs", "1",
                   "--local", "--workers", "2", "-o", str(tmp_path / "out")])
    assert status == 1
    assert "1 of 2 points failed" in capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "out" / "sweep.jsonl").open()]
    good, bad = rows
    assert good["status"] == "ok" and good["cycles"] > 0 and good["pareto"]
    assert bad["status"] == "error" and "UnsupportedError" in bad["error"] \
        and "nn.Sigmoid" in bad["error"] and not bad["pareto"]
    assert "Traceback" in (tmp_path / "out" / "errors" / f"{bad['key']}.txt").read_text()
    cache = tmp_path / "out" / "cache"
    assert (cache / f"{good['key']}.json").exists()
    assert not (cache / f"{bad['key']}.json").exists()        # retried next time


def test_a_core_no_program_runs_on_is_not_built(tmp_path):
    # MobileNetV1 needs more activation words than the iCEBreaker's core has: the sweep
    # measures the point and never starts the core's build (minutes of nextpnr).
    spec = make_spec({"model": ["mobilenetv1"], "board": ["icebreaker"]},
                     {"rtl": False, "build": True})
    _, tasks, _ = plan_tasks(spec)
    assert [task["kind"] for task in tasks] == ["point", "build"]
    result = run_sweep(spec, tmp_path, local=True, workers=1)
    row, = result.rows
    assert (result.ran, row["program"], row["status"]) == (1, "no", "ok")
    assert "activation words" in row["reason"] and "core_fit" not in row
    assert row["build_note"] == "not built: no program of the sweep runs on this core"


def _row(latency, accuracy=None, lut=None, **fields):
    return {"status": "ok", "program": "fits", "latency_ms": latency, "accuracy": accuracy,
            "lut": lut, **fields}


def test_pareto_front_against_a_hand_checked_case():
    rows = [
        _row(1.0, 0.90),    # 0: front (fastest)
        _row(2.0, 0.95),    # 1: front
        _row(2.0, 0.93),    # 2: dominated by 1 (same latency, less accurate)
        _row(3.0, 0.95),    # 3: dominated by 1 (slower, as accurate)
        _row(4.0, 0.97),    # 4: front (most accurate)
        _row(4.0, 0.97),    # 5: equal to 4: on the front too
        _row(0.5, 0.99, status="error"),           # 6: failed: never on it
        _row(0.5, 0.99, program="phased"),         # 7: streams its weights: not on it
        _row(0.5, 0.99, core_fit="timing"),        # 8: misses the board's clock
        _row(1.5, None),    # 9: no accuracy while others have one: not compared
    ]
    assert pareto_front(rows) == [0, 1, 4, 5]
    assert mark_pareto(rows) == [("latency_ms", "min"), ("accuracy", "max")]
    assert [r["pareto"] for r in rows] == [i in (0, 1, 4, 5) for i in range(10)]
    # Latency alone: the fastest eligible row.
    assert pareto_front(rows, [("latency_ms", "min")]) == [0]
    # Three objectives: a slow, inaccurate but small core joins the front.
    small = rows[:6] + [_row(5.0, 0.80, lut=1000)]
    for row, lut in zip(small, (9000, 12000, 12000, 12000, 20000, 20000)):
        row["lut"] = lut
    assert pareto_front(small) == [0, 1, 4, 5, 6]
    with pytest.raises(ValueError, match="min or max"):
        pareto_front(rows, [("latency_ms", "lowest")])


def test_spec_from_toml_and_its_errors(tmp_path):
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text('[axes]\nlanes = [4, 16]\npattern = ["gs-gather", "dense"]\n'
                         'sparsity = [0.5, 0.75]\nboard = ["icebreaker"]\n'
                         '[settings]\nrtl = false\n')
    spec = load_spec(spec_file)
    points, tasks, invalid = plan_tasks(spec)
    # dense ignores the sparsity axis: 2 lanes × (2 GS + 1 dense) points.
    assert len(points) == 6 and [p.sparsity for p, _, _ in points[:3]] == [0.5, 0.75, 0.0]
    # The iCEBreaker's result queue holds 4 results: V = 16 is no core of it.
    assert [p.lanes for p in invalid] == [16, 16, 16]
    assert "Result queue" in next(iter(invalid.values())) and len(tasks) == 3
    # The board's core and the same core written out are one point (one cache entry).
    written = make_spec({"board": ["icebreaker"], "lanes": [2], "weight_depth": [512]})
    default = make_spec({"board": ["icebreaker"]})
    assert plan_tasks(written)[0][0][1] == plan_tasks(default)[0][0][1]
    for text, message in [('[axes]\nlane = [4]\n', "unknown axis 'lane'"),
                          ('[axes]\npattern = ["gs"]\n', "pattern must be one of"),
                          ('[axes]\nsparsity = [1.0]\n', r"sparsity must be in \[0, 1\)"),
                          ('[axes]\nlanes = ["8"]\n', "lanes must be int values"),
                          ('[axes]\nboard = ["de10"]\n', "board must be one of"),
                          ('[settings]\nfinetune = "int4"\n', "finetune must be one of"),
                          ('[sweep]\n', "unknown table or key 'sweep'"),
                          ('[axes\n', "not valid TOML")]:
        spec_file.write_text(text)
        with pytest.raises(SpecError, match=message):
            load_spec(spec_file)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["sweep", "--lanes", "4,x", "-o", str(tmp_path)]) == 1
    assert "--lanes takes comma-separated int values, not 'x'" in capsys.readouterr().err
    assert main(["sweep", "--local", "--address", "ray://h:1", "-o", str(tmp_path)]) == 1
    assert "exclude each other" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "none.toml")]) == 1
    assert "cannot read the sweep spec" in capsys.readouterr().err
    assert main(["sweep", "--lanes", "4,8", "--no-rtl", "--dry-run", "-o",
                 str(tmp_path)]) == 0
    assert "2 points, 2 tasks" in capsys.readouterr().out


def test_the_docs_spec_is_the_12_point_sweep_and_every_axis_is_documented(tmp_path):
    from gsaccel.sw.sweep import AXES, SETTINGS
    page = (Path(__file__).parents[2] / "docs" / "sweep.md").read_text()
    block = page.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "spec.toml").write_text(block)
    points, tasks, invalid = plan_tasks(load_spec(tmp_path / "spec.toml"))
    assert len(points) == len(tasks) == 12 and not invalid
    for name in list(AXES) + list(SETTINGS):
        assert f"`{name}`" in page, name


def test_a_qat_point_compiles_what_it_trained(tmp_path):
    """``finetune = "qat"``: the digits MLP fine-tuned with the core's fake quantisation; its
    compiled program's accuracy is the fake-quantised model's (bit-exact), and the RTL agrees
    with the golden model."""
    import torch
    from gsaccel.sw.sweep.measure import _prepared_model, _quantize_aware
    from gsaccel.sw.sweep.spec import Point
    from gsaccel.sw.compile.qat import QATModel
    from gsaccel.sw.models import evaluate
    point = dict(make_spec({"lanes": [8], "sparsity": [0.75]},
                           {"epochs": 3, "finetune_epochs": 1, "finetune": "qat"}
                           ).points()[0].inputs())
    cfg = Point(**point).core()
    model, calibration, data, _, _ = _prepared_model(point, cfg.lanes, None)
    qmodel = _quantize_aware(model, calibration, data, cfg, point)
    assert isinstance(qmodel, QATModel)
    from gsaccel import compile
    program = compile(qmodel, calibration, cfg=cfg)
    outputs = program.run_golden_int(data.x_test.numpy(), stale=False)
    with torch.no_grad():
        fake = qmodel(data.x_test).argmax(1).numpy()
    assert (outputs.argmax(1) == fake).all()
    assert evaluate(qmodel, data) == pytest.approx((outputs.argmax(1) == data.y_test.numpy()).mean(),
                                                 abs=1e-6)
