"""Where batches run: in this process, in a local process pool (forkserver, spawn where there is no fork), or on a
Dask cluster; progress, Ctrl-C (the batches in flight finish and journal themselves), the writer lock checked
between batches, and a full disk reported as what the rest of the job needs."""
from __future__ import annotations

import logging
import signal
import time
from typing import Any

from ..errors import DiskFullError
from ..store.attributes import recorded_dtype
from ..store.files import FileTarget
from ..store.journal import read_journal
from .batch import BatchJob, run_batch
from .space import estimate_bytes

__all__ = ["run_jobs", "run_checked", "pool_method", "start_forkserver_ignoring_sigint"]

log = logging.getLogger(__name__)


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group: only the parent acts on it (finishes or stops the batches in
    # flight); a worker killed mid-batch would print its traceback and could leave the pool hanging
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread (a Dask worker): Dask handles its own signals
        pass
    try:  # one decode per process; cv2's own threads would fight the other workers for the cores
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    import numcodecs.blosc

    numcodecs.blosc.use_threads = False


def run_checked(target: FileTarget, attrs: dict[str, Any], jobs: list[BatchJob], total: int, n_workers: int,
                 scheduler: Any, progress: bool, lock: Any) -> None:
    """`run_jobs`, with ENOSPC reported as what the rest of the job needs (the rerun resumes from the journal)."""
    try:
        run_jobs(jobs, total, n_workers, scheduler, progress, lock)
    except DiskFullError as exc:
        left = int(attrs["n_sites"]) - len(read_journal(target.fs, target.root))
        raise DiskFullError(target.path, estimate_bytes(attrs["image_shape"], attrs["codec"], left,
                                                           recorded_dtype(attrs)),
                            target.free_bytes(),
                            what=f"the rest of the ingest ({left} sites; writing {exc.path} failed)") from None


def run_jobs(jobs: list[BatchJob], total: int, n_workers: int, scheduler: Any, progress: bool,
         lock: Any = None) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="site", desc="ingest", disable=not progress)
    check = lock.check if lock is not None else (lambda: None)
    try:
        if scheduler is not None:
            _run_dask(jobs, scheduler, bar)
        elif n_workers == 1 or len(jobs) == 1:  # in this process; its global cv2/blosc settings stay untouched
            for job in jobs:
                check()
                run_batch(job)
                bar.update(len(job.indices))
        else:
            _run_pool(jobs, n_workers, bar, check)
    finally:
        bar.close()


def start_forkserver_ignoring_sigint() -> None:
    """Start the forkserver with SIGINT ignored, so every worker it forks ignores SIGINT from birth: a Ctrl-C that
    lands while a worker is still starting (before `_worker_init` runs) would print that worker's traceback. An
    ignored SIGINT survives exec, and the forkserver hands its children the disposition it started with (a
    forkserver some other code started earlier is reused as it is: then `_worker_init` is the only guard)."""
    import threading
    from multiprocessing import forkserver

    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)


def pool_method() -> str:
    """forkserver: workers fork from a clean server process, never from this one (which may hold zarr's event loop
    thread); spawn where fork does not exist. Both run the main module again in every worker
    (cellio/processes/main_module.py)."""
    import multiprocessing as mp

    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def _run_pool(jobs: list[BatchJob], n_workers: int, bar: Any, check: Any = lambda: None) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    method = pool_method()
    ctx = mp.get_context(method)
    if method == "forkserver":
        start_forkserver_ignoring_sigint()
    with ProcessPoolExecutor(min(n_workers, len(jobs)), mp_context=ctx, initializer=_worker_init) as pool:
        pending = {pool.submit(run_batch, job): job for job in jobs}
        try:
            # each batch as it completes: the bar moves and the lock is checked batch by batch (waiting for
            # FIRST_EXCEPTION returned only when every batch was done, so the bar sat at 0 for the whole ingest)
            checked = time.monotonic()
            for fut in as_completed(list(pending)):
                job = pending.pop(fut)
                fut.result()  # re-raises a worker's ImageError (on_error="fail") here
                bar.update(len(job.indices))
                if time.monotonic() - checked >= 0.5 or not pending:  # (a remote lock's check is a read)
                    check()
                    checked = time.monotonic()
        except KeyboardInterrupt:
            # workers ignore SIGINT (_worker_init): let the batches in flight finish and journal themselves, so
            # one Ctrl-C stops cleanly and the rerun redoes only what never started; a second Ctrl-C stops now
            running = sum(f.running() for f in pending)
            for fut in pending:
                fut.cancel()
            log.warning("interrupted: finishing the %d batches in flight (Ctrl-C again to stop them now); rerun "
                        "the same command to resume", running)
            try:
                pool.shutdown(wait=True, cancel_futures=True)
            except KeyboardInterrupt:
                _terminate(pool)
            raise
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def _terminate(pool: Any) -> None:
    """Kill a ProcessPoolExecutor's workers now (their unfinished batches have no journal record: redone)."""
    for proc in list(getattr(pool, "_processes", {}).values()):  # the executor has no public kill
        proc.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def _run_dask(jobs: list[BatchJob], scheduler: Any, bar: Any) -> None:
    try:
        from distributed import Client, as_completed
    except ImportError:
        from .errors import MissingDependencyError

        raise MissingDependencyError("distributed", "dask", "ingest --scheduler") from None
    own = not isinstance(scheduler, Client)
    client = Client(scheduler) if own else scheduler
    try:
        client.run(_worker_init)
        futures = client.map(run_batch, jobs, pure=False)
        sizes = {f.key: len(j.indices) for f, j in zip(futures, jobs)}
        try:
            for fut in as_completed(futures):
                fut.result()
                bar.update(sizes[fut.key])
        except BaseException:
            client.cancel(futures)
            raise
    finally:
        if own:
            client.close()
