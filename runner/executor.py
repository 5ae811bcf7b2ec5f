"""Executing one task attempt: a Python callable or a command.

A task receives a ``TaskContext`` (the trigger event, its upstream tasks' outputs, its
``with`` params) and returns a JSON-serialisable output. Whatever goes wrong (an
exception, a non-zero exit, a timeout, an output that is not JSON) becomes ``TaskFailed``
with a message naming it; nothing else escapes ``execute``. A failure is ``retriable``
(counts against the route's circuit breaker) when the task raised ``Retriable``, a lost or
refused connection, a client's timeout or an HTTP 5xx/429 error (``errors.retriable``), or
a command exited with status 75 (EX_TEMPFAIL); a bug in the task's code, or the task
running past its own ``timeout``, is not.

- ``python: module:function``: sync functions run in a worker thread, async ones on the
  loop; both are bounded by the task's ``timeout`` (a timed-out thread cannot be killed,
  only abandoned: prefer async code or commands for work that may hang).
- ``command: [...]``: run without a shell; the context arrives as JSON on stdin and in
  ``HEADWATER_*`` variables; stdout is the output (parsed as JSON when it is JSON). On
  timeout the process is killed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import importlib
import inspect
import os
import signal
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import orjson

from headwater.runner.errors import ConfigError, Permanent, TaskFailed, retriable
from headwater.runner.model.pipeline import HttpCall, Task
from headwater.runner.runs.joins import JOIN_TYPE
from headwater.runner.runs.windows import BATCH_TYPE
from headwater.runner.secrets import (
    has_reference,
    prefetch,
    redact,
    redact_value,
    resolve_all,
    resolve_embedded,
)
from headwater.runner.settings import MAX_OUTPUT_BYTES, TASK_TIMEOUT

_STDERR_TAIL = 2000
#: A command exiting with this status (sysexits' EX_TEMPFAIL) says "a service I need
#: failed, try again later": the failure counts against its route's breaker.
EX_TEMPFAIL = 75


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a task sees. ``event`` is the trigger CloudEvent as a structured-mode dict."""

    run_id: str
    pipeline: str
    task: str
    attempt: int
    event: dict[str, Any]
    upstream: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def data(self) -> Any:
        """The trigger event's data."""
        return self.event.get("data")

    @property
    def events(self) -> list[dict[str, Any]]:
        """The events this run is for: a batching trigger's window or a join's events, in
        order, or the trigger event alone."""
        if self.event.get("type") in (BATCH_TYPE, JOIN_TYPE):
            return list(self.event["data"]["events"])
        return [self.event]


_callables: dict[str, Callable[..., Any]] = {}


def resolve_callable(target: str) -> Callable[..., Any]:
    """Import ``module:function`` once; raises ``TaskFailed`` naming what is missing."""
    if target in _callables:
        return _callables[target]
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise TaskFailed(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    function: Callable[..., Any] | None = getattr(module, attr, None)
    if function is None or not callable(function):
        raise TaskFailed(f"{module_name!r} has no callable {attr!r}")
    _callables[target] = function
    return function


async def execute(
    task: Task,
    context: TaskContext,
    max_output_bytes: int = MAX_OUTPUT_BYTES,
    default_timeout: float = TASK_TIMEOUT,
) -> Any:
    """Run one attempt of ``task``; returns its output or raises ``TaskFailed``.

    The output travels in Kafka records (the result, the run's changelog record, the
    requests of the tasks that need it, the completion), so one over ``max_output_bytes``
    (encoded as JSON) fails the attempt with the size, the limit and what to do instead.
    """
    timeout = task.timeout or default_timeout
    try:
        if has_reference(context.params):  # resolved here, where it is used, never stored
            await prefetch(context.params)
            resolved = await asyncio.to_thread(resolve_all, context.params)
            context = dataclasses.replace(context, params=resolved)
        if task.kind == "python":
            output = await asyncio.wait_for(_call(str(task.target), context), timeout)
        elif task.kind == "http":
            assert isinstance(task.target, HttpCall)
            output = await asyncio.wait_for(
                _request(task.target, context, max_output_bytes), timeout
            )
        else:
            output = await _run_command(task, context, timeout)
    except TimeoutError:
        # The task's own timeout says nothing about a service (a hung task is its code's
        # problem); a client's timeout raised inside the task does count (``retriable``).
        raise TaskFailed(f"timed out after {timeout:g}s") from None
    except TaskFailed as exc:
        raise TaskFailed(redact(str(exc)), exc.retriable, exc.final) from None
    except ConfigError as exc:  # a secret reference that cannot be resolved
        raise TaskFailed(str(exc)) from None
    except Exception as exc:
        final = isinstance(exc, Permanent)
        raise TaskFailed(redact(f"{type(exc).__name__}: {exc}"), retriable(exc), final) from exc
    output = redact_value(output)  # a task that echoes a secret does not publish it
    try:
        size = len(orjson.dumps(output))
    except TypeError as exc:
        raise TaskFailed(f"output is not JSON-serialisable: {exc}") from None
    if size > max_output_bytes:
        raise TaskFailed(
            f"output is {size:,} bytes, over the limit of {max_output_bytes:,} bytes "
            "(HEADWATER_MAX_OUTPUT_BYTES); write the data to object storage and return "
            "a reference to it (e.g. its URL) instead"
        )
    return output


class SyncPool:
    """The threads sync (``def``) tasks run in: a pool of their own, never the event loop's
    default executor (which aiokafka's DNS lookups share). A thread cannot be stopped, so
    an attempt that timed out leaves its thread running; once half the pool is held like
    that, later tasks get a fresh pool, so hung tasks never starve the others."""

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._pool = self._new()
        self._abandoned = 0
        self._calls: set[concurrent.futures.Future[Any]] = set()

    def _new(self) -> concurrent.futures.ThreadPoolExecutor:
        return concurrent.futures.ThreadPoolExecutor(self._size, thread_name_prefix="task")

    def busy(self) -> int:
        """How many calls are still running (abandoned ones included)."""
        return sum(not call.done() for call in self._calls)

    async def run(self, function: Callable[..., Any], context: TaskContext) -> Any:
        pool = self._pool
        call = pool.submit(contextvars.copy_context().run, function, context)
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)
        try:
            return await asyncio.wrap_future(call)
        except asyncio.CancelledError:  # timed out (or stopping)
            if not call.cancel() and pool is self._pool:  # it runs on: its thread is lost
                self._abandoned += 1
                if self._abandoned * 2 >= self._size:
                    pool.shutdown(wait=False)
                    self._pool, self._abandoned = self._new(), 0
            raise


