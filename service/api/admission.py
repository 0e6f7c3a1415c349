"""Admission control: how many inference requests one worker runs at once.

Each worker lets ``VISION_MAX_CONCURRENCY`` requests into the inference
routes at a time. A request that finds every slot taken waits up to
``VISION_QUEUE_TIMEOUT`` seconds for one and is then turned away with 503
``overloaded`` and ``Retry-After``, so a burst beyond what the worker can
serve is answered at once instead of piling up behind the models. The
probes and ``/v1/models`` do no inference and are never limited, so an
orchestrator still sees a busy worker as alive and ready.
"""

from __future__ import annotations

import threading
from collections.abc import Collection

from flask import Flask, g, request

from service.errors import Overloaded

RETRY_AFTER_SECONDS = "1"
# Where the request keeps the fact that it holds a slot, for the teardown.
_HOLDS_SLOT = "vision_holds_inference_slot"


class ConcurrencyLimit:
    """A counted set of slots, taken with a bounded wait and given back once."""

    def __init__(self, slots: int, queue_timeout: float) -> None:
        self.slots = slots
        self.queue_timeout = queue_timeout
        self._semaphore = threading.BoundedSemaphore(slots)

    def acquire(self) -> None:
        """Take a slot, or raise ``Overloaded`` when none frees up in time."""
        if self._semaphore.acquire(timeout=self.queue_timeout):
            return
        slots = (
            "The inference slot"
            if self.slots == 1
            else f"All {self.slots} inference slots"
        )
        raise Overloaded(
            f"{slots} of this worker stayed busy for {self.queue_timeout:g} s; "
            "retry later.",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )

    def release(self) -> None:
        self._semaphore.release()


def limit_concurrency(
    app: Flask, limit: ConcurrencyLimit, blueprints: Collection[str]
) -> None:
    """Make requests to the routes of ``blueprints`` hold a slot of ``limit``.

    The slot is taken before the route reads the body and given back in
    the request's teardown, which runs whether the route succeeded, failed
    or was never reached.
    """

    @app.before_request
    def take_slot() -> None:
        if request.blueprint in blueprints:
            limit.acquire()
            setattr(g, _HOLDS_SLOT, True)

    @app.teardown_request
    def give_slot_back(error: BaseException | None) -> None:
        if g.pop(_HOLDS_SLOT, False):
            limit.release()
