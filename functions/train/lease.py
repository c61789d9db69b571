"""A run's lease: held by one attempt, renewed while it trains, taken over once it lapses.

An attempt that claims a run sets ``lease_expires`` ``train_lease_s`` ahead and a background
thread renews it every third of that while the attempt works. A process that dies (SIGKILL, OOM)
stops renewing: the lease lapses within ``train_lease_s`` and the next delivery of the control
message takes the run over (attempt + 1) instead of answering "in progress" for ever.

Every write of the attempt to its run goes through :meth:`Lease.update` (one lock, the latest
ETag, ``If-Match``), so the heartbeat and the training never race each other. A write that finds
another ETag means another attempt took the run over: the lease is ``lost``, and every later
write (and :meth:`Lease.check`, called between epochs) raises :class:`RunTakenOver` (409,
retried) so the old attempt stops without touching the run again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kafkaml.errors import Conflict, KmlError
from storage.objects import PreconditionFailed
from storage.registry import Registry

log = logging.getLogger("kml.train")


class RunTakenOver(Conflict):
    """Another attempt holds the run now (this one's lease lapsed): retry later, change nothing."""

    kind = "run_taken_over"


class Lease:
    """This attempt's hold on ``run_id`` at ``etag``; :meth:`start` the heartbeat, then
    :meth:`stop` it (or use it as a context manager)."""

    def __init__(self, registry: Registry, run_id: str, etag: str, lease_s: float) -> None:
        self.registry, self.run_id, self.etag, self.lease_s = registry, run_id, etag, lease_s
        self.lost = False
        self.renewals = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{run_id}", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def check(self) -> None:
        """Raise ``RunTakenOver`` once another attempt holds the run."""
        if self.lost:
            raise self._taken_over()

    def update(self, **changes: Any) -> dict[str, Any]:
        """Change the run if this attempt still holds it; the lease is renewed with it."""
        with self._lock:
            self.check()
            changes.setdefault("lease_expires", time.time() + self.lease_s)
            try:
                record, self.etag = self.registry.update_run(self.run_id, self.etag, **changes)
            except PreconditionFailed:
                self.lost = True
                raise self._taken_over() from None
            return record

    def _beat(self) -> None:
        while not self._stopped.wait(self.lease_s / 3):
            try:
                self.update()
                self.renewals += 1
            except RunTakenOver:
                log.warning("run taken over by another attempt", extra={"fields": self._fields()})
                return
            except Conflict:  # the run became terminal: nothing left to hold
                return
            except KmlError as e:  # storage down: keep trying; the lease may lapse meanwhile
                log.warning(
                    "lease not renewed", extra={"fields": {**self._fields(), "reason": e.message}}
                )

    def _fields(self) -> dict[str, Any]:
        return {"run": self.run_id, "renewals": self.renewals}

    def _taken_over(self) -> RunTakenOver:
        return RunTakenOver(
            f"run {self.run_id} was taken over by another attempt (this one's lease lapsed); "
            "retry later",
            run_id=self.run_id,
        )
