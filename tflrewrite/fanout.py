"""Runs independent jobs side by side, each isolated: in child processes here (`--jobs N`) or
as Ray core tasks on a cluster (`--ray [ADDRESS]`); a job that fails or crashes comes back
as its reason, and the others go on.

Here, each worker is a runtime.Child: a fresh interpreter started without fork (forking a
process that holds Numba's and LiteRT's threads is unsafe), which takes one job after
another. A job that crashes the interpreter (a segfault in native code) ends only that
child: the job is a failure naming what died, and the worker starts a new child for the
next one. (A concurrent.futures pool would lose every running job to one crash: its
BrokenProcessPool fails them all.)

On Ray, each job is a task; the arguments that several jobs share travel to the cluster
once (ray.put), and Ray is imported only there. The cluster's workers must have tflrewrite
and its dependencies installed: functions travel by reference to their module.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tflrewrite.errors import TflRewriteError, UsageError

RAY_EXTRA = "pip install 'tflrewrite[ray]'"
# Each worker computes on one thread, so that N workers keep N cores busy: OpenBLAS's own
# threads, one per core in every worker, busy-wait against each other (measured on two
# cores: two workers took twice as long with them as without). Ray does the same for its
# workers (OMP_NUM_THREADS=1), and so the results are the same wherever a job runs.
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
CONNECT_SECONDS = 5.0  # to reach a Ray cluster's address


@dataclass(frozen=True)
class Failed:
    """A job that did not finish, and why (one line)."""

    reason: str


def run(
    function: Callable[..., Any],
    jobs: Sequence[tuple],
    *,
    workers: int = 1,
    ray: str | None = None,
    on_done: Callable[[int, Any], None] | None = None,
) -> list[Any]:
    """[function(*job) for job in jobs], each result or a Failed, in the jobs' order.
    `function` is a module-level function; jobs' arguments pickle. With `ray` (an address,
    or "" for the cluster Ray finds itself, or the one this process already joined) the
    jobs run as Ray tasks, else in `workers` child processes. `on_done(index, result)` is
    called here as each job ends, in the order they end."""
    if ray is not None:
        return _run_ray(function, jobs, address=ray, on_done=on_done)
    return _run_children(function, jobs, workers=workers, on_done=on_done)


def call(function: Callable[..., Any], *args: Any) -> Any:
    """function(*args), or Failed with the reason where it raises: what a job runs."""
    try:
        return function(*args)
    except TflRewriteError as e:
        return Failed(str(e))
    except Exception as e:  # noqa: BLE001 - a bug in one job must not end the others
        return Failed(f"{type(e).__name__}: {e}")


# ------------------------------------------------------------------ child processes


def _run_children(
    function: Callable[..., Any],
    jobs: Sequence[tuple],
    *,
    workers: int,
    on_done: Callable[[int, Any], None] | None,
) -> list[Any]:
    from tflrewrite import runtime

    results: list[Any] = [None] * len(jobs)
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(len(jobs)):
        todo.put(i)
    done: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
    children: list[runtime.Child] = []
    lock = threading.Lock()
    stop = threading.Event()

    def new_child() -> runtime.Child | None:
        with lock:
            if stop.is_set():
                return None
            child = runtime.Child(preload=(function.__module__,), env=ONE_THREAD)
            children.append(child)
            return child

    def work() -> None:
        child = new_child()
        while child is not None and not stop.is_set():
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            try:
                result = child.call(call, function, *jobs[i])
            except TflRewriteError as e:  # the child died: a crash, or it was ended
                result = Failed(str(e))
                child = new_child()
            except BaseException as e:  # noqa: BLE001 - arguments that do not pickle
                result = Failed(f"{type(e).__name__}: {e}")
            done.put((i, result))

    threads = [
        threading.Thread(target=work, name=f"tflrewrite-worker-{k}", daemon=True)
        for k in range(max(1, min(workers, len(jobs))))
    ]
    try:
        for t in threads:
            t.start()
        for _ in range(len(jobs)):
            i, result = done.get()
            results[i] = result
            if on_done:
                on_done(i, result)
    finally:
        stop.set()
        with lock:
            for child in children:
                child.close()
        for t in threads:
            t.join()
    return results


# ------------------------------------------------------------------ Ray


def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def _run_ray(
    function: Callable[..., Any],
    jobs: Sequence[tuple],
    *,
    address: str,
    on_done: Callable[[int, Any], None] | None,
) -> list[Any]:
    ray = _join_ray(address)
    task = ray.remote(max_retries=0)(call)
    refs: dict[int, Any] = {}  # id(argument) -> its object ref, each put once
    pending = {}
    for i, job in enumerate(jobs):
        args = [_put(ray, refs, value) for value in job]
        pending[task.remote(function, *args)] = i
    results: list[Any] = [None] * len(jobs)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ready[0])
        try:
            results[i] = ray.get(ready[0])
        except Exception as e:  # noqa: BLE001 - a task that crashed or was lost
            results[i] = Failed(_ray_reason(e))
        if on_done:
            on_done(i, results[i])
    return results


def _join_ray(address: str) -> Any:
    """Ray, joined to the cluster at `address` ("" for the one Ray finds: RAY_ADDRESS or a
    cluster started on this machine), unless this process has joined one already."""
    try:
        import ray
    except ImportError:
        raise UsageError(f"--ray needs Ray: {RAY_EXTRA}") from None
    if not ray.is_initialized():
        _check_reachable(address)
        try:
            ray.init(address=address or "auto", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = address or "auto"
            raise TflRewriteError(
                f"--ray {where}: cannot join a Ray cluster: {_first_line(e)}"
            ) from None
    return ray


def _check_reachable(address: str) -> None:
    """Refuse at once a HOST:PORT nobody answers at: Ray itself retries for minutes."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # "auto", "local", a ray:// client address: Ray's to judge
    import socket

    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS):
            pass
    except OSError as e:
        raise TflRewriteError(
            f"--ray {address}: no Ray cluster answers there ({e.strerror or e})"
        ) from None


def _put(ray: Any, refs: dict[int, Any], value: Any) -> Any:
    """`value` as a task argument: large ones (bytes, data) once in Ray's object store."""
    if callable(value) or isinstance(value, (str, int, float, bool, type(None))):
        return value
    if id(value) not in refs:
        refs[id(value)] = ray.put(value)
    return refs[id(value)]


def _ray_reason(e: Exception) -> str:
    text = _first_line(e)
    return f"the Ray task failed ({type(e).__name__}): {text}"


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__
