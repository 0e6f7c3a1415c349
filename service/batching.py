"""Micro-batching: one network run for the inputs of concurrent requests.

On a GPU a network runs far faster per image on a batch than on single
images; on a CPU, little or not at all. ``BatchedSession`` stands in for an
onnxruntime session: ``run`` puts the caller's batch on a queue and waits;
one thread per session takes what has queued, waits up to
``VISION_BATCH_WINDOW_MS`` for more (at most ``VISION_MAX_BATCH`` images; a
caller's own batch is never split), runs the network once on the
concatenation and hands each caller its rows.

It is off by default (window 0). On the CPU it needs more than one slot
per worker (``VISION_MAX_CONCURRENCY``) to have anything to merge, gained
about a tenth of throughput under load, and cost a request alone the
whole window (see the README's performance section); on a GPU, where a
batch costs little more than one image, it is the way to use the device.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from service.timing import BATCHING, record

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Request:
    names: tuple[str, ...] | None
    batch: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    outputs: list[np.ndarray] | None = None
    error: BaseException | None = None
    # When the network started on the batch holding this request.
    started: float = 0.0


class BatchedSession:
    """An onnxruntime session whose runs are merged across threads.

    Only graphs with one input whose first axis is the batch are wrapped;
    callers pass that input and get the same outputs as from the session.
    """

    def __init__(
        self, session: ort.InferenceSession, window: float, max_batch: int
    ) -> None:
        self.session = session
        self.window = window
        self.max_batch = max_batch
        self.input_name = session.get_inputs()[0].name
        self._queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        # A daemon: it only ever waits on the queue when nothing is running.
        self._thread = threading.Thread(
            target=self._serve, name=f"batcher-{self.input_name}", daemon=True
        )
        self._thread.start()

    def __getattr__(self, name: str) -> Any:
        # get_inputs, get_outputs, get_providers... come from the session.
        return getattr(self.session, name)

    def run(
        self, output_names: list[str] | None, feeds: dict[str, np.ndarray]
    ) -> list[np.ndarray]:
        (batch,) = feeds.values()
        request = _Request(tuple(output_names) if output_names else None, batch)
        queued = time.perf_counter()
        self._queue.put(request)
        request.done.wait()
        # The wait for the window shows in Server-Timing apart from the run.
        record(BATCHING, max(0.0, request.started - queued))
        if request.error is not None:
            raise request.error
        assert request.outputs is not None
        return request.outputs

    def _serve(self) -> None:
        # A request that would overfill a batch opens the next one.
        carried: _Request | None = None
        while True:
            first = carried or self._queue.get()
            carried = None
            group = [first]
            images = len(first.batch)
            deadline = time.monotonic() + self.window
            while images < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    request = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if images + len(request.batch) > self.max_batch:
                    carried = request
                    break
                group.append(request)
                images += len(request.batch)
            self._run(group)

    def _run(self, group: list[_Request]) -> None:
        # Callers asking for different outputs are run apart.
        by_names: dict[tuple[str, ...] | None, list[_Request]] = {}
        for request in group:
            by_names.setdefault(request.names, []).append(request)
        for names, requests in by_names.items():
            try:
                batch = np.concatenate([request.batch for request in requests])
                started = time.perf_counter()
                for request in requests:
                    request.started = started
                outputs = self.session.run(
                    list(names) if names else None, {self.input_name: batch}
                )
                bounds = np.cumsum([len(request.batch) for request in requests])
                for request, start, stop in zip(
                    requests, [0, *bounds[:-1]], bounds, strict=True
                ):
                    request.outputs = [output[start:stop] for output in outputs]
                logger.debug(
                    "ran %d requests as one batch of %d", len(requests), len(batch)
                )
            except Exception as error:  # handed to every caller, who raises it
                for request in requests:
                    request.error = error
            finally:
                for request in requests:
                    request.done.set()


def batchable(shape: tuple[int | str, ...]) -> bool:
    """Whether an input of ``shape`` can be stacked across requests: a
    symbolic batch axis and every other axis fixed."""
    return (
        len(shape) > 1
        and isinstance(shape[0], str)
        and all(isinstance(d, int) for d in shape[1:])
    )
