"""The worker loop: claim jobs, run them on an engine, write the images, complete the jobs, keep the leases alive."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from sqlalchemy import exc as sa_exc

from sdserver.database import DATABASE_OUTAGES
from sdserver.engines.base import (
    DeviceFailure,
    DeviceOutOfMemory,
    Engine,
    EngineOutput,
    JobCancelled,
    JobFailed,
)
from sdserver.errors import JobErrorCode, LeaseLostError, StorageError
from sdserver.jobs import Job
from sdserver.objects.base import ObjectStore
from sdserver.objects.switching import SwitchingObjectStore
from sdserver.worker.run_timing import RunTiming

if TYPE_CHECKING:
    from sdserver.config import Settings
    from sdserver.jobstore.store import JobStore
    from sdserver.worker.control import WorkerControl

log = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_DEVICE_FAILURE: Final = 3
# restart_server asked for a fresh process: the supervisor (or the operator's service manager) starts one.
EXIT_RESTART: Final = 4
# Progress is for people watching a fetch; more than four writes a second per job only loads the database.
PROGRESS_MIN_INTERVAL_S: Final = 0.25
# Longest idle wait: PostgreSQL wakes the worker on NOTIFY sooner; this bounds how late a stop is seen.
IDLE_WAIT_S: Final = 1.0
MAX_BACKOFF_S: Final = 5.0
# Within the batch window, the longest pause between two looks for batch-mates.
BATCH_POLL_S: Final = 0.005


def backoff_delay(failures: int) -> float:
    """Seconds to wait after the `failures`-th database outage in a row: doubling from 0.2 s, at most 5 s."""
    return min(MAX_BACKOFF_S, 0.1 * 2.0**failures)


@dataclass(eq=False)
class _Run:
    """One claimed job while it runs. The heartbeat thread sets `cancel` and `lost`; the loop thread reads them."""

    job: Job
    cancel: bool = False
    lost: bool = False
    last_report: float = -math.inf
    total_steps: int = 0
    # Completed, failed, cancelled or released by us: the heartbeat leaves it alone from then on.
    settled: bool = False
    started: float = field(default_factory=time.monotonic)
    # Whether this run had to load its model, and when its steps came: the ETA model's measurements.
    timing: RunTiming = field(default_factory=lambda: RunTiming(loaded_model=False))

    def describe(self) -> str:
        """What the job is, for the one log line per job event: kind, model, size, steps."""
        job = self.job
        size = f" {job.width}x{job.height}" if job.width and job.height else ""
        steps = f" {job.steps} steps" if job.steps else ""
        return f"{job.kind.value} model={job.model_id}{size}{steps}"

    def seconds(self) -> float:
        return time.monotonic() - self.started

    def lease_lost(self) -> bool:
        # Read through a call: the heartbeat thread may set `lost` between two checks of the attribute.
        return self.lost

    def is_settled(self) -> bool:
        # Read through a call: settling a job cancelled inside its batch happens in the engine's step callback.
        return self.settled


class _JobContext:
    """The `StepContext` the engine gets for one job of the batch."""

    def __init__(self, worker: Worker, run: _Run, batch: Sequence[_Run]) -> None:
        self._worker, self._run, self._batch = worker, run, batch

    def step(self, done: int, total: int) -> None:
        self._worker.on_step(self._run, self._batch, done, total)

    @property
    def stopped(self) -> bool:
        """Cancelled or lost while its batch-mates run on: an engine may skip the rest of this job's work."""
        return self._run.cancel or self._run.lease_lost()


