"""Where sweep tasks run: Ray (a local instance, or a cluster at ``ray://HOST:PORT``) or, with
``--local``, a pool of processes on this machine. Both run :func:`gsaccel.sw.sweep.measure.run_task`
on each task and hand its record back as it finishes; a task that dies (its worker killed,
out of memory) comes back as a record with an ``error``, never as an exception.

A runner is a context manager; :meth:`run` raises KeyboardInterrupt after cancelling what is
still running when Ctrl-C arrives, so the caller can keep what finished.
"""

import contextlib
import logging
import multiprocessing
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from ..errors import GsaccelError, ToolNotFound
from .measure import run_task

__all__ = ["RayRunner", "PoolRunner", "task_resources", "GIB"]

GIB = 1 << 30


def task_resources(task):
    """``(CPUs, bytes of memory)`` a task needs: a point one CPU and 1 GiB (1.5 GiB when it
    also builds and runs the Verilator RTL); a build one CPU and 2 GiB (nextpnr on an ECP5;
    1 GiB on an iCE40)."""
    if task["kind"] == "build":
        from ...boards.catalog import get_board
        return 1, 2 * GIB if get_board(task["inputs"]["board"]).family == "ecp5" else GIB
    return 1, (3 * GIB) // 2 if task["inputs"]["rtl"] else GIB


def _error_record(error):
    text = f"{type(error).__name__}: {error}".strip().splitlines()
    return {"error": (text[0] if text else type(error).__name__)[:500]}


class RayRunner:
    """Tasks as Ray tasks with their resource needs.

    Parameters
    ----------
    address : str, optional
        A cluster (``ray://HOST:10001`` through Ray Client, or ``auto`` for one started on
        this machine with ``ray start``); default: start a local instance of ``workers``
        CPUs, shut down again at the end.
    workers : int
        CPUs of the local instance.
    """

    def __init__(self, *, address=None, workers=2):
        self.address, self.workers = address, workers
        self._started = False
        self._pending = {}

    def __enter__(self):
        try:
            import ray
        except ImportError:
            raise ToolNotFound("Ray is not installed; install it with `pip install "
                               "'gsaccel[sweep]'`, or run the sweep with --local (a process "
                               "pool on this machine)") from None
        self.ray = ray
        if not ray.is_initialized():
            options = dict(include_dashboard=False, log_to_driver=False,
                           logging_level=logging.WARNING)
            if self.address is None:
                # "local": always a new instance, never one that `ray start` left running.
                options.update(address="local", num_cpus=self.workers)
            else:
                options = {"address": self.address, "logging_level": logging.WARNING,
                           "log_to_driver": False}
            try:
                ray.init(**options)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise GsaccelError(f"Cannot start or reach Ray"
                                   f"{' at ' + self.address if self.address else ''}: "
                                   f"{str(error).splitlines()[0]}") from None
            self._started = True
        return self

    def __exit__(self, *exc):
        if self._started:
            self.ray.shutdown()
            self._started = False

    def describe(self):
        resources = self.ray.cluster_resources()
        where = self.address or "a local Ray instance"
        return f"{where} ({resources.get('CPU', 0):g} CPUs)"

    def run(self, tasks, on_result):
        """Run ``tasks``; ``on_result(task, record)`` is called as each finishes and may
        return more tasks to run (a core's build, once a program runs on it)."""
        ray = self.ray
        remote = ray.remote(run_task)
        self._pending = {}
        # A task asking for more memory than the whole cluster has would wait for ever: on a
        # small machine, ask for what there is (the task may still fit in it).
        total = ray.cluster_resources().get("memory", float("inf"))

        def submit(task):
            cpus, memory = task_resources(task)
            # No retries: a point that kills its worker would kill the next one too.
            ref = remote.options(num_cpus=cpus, memory=int(min(memory, 0.9 * total)),
                                 max_retries=0, name=task["label"][:100]).remote(task)
            self._pending[ref] = task

        for task in tasks:
            submit(task)
        try:
            while self._pending:
                done, _ = ray.wait(list(self._pending), num_returns=1)
                for ref in done:
                    task = self._pending.pop(ref)
                    try:
                        record = ray.get(ref)
                    except ray.exceptions.RayError as error:
                        record = _error_record(error)
                    for more in on_result(task, record) or ():
                        submit(more)
        except KeyboardInterrupt:
            self.cancel()
            raise

    def cancel(self):
        for ref in self._pending:
            # A task already finished or gone has nothing to stop.
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
        self._pending = {}


def _ignore_sigint():
    # Ctrl-C goes to the whole process group; the driver alone decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class PoolRunner:
    """Tasks in a pool of ``workers`` processes on this machine (``--local``): the same
    tasks as Ray's, without resource accounting (each process runs one task at a time)."""

    def __init__(self, *, workers=2):
        if workers < 1:
            raise GsaccelError(f"Workers must be at least 1, not {workers!r}")
        self.workers = workers
        self._executor = None

    def __enter__(self):
        self._executor = ProcessPoolExecutor(
            max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_ignore_sigint)
        return self

    def __exit__(self, *exc):
        if self._executor is not None:
            self._executor.shutdown(wait=exc[0] is None, cancel_futures=True)
            self._executor = None

    def describe(self):
        return f"a pool of {self.workers} local processes"

    def run(self, tasks, on_result):
        """As :meth:`RayRunner.run`."""
        futures = {self._executor.submit(run_task, task): task for task in tasks}
        try:
            while futures:
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for future in done:
                    task = futures.pop(future)
                    try:
                        record = future.result()
                    except Exception as error:       # the worker died (BrokenProcessPool)
                        record = _error_record(error)
                    for more in on_result(task, record) or ():
                        futures[self._executor.submit(run_task, more)] = more
        except KeyboardInterrupt:
            self.cancel()
            raise

    def cancel(self):
        executor = self._executor
        if executor is None:
            return
        # Python 3.11 has no public way to stop running workers: end the pool's own
        # processes (by their handles), then shut it down without waiting.
        processes = list(getattr(executor, "_processes", {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=10)
        self._executor = None
