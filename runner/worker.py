"""Workers: execute task requests of one route and report results to ``control``.

Workers are stateless. A request's offset is committed only after its result, and the
result of every request before it in its partition, was written to ``control``; the
requests done beyond it are named in the commit's metadata (``log.progress``). A worker
that dies leaves its uncommitted requests to the partition's next owner, which executes
them again except those named done; the run state machine ignores a result that was
already counted.

Requests run concurrently (at most ``concurrency`` at a time) and each result is written
as soon as its task finishes, together with whatever else finished meanwhile: a slow task
holds back no other task's result, only the commit of the offsets after its own
(``Uncommitted``). A request fetched again while it still runs or waits for that commit
(the group rebalanced and the partition stayed here) is not executed again.

Flow control (``flow.gate``): a request runs only when its circuit breaker admits it.
While the route's breaker is open the worker pauses its partitions (the requests wait in
Kafka) and holds the ones it fetched; nothing is executed, so no attempt is spent. While
it holds, it tells every control partition so (``RouteHeld``), so the run table does not
take the waiting attempts for lost. Every transition is a CloudEvent on ``hw.status`` and
a log line.

Health checks (``flow.health``, probes in ``probes.py``): the services the route's tasks
need (``needs_services:``) are probed in the background; while one is unhealthy the
requests of the tasks that need it are held the same way (others of the route go on), and
they run by themselves once it is healthy again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

from headwater.runner import metrics
from headwater.runner.cancels import Cancels
from headwater.runner.envelope import to_kafka
from headwater.runner.errors import BadMessage, TaskFailed
from headwater.runner.executor import TaskContext, execute
from headwater.runner.flow.gate import Gate
from headwater.runner.flow.health import Health, parse_service
from headwater.runner.flow.pressure import Valve
from headwater.runner.flow.routes import RouteInfo
from headwater.runner.log import kafka
from headwater.runner.log.lag import committed_offsets
from headwater.runner.log.progress import Uncommitted, done_offsets
from headwater.runner.log.records import (
    HOLD_NOTICE_EVERY,
    RouteHeld,
    TaskFinished,
    decode_task_request,
    dlq_record,
    encode_control,
    record_origin,
)
from headwater.runner.model.pipeline import Pipeline, Task
from headwater.runner.observe.status import status_event
from headwater.runner.probes import Prober
from headwater.runner.settings import Settings
from headwater.runner.supervise import supervise

log = logging.getLogger(__name__)
FETCH_RECORDS = 500
#: The route's partitions are paused (backpressure) while this many requests are running
#: or waiting for a slot or a breaker ...
MAX_RUNNING = 2 * FETCH_RECORDS
#: Seconds between looks at the services a held request needs.
HEALTH_WAIT = 0.2
#: ... or while this many fetched requests wait for their offsets' commit (a long task
#: at the head of a partition holds back the commit of every request after it).
MAX_UNCOMMITTED = 50_000
RUNNING, UNCOMMITTED = "requests running or held", "requests waiting for their commit"
#: Seconds a newly assigned partition's previous progress may take to read.
DONE_EARLIER_WITHIN = 10.0
#: A busy worker pauses and resumes at its bounds many times a second: only a pause that
#: lasts this long is reported (log, ``hw.status``), with its resume.
FULL_SAID_AFTER = 5.0
#: On stop, how long running tasks may still finish and report before they are
#: abandoned (their requests are executed again by the partition's next owner).
STOP_DRAIN_S = 10.0
#: A failed attempt's error text is cut to this (an exception's message can be huge).
MAX_ERROR_CHARS = 4000

_Write = tuple[str, bytes, bytes | None]
_Report = tuple[TopicPartition, int, _Write]
_END = None  # put on the queue of reports once no task can report any more


class Worker:
    def __init__(
        self,
        settings: Settings,
        pipelines: Mapping[str, Pipeline],
        route: str = "default",
        concurrency: int | None = None,
        *,
        info: RouteInfo | None = None,
        cancels: Cancels | None = None,
    ) -> None:
        """A worker of ``route``'s requests; ``info``: the route this worker belongs to
        (its region and residency; another route than ``route`` when it serves a route
        that is down, as its fallback); ``cancels``: the process's cancelled runs, read by
        whoever made it (without: this worker reads them itself)."""
        self._settings = settings
        self._topics = settings.topics
        self._pipelines = pipelines
        self._route = route
        self._info = info or RouteInfo(route)
        self.running = 0
        self._own_cancels = cancels is None
        self._cancels = cancels or Cancels(settings)
        self._concurrency = concurrency or settings.worker_concurrency
        self._gate = Gate(route, settings.breaker, time.monotonic)
        self._full = Valve(
            f"worker {route}",
            settings.topics.tasks(route),
            {RUNNING: MAX_RUNNING, UNCOMMITTED: MAX_UNCOMMITTED},
            report_after=FULL_SAID_AFTER,
            route=route,
        )
        self._outcome = asyncio.Event()  # set (and replaced) on each outcome: wakes holders
        self._health = Health(
            time.monotonic, interval=settings.health_interval, timeout=settings.health_timeout
        )
        for pipeline in pipelines.values():
            for task in pipeline.tasks:
                if task.route == route:
                    for service in task.needs_services:
                        self._health.watch(parse_service(service))

    async def run(self, stopping: asyncio.Event) -> None:
        uncommitted = Uncommitted()
        consumer = kafka.consumer(
            self._settings,
            group=self._topics.group(f"workers.{self._route}"),
            max_poll_interval_ms=3_600_000,
        )

        async def assigned(partitions: list[TopicPartition]) -> None:
            uncommitted.keep_only(partitions)  # revoked ones may come straight back
            # aiokafka fetches from a new assignment while this listener runs: its
            # records wait (paused, sought back) until the previous progress is known.
            learning.update(partitions)
            consumer.pause(*partitions)
            try:
                await self._done_earlier(uncommitted, partitions)
            finally:
                learning.difference_update(partitions)

        learning: set[TopicPartition] = set()
        rebalance = kafka.Rebalance(assigned=assigned)
        consumer.subscribe([self._topics.tasks(self._route)], listener=rebalance)
        finished: asyncio.Queue[_Report | None] = asyncio.Queue()
        room = asyncio.Event()
        slots = asyncio.Semaphore(self._concurrency)
        running: set[asyncio.Task[None]] = set()

        async def attempt(tp: TopicPartition, record: Any) -> None:
            try:
                write = await self._attempt(record, slots)
            except Exception as exc:  # a request must be reported, whatever happened
                log.exception("task request %s:%d failed in the worker", tp, record.offset)
                write = self._dlq(record, f"worker error: {type(exc).__name__}: {exc}")
            finished.put_nowait((tp, record.offset, write))

        def done(task: asyncio.Task[None]) -> None:
            running.discard(task)
            room.set()

        producer = kafka.producer(self._settings)  # its own: a restart starts a fresh one
        probing = asyncio.Event()
        prober = asyncio.create_task(Prober(os.environ).run(self._health, probing))
        helpers = [prober]
        if self._own_cancels:  # not shared: this worker reads the cancels itself
            helpers.append(asyncio.create_task(supervise("cancels", self._cancels.run, probing)))
        async with kafka.started(producer, consumer):
            reporter = asyncio.create_task(
                self._report(producer, consumer, uncommitted, finished, room)
            )
            try:
                while not stopping.is_set():
                    room.clear()
                    self.running = len(running)
                    self._pause(consumer, len(running), len(uncommitted), learning)
                    wait_ms = 200
                    if not self._full.is_open:  # paused: until a task ends or a commit
                        await _wait(room, 0.2)
                        wait_ms = 0  # still polled: the group sees this consumer alive
                    batch = await consumer.getmany(timeout_ms=wait_ms, max_records=FETCH_RECORDS)
                    _raise_if_failed(reporter)
                    for tp, records in batch.items():
                        if tp in learning:
                            consumer.seek(tp, records[0].offset)  # read again after
                            continue
                        for record in records:
                            if uncommitted.add(tp, record.offset):
                                task = asyncio.create_task(attempt(tp, record))
                                running.add(task)
                                task.add_done_callback(done)
                if running:  # stopping: let running tasks report, within a grace
                    await asyncio.wait(list(running), timeout=STOP_DRAIN_S)
                for task in list(running):
                    task.cancel()
                finished.put_nowait(None)
                await reporter
            finally:
                probing.set()
                for task in [*running, reporter]:
                    task.cancel()
                await asyncio.gather(*running, reporter, *helpers, return_exceptions=True)

    async def _report(
        self,
        producer: AIOKafkaProducer,
        consumer: Any,
        uncommitted: Uncommitted,
        finished: asyncio.Queue[_Report | None],
        room: asyncio.Event,
    ) -> None:
        """Write results as they come, each write carrying every result finished by then;
        commit what they complete. Returns after the ``None`` that marks the end."""
        writer = kafka.BatchWriter(producer)  # a restart starts with nothing half-added
        last_notice = 0.0
        while True:
            reports: list[_Report | None] = []
            with contextlib.suppress(TimeoutError):  # at least each second: flow changes
                reports.append(await asyncio.wait_for(finished.get(), 1.0))
            while not finished.empty():
                reports.append(finished.get_nowait())
            end = bool(reports) and reports[-1] is _END
            done = [report for report in reports if report is not None]
            for _, _, (topic, value, key) in done:
                await writer.add(topic, value, key=key)
            await self._publish_changes(writer)
            holding = self._gate.holding() or self._health.holding(self._health_names)
            if holding is not None and time.monotonic() - last_notice >= HOLD_NOTICE_EVERY:
                last_notice = time.monotonic()
                notice = encode_control(RouteHeld(self._route, holding))
                for partition in range(await writer.partitions(self._topics.control)):
                    await writer.add(self._topics.control, notice, partition=partition)
            writes = await writer.flush()
            await kafka.all_acknowledged(writes, self._settings.kafka.write_timeout)
            for tp, offset, _ in done:
                uncommitted.written(tp, offset)
            assigned = consumer.assignment()
            commits = {tp: c for tp, c in uncommitted.commits().items() if tp in assigned}
            if commits and await kafka.commit(consumer, commits):
                uncommitted.committed(commits)
                room.set()
            if end:
                return

    async def _done_earlier(
        self, uncommitted: Uncommitted, partitions: list[TopicPartition]
    ) -> None:
        """The requests the partitions' previous owner had done past its committed offset
        (its commit's metadata): not executed again. Unknown if it cannot be read: then
        they run again, as at-least-once allows."""
        if not partitions:
            return
        group = self._topics.group(f"workers.{self._route}")
        try:
            found = await asyncio.wait_for(
                committed_offsets(self._settings, group, partitions), DONE_EARLIER_WITHIN
            )
        except Exception as exc:  # noqa: BLE001 - only costs executing them again
            log.warning("worker %s: previous owner's progress not read (%r)", self._route, exc)
            return
        for tp, meta in found.items():
            uncommitted.earlier(tp, done_offsets(meta.offset, meta.metadata))

    async def _attempt(self, record: Any, slots: asyncio.Semaphore) -> _Write:
        """Execute one request; returns the write (topic, value, key) that reports it."""
        try:
            request = decode_task_request(record.value)
            pipeline = self._pipelines.get(request["pipeline"])
            if pipeline is None:
                raise BadMessage(f"pipeline {request['pipeline']!r} is not loaded by this worker")
            task = pipeline.task(request["task"])
        except (BadMessage, KeyError) as exc:
            return self._dlq(record, exc.args[0] if isinstance(exc, KeyError) else str(exc))
        residency = task.residency
        if residency is not None and residency != self._info.residency:
            # By construction it cannot come here (a route keeps its residency, and so do
            # its fallbacks); if a misconfigured worker gets it anyway, it never runs it.
            where = self._info.residency or "none declared"
            refused = (
                f"residency {residency}: route {self._info.name} (residency {where}) may not "
                "run this task; it was not run"
            )
            return self._result(request, task.name, False, None, refused, True, time.time())
        why = self._cancels.why(request["run_id"])
        if why is not None:  # cancelled while its request waited: not started
            return self._result(
                request, task.name, False, None, f"{why}; not run", True, time.time()
            )
        context = TaskContext(
            run_id=request["run_id"],
            pipeline=pipeline.name,
            task=task.name,
            attempt=request["attempt"],
            event=request["event"],
            upstream=request["upstream"],
            params=task.params,
        )
        gate, breaker = self._gate, task.breaker
        retriable = final = False
        while True:  # held until its breaker admits it, then run in a slot: nothing spent
            while self._health.holding(task.needs_services) is not None:  # noqa: ASYNC110
                await asyncio.sleep(HEALTH_WAIT)  # until the services it needs are back
            while not gate.ready(pipeline.name, task.name, breaker):
                wake = self._outcome
                with contextlib.suppress(TimeoutError):
                    hint = gate.wait_hint(pipeline.name, task.name, breaker)
                    await asyncio.wait_for(wake.wait(), min(max(hint, 0.05), 5.0))
            async with slots:
                # Admitted only with a slot in hand: requests waiting for a slot when the
                # breaker opened or a service went down are held, not run.
                if self._health.holding(task.needs_services) is not None:
                    continue
                if not gate.admit(pipeline.name, task.name, breaker):
                    continue
                started = time.time()
                try:
                    output = await self._execute(task, context)
                    error, ok = None, True
                except TaskFailed as exc:
                    output, error, ok = None, str(exc)[:MAX_ERROR_CHARS], False
                    retriable, final = exc.retriable, exc.final
                except BaseException:  # stopping: a probe let through must not stay out
                    gate.abandon(pipeline.name, task.name, breaker)
                    raise
                break
        gate.outcome(pipeline.name, task.name, breaker, ok, retriable, error)
        self._outcome.set()
        self._outcome = asyncio.Event()
        return self._result(request, task.name, ok, output, error, final, started)

    async def _execute(self, task: Task, context: TaskContext) -> Any:
        """``execute``, stopped if its run is cancelled meanwhile (``TaskFailed``, final)."""
        why = self._cancels.why(context.run_id)
        if why is not None:  # cancelled while it waited for its slot or breaker
            raise TaskFailed(f"{why}; not run", final=True)
        settings = self._settings
        execution = asyncio.ensure_future(
            execute(task, context, settings.max_output_bytes, settings.task_timeout)
        )
        stopped: list[str] = []

        def stop(why: str) -> None:
            stopped.append(why)
            execution.cancel()

        unwatch = self._cancels.watch(context.run_id, stop)
        try:
            return await execution
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if stopped and (current is None or not current.cancelling()):
                log.info("run %s: task %s stopped (%s)", context.run_id, task.name, stopped[0])
                raise TaskFailed(f"{stopped[0]}; stopped while running", final=True) from None
            raise
        finally:
            unwatch()

    def _result(
        self,
        request: dict[str, Any],
        task: str,
        ok: bool,
        output: Any,
        error: str | None,
        final: bool,
        started: float,
    ) -> _Write:
        """The ``task.finished`` write of an attempt, with where it ran."""
        outcome = "succeeded" if ok else "failed"
        duration = max(0.0, time.time() - started)
        metrics.TASK_DURATION.labels(request["pipeline"], task, outcome).observe(duration)
        ran_on: dict[str, Any] = {
            "route": self._info.name,
            "region": self._info.region,
            "instance": self._settings.instance,
        }
        if self._info.cloud is not None:
            ran_on["cloud"] = self._info.cloud
        if self._info.name != self._route:
            ran_on["for_route"] = self._route  # served as the down route's fallback
        result = TaskFinished(
            run_id=request["run_id"],
            task=task,
            attempt=request["attempt"],
            ok=ok,
            output=output,
            error=error,
            started_at=started,
            finished_at=time.time(),
            final=final,
            ran_on=ran_on,
        )
        key = request.get("key")  # its run's control messages' key, when not its id
        key = key if isinstance(key, str) else request["run_id"]
        return self._topics.control, encode_control(result), key.encode()

    @property
    def _health_names(self) -> list[str]:
        return [spec.name for spec in self._health.watched()]

    def _pause(
        self, consumer: Any, running: int, uncommitted: int, learning: set[TopicPartition]
    ) -> None:
        """The route's partitions are paused (again after a rebalance) while the worker is
        full (backpressure: its requests wait in Kafka, its memory stays bounded) or the
        route's breaker is open; resumed once it has drained to half and the breaker is no
        longer open (half-open: a probe must be able to arrive). A newly assigned
        partition stays paused while its previous progress is being read (``learning``)."""
        self._full.observe({RUNNING: running, UNCOMMITTED: uncommitted})
        if self._gate.paused() or not self._full.is_open:
            consumer.pause(*consumer.assignment())
            return
        resumable = consumer.paused() - learning
        if resumable:
            consumer.resume(*resumable)

    async def _publish_changes(self, writer: kafka.BatchWriter) -> None:
        """Each flow transition since the last call: a log line, a CloudEvent on
        ``hw.status`` (keyed by route, so one route's changes stay in order)."""
        for change in [*self._gate.changes(), *self._health.changes(), *self._full.changes()]:
            log.warning("%s: %s %s", change.scope, change.kind, change.data.get("reason") or "")
            event = status_event(change, self._settings.instance, "worker")
            headers, value = to_kafka(event)
            await writer.add(self._topics.status, value, key=self._route.encode(), headers=headers)

    def _dlq(self, record: Any, reason: str) -> _Write:
        metrics.DLQ_RECORDS.labels("worker").inc()
        return self._topics.dlq, dlq_record(reason, record_origin(record), record.value), None


async def _wait(event: asyncio.Event, within: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), within)


def _raise_if_failed(reporter: asyncio.Task[None]) -> None:
    if reporter.done():
        reporter.result()  # the reporter's failure (Kafka unreachable) restarts the worker
