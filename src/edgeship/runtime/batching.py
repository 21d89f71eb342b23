"""Dynamic batching: requests queue up while the model is busy and run together.

One worker per model takes the oldest request, then keeps taking queued requests whose
non-batch dimensions match until the batch holds ``max_batch_size`` rows or the queue delay
has passed since it started collecting.

- A fixed delay (``max_queue_delay_s``) works like Triton's ``max_queue_delay_microseconds``;
  0 never waits and batches only what queued while the previous batch ran.
- ``None`` (the default) adapts: it waits only while the batch holds fewer rows than the
  previous one did, and at most a tenth of a batch's run time (capped at 10 ms). A lone client
  never waits (its previous batch had one row); under steady concurrency the clients that
  were all answered together come back within a few milliseconds and are batched together
  again, instead of the first one running alone and the rest piling up behind it.

The queue is bounded: a request that finds it full is refused at once (the server answers
503) instead of waiting without limit.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import numpy as np

__all__ = ["QueueFullError", "DynamicBatcher"]


class QueueFullError(Exception):
    """The model's queue is full."""


@dataclass
class _Item:
    inputs: dict[str, np.ndarray]
    rows: int
    key: tuple[Any, ...]
    future: asyncio.Future[dict[str, np.ndarray]] = field(repr=False)


def _compat_key(inputs: dict[str, np.ndarray]) -> tuple[Any, ...]:
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(inputs.items()))


class DynamicBatcher:
    """Queue and batch requests for one model; ``run`` executes one batch (in a thread)."""

    def __init__(
        self,
        run: Callable[[dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]],
        max_batch_size: int,
        max_queue_delay_s: float | None,
        max_queue: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._run = run
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_queue_delay_s = None if max_queue_delay_s is None else max(0.0, float(max_queue_delay_s))
        self._last_rows = 1
        self._run_seconds = 0.0  # moving average of one batch's run time
        self.max_queue = max(1, int(max_queue))
        self._on_batch = on_batch or (lambda rows: None)
        self._queue: collections.deque[_Item] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.busy = False

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Finish everything queued, then stop."""
        while self._queue or self.busy:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def submit(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(self._queue) >= self.max_queue:
            raise QueueFullError(f"the queue holds {len(self._queue)} requests, its limit; retry later.")
        first = next(iter(inputs.values()))
        item = _Item(inputs, int(first.shape[0]) if first.ndim else 1, _compat_key(inputs),
                     asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self._wakeup.set()
        return await item.future

    async def _take_batch(self) -> list[_Item]:
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        first = self._queue.popleft()
        batch, rows = [first], first.rows
        loop = asyncio.get_running_loop()
        if self.max_queue_delay_s is None:  # adaptive: expect as many rows as last time
            target, delay = min(self.max_batch_size, self._last_rows), min(0.1 * self._run_seconds, 0.010)
        else:
            target, delay = self.max_batch_size, self.max_queue_delay_s
        deadline = loop.time() + delay
        while rows < self.max_batch_size:
            match = next((i for i in self._queue if i.key == first.key and rows + i.rows <= self.max_batch_size), None)
            if match is not None:
                self._queue.remove(match)
                batch.append(match)
                rows += match.rows
                continue
            if rows >= target:
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        while True:
            batch = await self._take_batch()
            self.busy = True
            try:
                await self._execute(batch)
            finally:
                self.busy = False

    async def _execute(self, batch: list[_Item]) -> None:
        rows = sum(i.rows for i in batch)
        self._on_batch(rows)
        self._last_rows = rows
        started = time.perf_counter()
        try:
            if len(batch) == 1:
                feeds = batch[0].inputs
            else:
                feeds = {name: np.concatenate([i.inputs[name] for i in batch]) for name in batch[0].inputs}
            outputs = await self._run(feeds)
            self._run_seconds = 0.8 * self._run_seconds + 0.2 * (time.perf_counter() - started)
        except Exception as exc:
            if len(batch) > 1:  # one bad request must not fail the others batched with it: run each alone
                for item in batch:
                    await self._execute([item])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        start = 0
        for item in batch:
            if len(batch) == 1:
                part = outputs
            else:
                part = {k: v[start:start + item.rows] for k, v in outputs.items()}
            start += item.rows
            if not item.future.done():  # the client may have gone away
                item.future.set_result(part)
