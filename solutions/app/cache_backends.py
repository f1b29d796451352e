"""Where cached responses are kept: the interface every backend offers, and the memory one.

The middleware in ``cache.py`` decides *what* to cache and for how long; a backend only keeps
entries. Two backends implement ``CacheBackend``: ``MemoryCache`` below (one process) and
``RedisCache`` in ``cache_redis.py`` (shared by every instance of the API). Both keep each
entry in the same serialised form (``encode_entry``), so compression and the sizes reported
by ``GET /admin/cache/stats`` mean the same thing whichever backend runs.
"""

from __future__ import annotations

import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

BackendName = Literal["memory", "redis"]

# First byte of a serialised entry: is the body after the head compressed?
_RAW, _ZLIB = b"r", b"z"


@dataclass(frozen=True)
class CachedResponse:
    """One stored HTTP response, body uncompressed: what the middleware sends on a hit."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    stored_at: float  # on the backend's clock (see CacheBackend.clock)
    ttl: float

    def age(self, now: float) -> float:
        # Never negative: with Redis, another machine's clock may run a little ahead.
        return max(0.0, now - self.stored_at)

    def is_fresh(self, now: float) -> bool:
        return self.age(now) < self.ttl


@dataclass(frozen=True)
class CacheUsage:
    """What a backend holds right now, sizes as stored (after compression)."""

    entries: int
    bytes: int
    compressed_entries: int


class CacheBackend(Protocol):
    """What the middleware, the health check and the statistics need from a backend.

    Every method is async because a networked backend does I/O; the memory one simply never
    waits. No method raises because the backend is unreachable: a cache that is down behaves
    as an empty cache that forgets what it is given (``get`` misses, ``set`` does nothing),
    so the app keeps answering from the store.
    """

    name: BackendName
    # Ages and expiry are measured on this clock; CachedResponse.stored_at comes from it.
    clock: Callable[[], float]

    async def get(self, key: str) -> CachedResponse | None:
        """The fresh entry under ``key``, or ``None``."""
        ...

    async def set(self, key: str, entry: CachedResponse, tags: Iterable[str]) -> None:
        """Keep ``entry`` under ``key`` for ``entry.ttl`` seconds, labelled with ``tags``."""
        ...

    async def invalidate(self, *tags: str) -> int:
        """Drop every entry carrying one of ``tags``; return how many were dropped."""
        ...

    async def usage(self) -> CacheUsage | None:
        """Entries and sizes held now; ``None`` if the backend cannot be reached."""
        ...

    async def ping(self) -> bool:
        """Whether the backend answers right now (for ``GET /health``)."""
        ...

    async def aclose(self) -> None:
        """Release connections; called once, when the app shuts down."""
        ...


def encode_entry(entry: CachedResponse, *, compression_min_bytes: int) -> bytes:
    """Serialise ``entry`` the way HTTP/1.1 sends a response, behind one flag byte.

    The flag byte says whether the body is compressed. A first line holds the status,
    ``stored_at`` and ``ttl``; each header follows on its own ``name: value`` line; an empty
    line ends the head, and the body bytes follow as they are. So an entry reads like the
    response it is (in ``redis-cli``, say), and costs a few string operations each way:
    it is written on every miss and read on every hit.

    Not pickle: unpickling runs code chosen by whoever can write to the cache, and a Redis
    server is easier to reach than the app's own memory. HTTP forbids CR and LF inside a
    header (the server refuses to send one), so the line breaks are unambiguous.

    A body of at least ``compression_min_bytes`` is zlib-compressed, unless that does not
    make it smaller. Below the threshold compression costs CPU for little gain: a small
    JSON body has few repetitions for zlib to exploit.
    """
    body, flag = entry.body, _RAW
    if len(body) >= compression_min_bytes:
        packed = zlib.compress(body)
        if len(packed) < len(body):
            body, flag = packed, _ZLIB
    # %r of a float is its shortest exact form: float() reads back the same value.
    first_line = b"%d %r %r\r\n" % (entry.status, entry.stored_at, entry.ttl)
    headers = b"".join(b"%s: %s\r\n" % header for header in entry.headers)
    return flag + first_line + headers + b"\r\n" + body


def decode_entry(blob: bytes) -> CachedResponse:
    """The inverse of ``encode_entry``; raises ``ValueError`` on anything else."""
    flag, (head, blank_line, body) = blob[:1], blob[1:].partition(b"\r\n\r\n")
    if flag not in (_RAW, _ZLIB) or not blank_line:
        raise ValueError("not a cache entry written by encode_entry")
    first_line, *header_lines = head.split(b"\r\n")
    status, stored_at, ttl = first_line.split(b" ")  # ValueError unless three fields
    headers = []
    for line in header_lines:
        name, colon, value = line.partition(b": ")
        if not colon:
            raise ValueError(f"not a header line: {line[:40]!r}")
        headers.append((name, value))
    try:
        body = zlib.decompress(body) if flag == _ZLIB else body
    except zlib.error as exc:
        raise ValueError(f"corrupt compressed body: {exc}") from exc
    return CachedResponse(int(status), headers, body, float(stored_at), float(ttl))


def is_compressed(blob: bytes) -> bool:
    """Whether a serialised entry holds a compressed body (its first byte says so)."""
    return blob[:1] == _ZLIB


class _Slot(NamedTuple):  # immutable, and cheaper to make than a frozen dataclass
    blob: bytes  # encode_entry's output: what Redis would hold, so sizes compare
    tags: frozenset[str]


class MemoryCache:
    """A bounded, TTL-aware map of cached responses with tag-based invalidation.

    The app runs on one event loop and no method awaits, so no lock is needed: each method
    runs to its end before another request's code can touch the map.
    """

    name: BackendName = "memory"

    def __init__(
        self,
        *,
        max_entries: int,
        compression_min_bytes: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.compression_min_bytes = compression_min_bytes
        # Monotonic: the wall clock can jump, and only this process compares the readings.
        self.clock = clock
        self._slots: OrderedDict[str, _Slot] = OrderedDict()

    async def get(self, key: str) -> CachedResponse | None:
        slot = self._slots.get(key)
        if slot is None:
            return None
        entry = decode_entry(slot.blob)
        if not entry.is_fresh(self.clock()):
            del self._slots[key]
            return None
        self._slots.move_to_end(key)  # least recently used leaves first
        return entry

    async def set(self, key: str, entry: CachedResponse, tags: Iterable[str]) -> None:
        blob = encode_entry(entry, compression_min_bytes=self.compression_min_bytes)
        self._slots[key] = _Slot(blob, frozenset(tags))
        self._slots.move_to_end(key)
        while len(self._slots) > self.max_entries:
            self._slots.popitem(last=False)

    async def invalidate(self, *tags: str) -> int:
        wanted = set(tags)
        stale = [key for key, slot in self._slots.items() if slot.tags & wanted]
        for key in stale:
            del self._slots[key]
        return len(stale)

    async def usage(self) -> CacheUsage:
        # Expired entries that nobody asked for since are still held, so they count.
        slots = self._slots.values()
        return CacheUsage(
            entries=len(slots),
            bytes=sum(len(slot.blob) for slot in slots),
            compressed_entries=sum(is_compressed(slot.blob) for slot in slots),
        )

    async def ping(self) -> bool:
        return True  # it lives in this process: if we can answer, so can it

    async def aclose(self) -> None:
        self._slots.clear()

    def __len__(self) -> int:
        return len(self._slots)
