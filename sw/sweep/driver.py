"""The sweep itself: points and builds from the spec, finished ones read from the cache, the
rest run on Ray or a process pool with a progress bar, then the table, front and plots.

Each finished task is written to the cache the moment it comes back (``<key>.json``, written
whole then renamed), so Ctrl-C, a crash or a lost cluster keeps every point that finished; a
rerun runs only what is new, or failed (failures are never cached).
"""

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .results import mark_pareto, write_results
from .spec import BuildJob, SpecError, code_digest, model_source, task_key

__all__ = ["run_sweep", "SweepResult", "plan_tasks", "BUILD_COLUMNS"]

#: The columns a point's row takes from its core's build.
BUILD_COLUMNS = ("core_fit", "fmax_mhz", "target_mhz", "build_s", "bitstream", "build_note",
                 "lut", "lut_available", "ff", "ff_available", "bram", "bram_available",
                 "dsp", "dsp_available", "spram", "spram_available")


@dataclass
class SweepResult:
    """What :func:`run_sweep` did: ``rows`` (one per point, the table), how many tasks ran
    and came from the cache, how many points failed, and the files written."""

    rows: list
    ran: int = 0
    cached: int = 0
    failed: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    written: list = field(default_factory=list)
    objectives: list = field(default_factory=list)
    where: str = ""


def plan_tasks(spec):
    """``(points, tasks, invalid)``: every point with the key of its task and of its core's
    build (or None), the tasks (points first, then the distinct builds), and the points whose
    core is not a valid one, with the reason."""
    points, tasks, invalid, builds = [], [], {}, {}
    sources = {}
    for point in spec.points():
        try:
            config = point.core()
        except SpecError as error:
            invalid[point] = str(error)
            points.append((point, None, None))
            continue
        if point.model not in sources:
            sources[point.model] = model_source(point.model)
        source = sources[point.model]
        extra = "" if source is None else hashlib.sha256(source[1].encode()).hexdigest()
        # The key holds the core as resolved, so that "the board's" and the same value
        # written out are one point.
        key = task_key("point", {**point.inputs(), "lanes": config.lanes,
                                 "encoding": config.encoding, "bank_depth": config.bank_depth,
                                 "weight_depth": config.weight_depth}, extra)
        tasks.append({"kind": "point", "key": key, "inputs": point.inputs(),
                      "label": point.label(), "model_source": source})
        build_key = None
        if spec.settings["build"]:
            job = BuildJob(point.board, config, spec.settings["build_seed"])
            build_key = task_key("build", job.inputs())
            if build_key not in builds:
                builds[build_key] = {"kind": "build", "key": build_key, "inputs": job.inputs(),
                                     "label": job.label()}
        points.append((point, key, build_key))
    return points, tasks + list(builds.values()), invalid