class Worker:
    """Runs jobs until `stop` is set. One engine call at a time; a heartbeat thread renews leases meanwhile."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        objects: ObjectStore,
        engines: Sequence[Engine],
        worker_id: str,
        *,
        grace_s: float = 30.0,
        device: str = "cpu",
        max_batch: int = 1,
        batch_window_s: float = 0.0,
        idle_wait_s: float = IDLE_WAIT_S,
        control: WorkerControl | None = None,
    ) -> None:
        if not engines:
            raise ValueError("a worker needs at least one engine")
        self._jobs, self._objects, self._engines = jobs, objects, list(engines)
        self.worker_id = worker_id
        self._grace_s, self._device, self._max_batch = grace_s, device, max_batch
        self._idle_wait_s = idle_wait_s
        self._batch_window_s = batch_window_s
        self._control = control
        self._lease_s = settings.job_lease_s
        self._max_models = settings.diffusion_max_loaded
        self._beat_s = settings.job_lease_s / 3
        self._lock = threading.Lock()
        self._runs: list[_Run] = []
        self._stop = threading.Event()
        self._stop_seen_at: float | None = None
        # Snapshot for the heartbeat thread, taken between jobs: engines need not be thread-safe.
        self._held: tuple[str, ...] = ()
        # Claims go round the engines so one busy engine cannot starve another's queue.
        self._next_engine = 0

    # --- the loop

    def run(self, stop: threading.Event) -> int:
        """Work until `stop` is set (0), a restart is requested (EXIT_RESTART) or the device fails
        (EXIT_DEVICE_FAILURE)."""
        self._stop = stop
        self._held = self._snapshot_held()
        names = [engine.name for engine in self._engines]
        if not self._retry_until_stopped(
            "register",
            lambda: self._jobs.register_worker(
                self.worker_id,
                device=self._device,
                engines=names,
                max_batch=self._max_batch,
                max_models=self._max_models,
            ),
        ):
            return EXIT_OK
        log.info("worker %s started (engines: %s)", self.worker_id, ", ".join(names))
        finished = threading.Event()
        beat = threading.Thread(target=self._heartbeat_loop, args=(finished,), name="sdserver-heartbeat", daemon=True)
        beat.start()
        try:
            return self._work()
        finally:
            finished.set()
            beat.join()
            self._retry_for("unregister", lambda: self._jobs.unregister_worker(self.worker_id), MAX_BACKOFF_S)
            log.info("worker %s stopped", self.worker_id)

    def _work(self) -> int:
        failures = 0
        claimed: tuple[Engine, list[Job]] | None = None
        while not self._stop.is_set():
            try:
                # Between jobs only: the job in hand always finishes before a clear or a restart. Right after a
                # job the commands are read at once, so a restart never waits for one more job.
                if self._control is not None and self._between_jobs(self._control, force=claimed is not None):
                    return EXIT_RESTART
                claimed = self._claim()
                if claimed is None:
                    self._jobs.wait_for_work(self._idle_wait_s)
            except DATABASE_OUTAGES as exc:
                failures += 1
                self._back_off("claim", exc, failures)
                continue
            failures = 0
            if claimed is not None and not self._process(*claimed):
                return EXIT_DEVICE_FAILURE
        return EXIT_OK

    def _between_jobs(self, control: WorkerControl, *, force: bool) -> bool:
        restart = control.between_jobs(force=force)
        self._held = self._snapshot_held()  # a clear_cache dropped models: stop claiming by affinity to them
        return restart

    def _claim(self) -> tuple[Engine, list[Job]] | None:
        for offset in range(len(self._engines)):
            index = (self._next_engine + offset) % len(self._engines)
            engine = self._engines[index]
            claimed = self._jobs.claim(
                self.worker_id,
                kinds=engine.kinds(),
                models=engine.models(),
                held_models=self._held,
                lease_s=self._lease_s,
                # Engines that cannot batch (no `batchable`) run one job per claim.
                max_batch=self._max_batch if getattr(engine, "batchable", None) else 1,
            )
            if claimed:
                self._next_engine = (index + 1) % len(self._engines)
                return engine, self._gather_mates(engine, claimed)
        return None

    def _gather_mates(self, engine: Engine, claimed: list[Job]) -> list[Job]:
        """A batch with room left waits up to the batch window for jobs that can share its pipeline call."""
        batchable = getattr(engine, "batchable", None)
        room = self._max_batch - len(claimed)
        if room <= 0 or self._batch_window_s <= 0 or batchable is None or not batchable(claimed[0]):
            return claimed
        deadline = time.monotonic() + self._batch_window_s
        renewed = time.monotonic()
        while room > 0 and (left := deadline - time.monotonic()) > 0:
            self._jobs.wait_for_work(min(left, self._beat_s))
            if time.monotonic() - renewed >= self._beat_s:
                # The heartbeat thread renews only running batches: while the window is open the leases of the
                # jobs in hand are renewed here, or a window longer than a lease would lose them.
                self._jobs.heartbeat([job.id for job in claimed], self.worker_id, lease_s=self._lease_s)
                renewed = time.monotonic()
            mates = self._jobs.claim_mates(self.worker_id, claimed[0].id, limit=room, lease_s=self._lease_s)
            if not mates:
                # Wake-ups may come from other writes: never spin on the database.
                self._stop.wait(min(left, BATCH_POLL_S))
            claimed += mates
            room -= len(mates)
        return claimed

    def _process(self, engine: Engine, jobs: list[Job]) -> bool:
        """Run one claimed batch to a settled state. False: the device failed and the worker must exit."""
        runs = [_Run(job) for job in jobs]
        with self._lock:
            self._runs = runs
        try:
            return self._execute(engine, runs)
        finally:
            with self._lock:
                self._runs = []
            self._held = self._snapshot_held()

    def _execute(self, engine: Engine, runs: list[_Run]) -> bool:
        unhandled = [run for run in runs if not engine.handles(run.job)]
        if unhandled:
            # The engine's kinds()/models() promised more than handles() accepts: a bug, reported on the job.
            self._fail(
                unhandled,
                JobErrorCode.ENGINE_ERROR,
                f"The {engine.name} engine cannot run model {runs[0].job.model_id}",
            )
            runs = [run for run in runs if run not in unhandled]
            if not runs:
                return True
        contexts = {run.job.id: _JobContext(self, run, runs) for run in runs}
        started = time.monotonic()
        for run in runs:
            log.info("job %s started: %s", run.job.id, run.describe())
            run.timing = RunTiming(loaded_model=run.job.model_id not in self._held, started=started)
        try:
            outputs = engine.run([run.job for run in runs], lambda job: contexts[job.id])
        except JobCancelled:
            self._settle_stopped(runs)
            return True
        except DeviceOutOfMemory as exc:
            if len(runs) > 1:
                # A batch too big for the device: each job gets its own try, alone.
                log.warning("batch of %d jobs ran out of memory; running them one by one", len(runs))
                return all(self._execute(engine, [run]) for run in runs if not run.settled)
            # The engine freed what it could before raising; the next job gets a clean device.
            self._fail(runs, JobErrorCode.OUT_OF_MEMORY, f"The device ran out of memory running this job: {exc}")
            return True
        except DeviceFailure as exc:
            self._fail(
                runs, JobErrorCode.DEVICE_FAILURE, f"The device failed running this job; the worker restarts: {exc}"
            )
            return False
        except JobFailed as exc:
            if len(runs) > 1:
                # One job's unusable input must not fail its batch-mates: each runs alone for its own outcome.
                return all(self._execute(engine, [run]) for run in runs if not run.settled)
            # An expected, explained failure (missing weights, unusable input): no traceback needed.
            self._fail(runs, exc.code, exc.message)
            return True
        except Exception as exc:  # any other engine error fails only this job; the worker goes on
            log.exception("engine %s failed on jobs %s", engine.name, [run.job.id for run in runs])
            self._fail(runs, JobErrorCode.ENGINE_ERROR, f"The engine failed: {type(exc).__name__}: {exc}")
            return True
        elapsed = time.monotonic() - started
        if len(outputs) != len(runs):
            self._fail(
                runs, JobErrorCode.ENGINE_ERROR, f"The engine returned {len(outputs)} outputs for {len(runs)} jobs"
            )
            return True
        for run, output in zip(runs, outputs, strict=True):
            self._finish(run, output, elapsed, batch_size=len(runs))
        return True

    def _finish(self, run: _Run, output: EngineOutput, elapsed_s: float, *, batch_size: int = 1) -> None:
        """Write the images, then complete: a `success` must always point at readable objects."""
        job = run.job
        if run.is_settled():  # cancelled while its batch-mates ran on
            return
        if run.lost:
            log.warning("job %s: lease lost while running; result dropped", job.id)
            return
        if run.cancel:
            self._cancelled(run)
            return
        if len(output.images) != len(job.output_keys):
            message = f"The engine returned {len(output.images)} images for {len(job.output_keys)} outputs"
            self._fail([run], JobErrorCode.ENGINE_ERROR, message)
            return
        try:
            for index, (key, png) in enumerate(zip(job.output_keys, output.images, strict=True)):
                self._output_store(key, job.future_links[index : index + 1]).put(key, png, "image/png")
        except StorageError as exc:
            self._fail([run], JobErrorCode.STORAGE_UNAVAILABLE, f"The images could not be stored: {exc.message}")
            return
        if run.lease_lost():  # lost while writing: the new owner writes the same keys and completes
            log.warning("job %s: lease lost while storing outputs; result dropped", job.id)
            return
        cost = run.timing.cost(elapsed_s)
        # A batch's jobs shared one run: each is charged its share, the cost the queue's ETA should expect per job.
        run_seconds = cost.run_seconds / batch_size if cost.run_seconds is not None else None
        steps = run.total_steps or job.steps
        per_step = run.timing.step_seconds() or (cost.run_seconds / steps if steps > 0 and cost.run_seconds else None)
        self._settle(
            run,
            "complete",
            lambda job_id: self._jobs.complete(
                job_id,
                self.worker_id,
                result=dict(output.meta),
                seconds_per_step=per_step,
                run_seconds=run_seconds,
                load_seconds=cost.load_seconds,
            ),
        )
        if run.settled:
            log.info("job %s succeeded: %s in %.1f s", job.id, run.describe(), run.seconds())

    def _cancelled(self, run: _Run) -> None:
        self._settle(run, "mark_cancelled", lambda job_id: self._jobs.mark_cancelled(job_id, self.worker_id))
        if run.settled:
            log.info("job %s cancelled: %s after %.1f s", run.job.id, run.describe(), run.seconds())

    def _output_store(self, key: str, link: Sequence[str]) -> ObjectStore:
        """The store the job's promised link points into (update_s3 may have switched stores meanwhile)."""
        if not isinstance(self._objects, SwitchingObjectStore) or not link:
            return self._objects
        found = self._objects.find_store_for_link(key, link[0])
        if found is None and self._control is not None:
            # The link points into a store this worker does not know yet: the API switched after our last look.
            self._control.sync_storage()
            found = self._objects.find_store_for_link(key, link[0])
        return found or self._objects.active

    def _settle_stopped(self, runs: Sequence[_Run]) -> None:
        """The engine stopped early: cancelled jobs are marked so, the rest go back to the queue on a stop."""
        releasing = self._past_grace()
        for run in runs:
            if run.settled:
                continue
            if run.lost:
                log.warning("job %s: lease lost while running; stopped", run.job.id)
            elif run.cancel:
                self._cancelled(run)
            elif releasing:
                log.info("job %s: released back to the queue (worker stopping)", run.job.id)
                self._settle(run, "release", lambda job_id: self._jobs.release(job_id, self.worker_id))
            else:
                self._fail([run], JobErrorCode.ENGINE_ERROR, "The engine stopped the job without a cancel request")

    def _fail(self, runs: Sequence[_Run], code: JobErrorCode, message: str) -> None:
        for run in runs:
            if run.lost or run.settled:
                continue
            log.warning(
                "job %s failed (%s): %s after %.1f s: %s", run.job.id, code, run.describe(), run.seconds(), message
            )
            self._settle(
                run, "fail", lambda job_id: self._jobs.fail(job_id, self.worker_id, code=code, message=message)
            )

    def _settle(self, run: _Run, what: str, action: Callable[[int], object]) -> None:
        """A terminal store call, retried through short database outages; a lost lease means someone else has it."""
        job_id = run.job.id
        try:
            # Past this budget the lease has expired: the job goes back to the queue and is someone else's.
            run.settled = self._retry_for(f"{what} job {job_id}", lambda: action(job_id), max(2 * self._lease_s, 10.0))
        except LeaseLostError:
            run.lost = True
            log.warning("job %s: lease lost before %s; result dropped", run.job.id, what)

    # --- called from the engine's thread through the StepContext

    def on_step(self, run: _Run, batch: Sequence[_Run], done: int, total: int) -> None:
        run.total_steps = total
        now = time.monotonic()
        run.timing.on_step(done, now)
        if run.settled:
            pass  # cancelled inside its batch: nothing more to report
        elif now - run.last_report >= PROGRESS_MIN_INTERVAL_S or done >= total:
            run.last_report = now
            try:
                if self._jobs.report_progress(run.job.id, self.worker_id, step=done, total=total):
                    run.cancel = True
            except LeaseLostError:
                run.lost = True
            except DATABASE_OUTAGES as exc:
                log.warning("job %s: progress not recorded (database unavailable): %s", run.job.id, exc)
        if self._past_grace():
            raise JobCancelled("the worker is stopping and the grace period has passed")
        if all(member.cancel or member.lost for member in batch):
            raise JobCancelled("cancel requested" if run.cancel else "lease lost")
        if run.cancel and not (run.settled or run.lost):
            # Cancelled while its batch-mates go on: it leaves the batch now (its images will be dropped).
            self._cancelled(run)

    def _past_grace(self) -> bool:
        if not self._stop.is_set():
            return False
        if self._stop_seen_at is None:
            self._stop_seen_at = time.monotonic()
        return time.monotonic() - self._stop_seen_at >= self._grace_s

    # --- heartbeat thread

    def _heartbeat_loop(self, finished: threading.Event) -> None:
        while not finished.is_set():
            if self._stop.is_set():
                finished.wait(self._beat_s)
            else:
                # Wakes at once on a stop, so the grace period starts when the stop came, not at the next beat.
                self._stop.wait(self._beat_s)
                self._past_grace()
            if not finished.is_set():
                self._beat()

    def _beat(self) -> None:
        with self._lock:
            runs = [run for run in self._runs if not run.settled]
        try:
            if runs:
                owned = self._jobs.heartbeat([run.job.id for run in runs], self.worker_id, lease_s=self._lease_s)
                for run in runs:
                    if run.job.id not in owned:
                        if not (run.lost or run.settled):
                            log.warning("job %s: lease lost (expired and re-queued); stopping it", run.job.id)
                        run.lost = True
                    elif owned[run.job.id]:
                        run.cancel = True
            self._jobs.worker_heartbeat(self.worker_id, held_models=self._held)
            # Any process may put expired leases back; doing it here keeps jobs of dead workers moving.
            self._jobs.requeue_expired()
        except DATABASE_OUTAGES as exc:
            log.warning("heartbeat failed (database unavailable): %s", exc)
        except sa_exc.SQLAlchemyError:
            # Not a known outage, but the thread must live on: without heartbeats every lease would be lost.
            log.exception("heartbeat failed")

    # --- helpers

    def _snapshot_held(self) -> tuple[str, ...]:
        return tuple(sorted({model for engine in self._engines for model in engine.held_models()}))

    def _back_off(self, what: str, exc: Exception, failures: int) -> None:
        delay = backoff_delay(failures)
        log.warning("%s failed (database unavailable), retrying in %.1f s: %s", what, delay, exc)
        self._stop.wait(delay)

    def _retry_until_stopped(self, what: str, action: Callable[[], object]) -> bool:
        failures = 0
        while not self._stop.is_set():
            try:
                action()
                return True
            except DATABASE_OUTAGES as exc:
                failures += 1
                self._back_off(what, exc, failures)
        return False

    def _retry_for(self, what: str, action: Callable[[], object], budget_s: float) -> bool:
        """Retry transient database errors for up to `budget_s` (not cut short by a stop: this settles a job)."""
        deadline = time.monotonic() + budget_s
        failures = 0
        while True:
            try:
                action()
                return True
            except DATABASE_OUTAGES as exc:
                failures += 1
                delay = backoff_delay(failures)
                if time.monotonic() + delay > deadline:
                    log.error("%s failed for %.0f s (database unavailable), giving up: %s", what, budget_s, exc)
                    return False
                log.warning("%s failed (database unavailable), retrying in %.1f s: %s", what, delay, exc)
                time.sleep(delay)
