"""Long-running work as operations: an id, progress events, a result, cancel.

An operation wraps a coroutine that receives a `Progress` callback. Events are
kept in memory for streaming (`events(since)` waits for new ones) and the final
state is written to the store. Work keyed by the same `key` while one is
running joins that operation instead of starting a second (two concurrent pulls
of one artifact share one operation).

Cancel is cooperative for work running in threads: the progress callback
raises `Cancelled` at the next report once cancel was requested; asyncio work
is cancelled directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from banger.api.models import ErrorBody, Operation, OperationEvent, OpState
from banger.errors import BangerError, Cancelled, NotFound, from_os_error
from banger.progress import Progress
from banger.store import Store

log = logging.getLogger("banger.operations")

Work = Callable[[Progress], Awaitable[Any]]


class _Op:
    def __init__(self, kind: str, target: str, key: str | None) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.kind = kind
        self.target = target
        self.key = key
        self.state: OpState = "running"
        self.created_at = time.time()
        self.finished_at: float | None = None
        self.events: list[OperationEvent] = []
        self.result: Any = None
        self.error: ErrorBody | None = None
        self.cancel_requested = False
        self.task: asyncio.Task[None] | None = None
        self.changed = asyncio.Condition()

    def model(self) -> Operation:
        return Operation(
            id=self.id,
            kind=self.kind,
            target=self.target,
            state=self.state,
            created_at=self.created_at,
            finished_at=self.finished_at,
            stage=self.events[-1].stage if self.events else "",
            result=self.result,
            error=self.error,
        )


class OperationManager:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._ops: dict[str, _Op] = {}
        self._by_key: dict[str, _Op] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._notifiers: set[asyncio.Future[None]] = set()

    def start(self, kind: str, target: str, work: Work, *, key: str | None = None) -> Operation:
        if key is not None and key in self._by_key:
            return self._by_key[key].model()
        self._loop = asyncio.get_running_loop()
        op = _Op(kind, target, key)
        self._ops[op.id] = op
        if key is not None:
            self._by_key[key] = op
        self._store.insert(
            "operations",
            {
                "id": op.id,
                "kind": kind,
                "target": target,
                "state": op.state,
                "created_at": op.created_at,
            },
        )
        op.task = asyncio.create_task(self._run(op, work), name=f"op-{kind}-{op.id}")
        return op.model()

    def _progress_for(self, op: _Op) -> Progress:
        loop = self._loop
        assert loop is not None

        def progress(stage: str, detail: str = "", fraction: float | None = None) -> None:
            if op.cancel_requested:
                raise Cancelled(f"{op.kind} {op.target} was cancelled")
            event = OperationEvent(
                seq=len(op.events), time=time.time(), stage=stage, detail=detail, fraction=fraction
            )
            log.info("op %s %s %s: %s %s", op.id, op.kind, op.target, stage, detail)
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                self._append(op, event)
            else:  # called from a worker thread
                loop.call_soon_threadsafe(self._append, op, event)

        return progress

    def _append(self, op: _Op, event: OperationEvent) -> None:
        op.events.append(event)
        task = asyncio.ensure_future(self._notify(op))
        self._notifiers.add(task)
        task.add_done_callback(self._notifiers.discard)

    @staticmethod
    async def _notify(op: _Op) -> None:
        async with op.changed:
            op.changed.notify_all()

    async def _run(self, op: _Op, work: Work) -> None:
        try:
            op.result = await work(self._progress_for(op))
            op.state = "succeeded"
        except (asyncio.CancelledError, Cancelled):
            op.state = "cancelled"
            op.error = ErrorBody(code="cancelled", message=f"{op.kind} {op.target} was cancelled")
        except BangerError as exc:
            op.state = "failed"
            op.error = ErrorBody(**exc.to_dict())
        except Exception as exc:
            mapped = from_os_error(exc)
            op.state = "failed"
            if mapped is not None:
                log.warning("operation %s failed: %s", op.id, mapped.message)
                op.error = ErrorBody(**mapped.to_dict())
            else:
                log.exception("operation %s failed", op.id)
                op.error = ErrorBody(
                    code="internal",
                    message=f"{op.kind} {op.target} failed: {exc}",
                    hint="see the daemon log (banger daemon status shows where)",
                )
        finally:
            op.finished_at = time.time()
            if op.key is not None:
                self._by_key.pop(op.key, None)
            self._store.update(
                "operations",
                "id",
                op.id,
                {
                    "state": op.state,
                    "finished_at": op.finished_at,
                    "result": op.result if _jsonable(op.result) else None,
                    "error": op.error.model_dump() if op.error else None,
                },
            )
            await self._notify(op)

    def get(self, op_id: str) -> Operation:
        return self._get(op_id).model()

    def _get(self, op_id: str) -> _Op:
        op = self._ops.get(op_id)
        if op is None:
            raise NotFound(
                f"no operation `{op_id}`", hint="`banger daemon status` lists running operations"
            )
        return op

    def all(self) -> list[Operation]:
        return [op.model() for op in self._ops.values()]

    def running(self) -> list[Operation]:
        return [op.model() for op in self._ops.values() if op.state == "running"]

    def cancel(self, op_id: str) -> Operation:
        op = self._get(op_id)
        if op.state == "running":
            op.cancel_requested = True
            if op.task is not None:
                op.task.cancel()
        return op.model()

    async def wait(self, op_id: str) -> Operation:
        op = self._get(op_id)
        if op.task is not None:
            await asyncio.wait([op.task])
        return op.model()

    async def events(self, op_id: str, since: int = 0) -> AsyncIterator[OperationEvent | Operation]:
        """Yield events from `since`, then the final Operation once it has finished."""
        op = self._get(op_id)
        seq = since
        while True:
            while seq < len(op.events):
                yield op.events[seq]
                seq += 1
            if op.state != "running":
                yield op.model()
                return
            async with op.changed:
                if seq >= len(op.events) and op.state == "running":
                    await op.changed.wait()

    async def shutdown(self) -> None:
        tasks = [op.task for op in self._ops.values() if op.task and not op.task.done()]
        for op in self._ops.values():
            op.cancel_requested = True
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, dict))