_SYNC = SyncPool()


def hung_threads() -> int:
    """Sync tasks' threads still running a task (hung past their timeout, or still
    finishing one): idle pool threads do not count."""
    return _SYNC.busy()


async def _call(target: str, context: TaskContext) -> Any:
    function = resolve_callable(target)
    try:
        if inspect.iscoroutinefunction(function):
            return await function(context)
        return await _SYNC.run(function, context)
    except asyncio.CancelledError:
        raise  # the worker is stopping, or the attempt timed out
    except BaseException as exc:  # noqa: BLE001 - sys.exit() in a task fails the attempt only
        # Caught here, in the task the call runs in: asyncio hands SystemExit and
        # KeyboardInterrupt that leave a task to the event loop, which stops the process.
        raise TaskFailed(
            f"{type(exc).__name__}: {exc}", retriable(exc), isinstance(exc, Permanent)
        ) from None


async def _request(call: HttpCall, context: TaskContext, max_bytes: int) -> Any:
    """One HTTP request; its response body (JSON if it parses, else text; ``None`` when
    empty) is the output. A 5xx, 429 or 408 answer and a connection error are
    retriable, another 4xx is not."""
    await prefetch([call.url, dict(call.headers), call.json, call.body])
    url = await asyncio.to_thread(resolve_embedded, call.url)
    headers = {
        name: await asyncio.to_thread(resolve_embedded, value) for name, value in call.headers
    }
    body: Any = None
    if call.has_json:
        payload: Any = await asyncio.to_thread(resolve_all, call.json)
        body = orjson.dumps(payload)
        headers.setdefault("Content-Type", "application/json")
    elif call.body is not None:
        body = (await asyncio.to_thread(resolve_embedded, call.body)).encode()
    elif call.method in ("POST", "PUT", "PATCH"):
        body = orjson.dumps(asdict(context))
        headers.setdefault("Content-Type", "application/json")
    async with (
        aiohttp.ClientSession() as session,
        session.request(call.method, url, data=body, headers=headers) as response,
    ):
        raw = await response.content.read(max_bytes + 1)
        status, reason = response.status, response.reason or ""
    text = raw[:max_bytes].decode("utf-8", "replace")
    if status >= 400:
        tail = text.strip()[-_STDERR_TAIL:]
        retry = status >= 500 or status in (408, 429)
        message = f"HTTP {status} {reason} from {_shown(url)}: {tail}"
        raise TaskFailed(message, retriable=retry, final=not retry)
    if len(raw) > max_bytes:
        raise TaskFailed(
            f"the response of {_shown(url)} is over the output limit of {max_bytes:,} bytes "
            "(HEADWATER_MAX_OUTPUT_BYTES): return a reference to the data instead"
        )
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return text


def _shown(url: str) -> str:
    """A URL for an error: its scheme, host and path (no query: it may hold a key)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{parts.path}"


async def _run_command(task: Task, context: TaskContext, within: float) -> Any:
    argv = list(task.target)  # type: ignore[arg-type]
    env = {
        **os.environ,
        "HEADWATER_RUN_ID": context.run_id,
        "HEADWATER_PIPELINE": context.pipeline,
        "HEADWATER_TASK": context.task,
        "HEADWATER_ATTEMPT": str(context.attempt),
    }
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: a timeout kills all of it
        )
    except OSError as exc:
        raise TaskFailed(f"cannot start {argv[0]!r}: {exc.strerror}") from None
    try:
        stdout, stderr = await asyncio.wait_for(
            process.communicate(orjson.dumps(asdict(context))), within
        )
    except BaseException:  # timed out, or the worker is stopping: leave nothing behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise
    if process.returncode != 0:
        tail = stderr.decode("utf-8", "replace").strip()[-_STDERR_TAIL:]
        raise TaskFailed(
            f"command exited with status {process.returncode}: {tail}",
            retriable=process.returncode == EX_TEMPFAIL,
        )
    text = stdout.decode("utf-8", "replace").strip()
    try:
        return orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        return text
