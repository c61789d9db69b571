"""Which offsets may be committed: the highest contiguous finished offset of each partition."""

from __future__ import annotations

import threading
from collections import deque


class PartitionOffsets:
    """Offsets received from one partition, in order, and which of them have finished."""

    def __init__(self) -> None:
        self._received: deque[int] = deque()
        self._finished: set[int] = set()
        self.position: int | None = None
        """The next offset to commit (highest contiguous finished + 1); None before any."""
        self.committed: int | None = None

    def received(self, offset: int) -> None:
        self._received.append(offset)

    def finished(self, offset: int) -> None:
        self._finished.add(offset)
        while self._received and self._received[0] in self._finished:
            done = self._received.popleft()
            self._finished.discard(done)
            self.position = done + 1

    @property
    def pending(self) -> int:
        return len(self._received)


class OffsetTracker:
    """Every assigned partition of one consumer; thread-safe (workers finish, the loop commits)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[tuple[str, int], PartitionOffsets] = {}

    def assign(self, topic: str, partition: int) -> None:
        with self._lock:
            self._parts.setdefault((topic, partition), PartitionOffsets())

    def revoke(self, topic: str, partition: int) -> None:
        with self._lock:
            self._parts.pop((topic, partition), None)

    def received(self, topic: str, partition: int, offset: int) -> None:
        with self._lock:
            self._parts.setdefault((topic, partition), PartitionOffsets()).received(offset)

    def finished(self, topic: str, partition: int, offset: int) -> None:
        """Mark an offset finished; ignored when the partition was revoked meanwhile."""
        with self._lock:
            part = self._parts.get((topic, partition))
            if part is not None:
                part.finished(offset)

    def to_commit(self, only: set[tuple[str, int]] | None = None) -> dict[tuple[str, int], int]:
        """Positions that moved since the last commit (optionally only for ``only``)."""
        with self._lock:
            return {
                tp: p.position
                for tp, p in self._parts.items()
                if p.position is not None
                and p.position != p.committed
                and (only is None or tp in only)
            }

    def committed(self, positions: dict[tuple[str, int], int]) -> None:
        with self._lock:
            for tp, pos in positions.items():
                if tp in self._parts:
                    self._parts[tp].committed = pos

    def pending(self, topic: str, partition: int) -> int:
        with self._lock:
            part = self._parts.get((topic, partition))
            return part.pending if part else 0