class _Cache:
    def __init__(self, folder):
        self.folder = Path(folder)

    def get(self, key):
        try:
            record = json.loads((self.folder / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and "error" not in record else None

    def put(self, key, record):
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{key}.json"
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps(record, sort_keys=True, indent=1))
        partial.replace(path)


def run_sweep(spec, out_dir, *, local=False, address=None, workers=2, cache_dir=None,
              console=None, title=None):
    """Run ``spec`` (a :class:`~gsaccel.sw.sweep.spec.SweepSpec`); write the results into
    ``out_dir`` (:func:`~gsaccel.sw.sweep.results.write_results`) and return a
    :class:`SweepResult`.

    Parameters
    ----------
    local : bool
        Run in a pool of ``workers`` processes here instead of on Ray.
    address : str, optional
        A Ray cluster (``ray://HOST:10001``); default a local Ray instance of ``workers``
        CPUs.
    cache_dir : path, optional
        The cache of finished tasks; default ``<out_dir>/cache``.

    On Ctrl-C the running tasks are cancelled, the results of the finished ones written, and
    KeyboardInterrupt raised again.
    """
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)
    from .runners import PoolRunner, RayRunner
    console = console or Console(stderr=True)
    out_dir = Path(out_dir)
    cache = _Cache(cache_dir if cache_dir is not None else out_dir / "cache")
    started = time.monotonic()
    points, tasks, invalid = plan_tasks(spec)
    records, cached = {}, set()
    for task in tasks:
        record = cache.get(task["key"])
        if record is not None:
            records[task["key"]] = record
            cached.add(task["key"])
    # A core is built once a program of the sweep runs on it (fits, or in phases): a build
    # takes minutes, and the LUTs of a core no point can use put nothing on the table.
    builds = {task["key"]: task for task in tasks if task["kind"] == "build"}
    build_of = {key: build_key for _, key, build_key in points if key and build_key}
    released = set()

    def release(point_key, record):
        build_key = build_of.get(point_key)
        if build_key is None or build_key in released or build_key in records \
                or "error" in record or record.get("program") not in ("fits", "phased"):
            return []
        released.add(build_key)
        return [builds[build_key]]

    to_run = [task for task in tasks if task["kind"] == "point" and task["key"] not in records]
    for _, key, _ in points:
        if key in records:
            to_run += release(key, records[key])
    result = SweepResult(rows=[], cached=len(cached))
    errors_dir = out_dir / "errors"
    total = len(to_run)

    def on_result(task, record):
        nonlocal total
        if "error" not in record and record.get("code") != code_digest(task["kind"]):
            record["error"] = (f"the worker on {record.get('host')} runs other gsaccel code "
                               f"(digest {record.get('code')}, here {code_digest(task['kind'])}"
                               f"): install the same gsaccel on every node")
        traceback = record.pop("traceback", None)
        records[task["key"]] = record
        result.ran += 1
        if "error" in record:
            console.print(f"[red]failed[/]: {task['label']}: {record['error']}")
            if traceback:
                errors_dir.mkdir(parents=True, exist_ok=True)
                (errors_dir / f"{task['key']}.txt").write_text(traceback)
        else:
            cache.put(task["key"], record)
            (errors_dir / f"{task['key']}.txt").unlink(missing_ok=True)
        more = release(task["key"], record) if task["kind"] == "point" else []
        total += len(more)
        bar.update(job, advance=1, total=total, description=f"sweep: {task['label'][:60]}")
        return more

    console.print(f"sweep: {len(points)} points, {len(tasks)} tasks "
                  f"({len(cached)} in the cache {cache.folder}, {len(to_run)} to run"
                  + (f"; {len(set(builds) - released - cached)} builds wait for a program "
                     f"that runs on their core" if set(builds) - released - cached else "")
                  + ")")
    try:
        if to_run:
            runner = PoolRunner(workers=workers) if local else \
                RayRunner(address=address, workers=workers)
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn())
            with runner, Progress(*columns, console=console) as bar:
                result.where = runner.describe()
                job = bar.add_task(f"sweep on {result.where}", total=total)
                runner.run(to_run, on_result)
    except KeyboardInterrupt:
        result.interrupted = True
        console.print(f"[yellow]interrupted[/]: {result.ran} of {total} tasks finished "
                      f"(kept in {cache.folder}); rerun the same command to go on")
        raise
    finally:
        result.rows = _rows(points, records, cached, invalid, released)
        # A point fails, or its core's build does (a missing toolchain, say).
        result.failed = sum(row["status"] == "error" or bool(row.get("build_error"))
                            and not result.interrupted for row in result.rows)
        result.seconds = time.monotonic() - started
        result.objectives = mark_pareto(result.rows)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "sweep.toml").write_text(spec.to_toml())
        worker = sum(record.get("seconds", 0.0) for record in records.values())
        summary = (f"`gsaccel sweep` ({spec.source}): {len(points)} points, "
                   f"{len(tasks)} tasks, {result.cached} from the cache, {result.ran} run"
                   f"{' on ' + result.where if result.where else ''} in "
                   f"{result.seconds:.0f} s; {result.failed} failed"
                   + ("; interrupted" if result.interrupted else "")
                   + f"; the tasks took {worker:.0f} s of worker time when they ran"
                   + ". The spec as run: `sweep.toml`; every column: `sweep.csv`.")
        result.written = write_results(result.rows, out_dir,
                                       title=title or "Design-space sweep", summary=summary,
                                       objectives=result.objectives)
    return result


def _rows(points, records, cached, invalid, released):
    rows = []
    for point, key, build_key in points:
        row = {"key": key, **{name: value for name, value in point.inputs().items()}}
        if point in invalid:
            row.update(status="error", error=invalid[point])
            rows.append(row)
            continue
        record = records.get(key)
        if record is None:
            row["status"] = "not run"
        else:
            row.update({k: v for k, v in record.items() if k != "code"})
            row["status"] = "error" if "error" in record else "ok"
            row["cached"] = key in cached
        if build_key is not None:
            build = records.get(build_key)
            if build is None and build_key in released:
                row["build_error"] = "not built (interrupted)"
            elif build is None:
                row["build_note"] = "not built: no program of the sweep runs on this core"
            elif "error" in build:
                row["build_error"] = build["error"]
            else:
                row.update({k: build[k] for k in BUILD_COLUMNS if k in build})
        rows.append(row)
    return rows
