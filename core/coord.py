"""What replicas share: platform rate budgets, pauses after a 429, and event dedupe.

One process keeps all of it in memory (:class:`LocalCoordinator`, today's behaviour).
Several processes or machines serving the same workspaces and bots share it through
Redis or Valkey (:class:`RedisCoordinator`, ``PARLEY_REDIS_URL``): two Slack replicas
then split a workspace's budget instead of each spending all of it, a Slack retry
that reaches another replica is not handled twice, and Discord shard processes draw
on one global bucket. :func:`coordinator` picks one from the settings.

The operations (each one round trip, atomic on Redis: a Lua script run by EVALSHA):

- :meth:`Coordinator.take`: one call from "at most ``limit`` per sliding ``window``"
  (a sorted set of grant times), optionally leaving ``reserve`` slots free;
- :meth:`Coordinator.take_rate`: one call from a token bucket (``rate`` per second,
  ``burst``), as a GCRA (one number: the theoretical arrival time);
- :meth:`Coordinator.pause`: after a 429 with Retry-After, nothing is granted on that
  key to anyone for that long (both kinds of take check it first);
- :meth:`Coordinator.first`: true exactly once for ``(kind, id)`` within ``ttl``;
- :meth:`Coordinator.ping`: readiness (``/readyz``);
- :meth:`Coordinator.publish` and :meth:`Coordinator.subscribe`: a message to every
  replica listening on a topic (Redis pub/sub: at most once, so what must not be lost is
  also written to the store; see :mod:`core.stops`).

A refused take says how long until it could be granted (:class:`Taken`). Time is the
Redis server's (``TIME`` inside the scripts), never a client's clock, so replicas on
machines whose clocks disagree still count the same windows. Keys are prefixed
``parley:``; a budget's keys share a hash tag (``{…}``) so that a script's keys live
on one Redis Cluster slot.

Redis briefly unreachable (decided here, relied on by the callers):

- budgets fail closed: a take raises :class:`Unavailable`; the budget (core.budget)
  keeps its waiters waiting and tries again with a growing delay (at most
  :data:`RETRY_MAX` seconds). A stream falls behind, loses nothing, and resumes with
  its latest text when Redis answers; nothing is sent past a limit another replica
  may be spending too;
- dedupe fails open: the process's own memory still catches a retry that reaches the
  same process (:class:`Dedupe`), and an event that reaches another replica during
  the outage may be handled twice rather than be dropped;
- a pause that cannot be shared stays local to the replica that saw the 429;
- :meth:`RedisCoordinator.ping` raises, so ``/readyz`` says 503 and a load balancer
  takes the replica out of rotation until Redis is back.

One warning is logged when Redis stops answering (then again at most once a minute
while it stays down) and one line when it answers again; none carries the URL (it may
hold a password).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

from core.errors import redact, register_secret

if TYPE_CHECKING:
    from core.config import Settings

log = logging.getLogger("parley.coord")

#: Key prefix of everything Parley keeps in Redis.
PREFIX = "parley:"
#: Seconds a Redis command may take before the coordinator treats Redis as unreachable.
REDIS_TIMEOUT = 2.0
#: Longest wait between a budget's attempts while Redis is unreachable.
RETRY_MAX = 5.0
#: Seconds between repeated "still unreachable" warnings.
WARN_EVERY = 60.0

T = TypeVar("T")


class Unavailable(Exception):
    """The shared coordinator did not answer (the message names the operation and the error class only)."""


class Taken(NamedTuple):
    """The answer to a take: ``granted``, or ``wait`` seconds until it could be (``paused``:
    because of a pause after a 429). ``at`` is when it was decided, in the coordinator's
    clock (Redis server time; ``time.monotonic`` in process): grants of one key are
    counted against each other in that clock."""

    granted: bool
    wait: float = 0.0
    paused: bool = False
    at: float = 0.0


class Claims(NamedTuple):
    """One replica's messages still waiting for a final call from a shared window."""

    replica: str
    waiting: int
    #: At most this many slots are held back for every replica's claims together.
    cap: int
    #: Whether this take is a progress update (the claims are held back from it) or a final.
    progress: bool


class Coordinator(Protocol):
    #: Whether other processes see the same state (Redis), or only this one (in process).
    shared: bool

    async def take(self, key: str, limit: int, window: float, *, reserve: int = 0,
                   pace: tuple[float, float] | None = None, claims: Claims | None = None) -> Taken:
        """One call from "at most ``limit`` per sliding ``window`` seconds" on ``key``, granted
        only if ``reserve`` more slots would still be free after it.

        ``pace`` (rate per second, burst): the call also needs a credit from a token bucket
        on the key, spent only when the call is granted, so that every replica's progress
        updates together keep the window's sustained rate. ``claims``: this replica's
        messages still waiting for a final call from the window; the slots held back are then
        every replica's claims together (capped), instead of ``reserve``."""
        ...

    async def take_rate(self, key: str, rate: float, burst: float) -> Taken:
        """One call from a token bucket on ``key``: ``rate`` per second, ``burst`` at once."""
        ...

    async def pause(self, key: str, seconds: float) -> None:
        """Nothing is granted on ``key`` for ``seconds`` (a pause is extended, never shortened)."""
        ...

    async def first(self, kind: str, id: str, ttl: float) -> bool:
        """True for the first caller that names ``(kind, id)`` within ``ttl`` seconds, false after."""
        ...

    async def ping(self) -> bool:
        """The coordinator answers (raises when it does not)."""
        ...

    async def publish(self, topic: str, message: str) -> None:
        """Send ``message`` to every subscriber of ``topic`` now (raises Unavailable when it cannot)."""
        ...

    def subscribe(self, topic: str) -> AsyncIterator[str]:
        """The messages published on ``topic`` from now on, until the iterator is closed. On
        Redis it reconnects by itself; what was published while it was away is not replayed."""
        ...

    async def aclose(self) -> None: ...


# --- in process ----------------------------------------------------------------------------------------


class LocalCoordinator:
    """Everything in this process's memory: what one process does without Redis.

    The same operations and answers as :class:`RedisCoordinator`, on ``clock``
    (monotonic seconds). Budgets do not consult it (``shared`` is false): a single
    process keeps its budgets as before, with no extra step per call.
    """

    shared = False

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._logs: dict[str, collections.deque[float]] = {}
        self._tat: dict[str, float] = {}
        self._paused: dict[str, float] = {}
        self._seen: dict[tuple[str, str], float] = {}
        self._expiries: list[tuple[float, tuple[str, str]]] = []
        self._topics: dict[str, set[asyncio.Queue[str]]] = {}
        self._claims: dict[str, dict[str, tuple[int, float]]] = {}

    def _pause_left(self, key: str, now: float) -> float:
        until = self._paused.get(key)
        if until is None:
            return 0.0
        if until <= now:
            del self._paused[key]
            return 0.0
        return until - now

    async def take(self, key: str, limit: int, window: float, *, reserve: int = 0,
                   pace: tuple[float, float] | None = None, claims: Claims | None = None) -> Taken:
        now = self.clock()
        left = self._pause_left(key, now)
        if left:
            return Taken(False, left, True, now)
        if claims is not None:
            held = self._claims.setdefault(key, {})
            held[claims.replica] = (claims.waiting, now + window)
            for replica, (_, until) in list(held.items()):
                if until < now:
                    del held[replica]
            total = sum(n for n, _ in held.values())
            reserve = min(total, claims.cap) if claims.progress else 0
        tat = 0.0
        if pace is not None:
            interval = 1.0 / pace[0]
            tat = max(self._tat.get(f"pace:{key}", now), now)
            allowed = tat - interval * (max(1.0, pace[1]) - 1)
            if allowed > now:
                return Taken(False, allowed - now, False, now)
        stamps = self._logs.setdefault(key, collections.deque())
        while stamps and stamps[0] <= now - window:
            stamps.popleft()
        short = len(stamps) + 1 + reserve - limit
        if short <= 0:
            stamps.append(now)
            if pace is not None:
                self._tat[f"pace:{key}"] = tat + 1.0 / pace[0]
            return Taken(True, 0.0, False, now)
        if not stamps:
            del self._logs[key]
        if short > len(stamps):  # more held back than the window holds: look again a slot later
            return Taken(False, window / limit, False, now)
        return Taken(False, stamps[short - 1] + window - now, False, now)

    async def take_rate(self, key: str, rate: float, burst: float) -> Taken:
        now = self.clock()
        left = self._pause_left(key, now)
        if left:
            return Taken(False, left, True, now)
        if math.isinf(rate):
            return Taken(True, 0.0, False, now)
        interval = 1.0 / rate
        tat = max(self._tat.get(key, now), now)
        allowed = tat - interval * (max(1.0, burst) - 1)
        if allowed > now:
            return Taken(False, allowed - now, False, now)
        self._tat[key] = tat + interval
        return Taken(True, 0.0, False, now)

    async def pause(self, key: str, seconds: float) -> None:
        if seconds > 0:
            self._paused[key] = max(self._paused.get(key, 0.0), self.clock() + seconds)

    async def first(self, kind: str, id: str, ttl: float) -> bool:
        now = self.clock()
        while self._expiries and self._expiries[0][0] <= now:
            at, name = heapq.heappop(self._expiries)
            if self._seen.get(name) == at:
                del self._seen[name]
        name = (kind, id)
        if name in self._seen:
            return False
        self._seen[name] = now + ttl
        heapq.heappush(self._expiries, (now + ttl, name))
        return True

    async def ping(self) -> bool:
        return True

    async def publish(self, topic: str, message: str) -> None:
        for queue in self._topics.get(topic, ()):
            queue.put_nowait(message)

    async def subscribe(self, topic: str) -> AsyncIterator[str]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._topics.setdefault(topic, set()).add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._topics[topic].discard(queue)

    async def aclose(self) -> None:
        pass


# --- Redis ---------------------------------------------------------------------------------------------

# Times inside the scripts are integer microseconds of the server's clock (TIME); numbers
# handed to redis.call are formatted with %d, since Lua's default conversion of a number
# to a string can drop digits of a 16-digit value.

_WINDOW = """
-- KEYS[1] grant log (sorted set, scores: grant times), KEYS[2] pause flag,
-- KEYS[3] pace bucket (theoretical arrival time, us), KEYS[4] claims (hash: replica -> "count:until")
-- ARGV[1] limit, ARGV[2] window (us), ARGV[3] slots to leave free, ARGV[4] a unique member,
-- ARGV[5] pace interval (us, 0: none), ARGV[6] pace burst,
-- ARGV[7] replica ('': no claims), ARGV[8] its claims, ARGV[9] cap on the slots held back, ARGV[10] progress (1/0)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then return {0, paused * 1000, 1, now} end
local limit, window, reserve = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl = string.format('%d', math.ceil(window / 1000) + 1000)
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[4], ARGV[7], ARGV[8] .. ':' .. string.format('%d', now + window))
  redis.call('PEXPIRE', KEYS[4], ttl)
  local total = 0
  local all = redis.call('HGETALL', KEYS[4])
  for i = 1, #all, 2 do
    local n, untl = string.match(all[i + 1], '^(%d+):(%d+)$')
    if n == nil or tonumber(untl) < now then redis.call('HDEL', KEYS[4], all[i]) else total = total + tonumber(n) end
  end
  if ARGV[10] == '1' then reserve = math.min(total, tonumber(ARGV[9])) else reserve = 0 end
end
local interval = tonumber(ARGV[5])
local tat = now
if interval > 0 then
  local stored = redis.call('GET', KEYS[3])
  if stored and tonumber(stored) > now then tat = tonumber(stored) end
  local allowed = tat - interval * (tonumber(ARGV[6]) - 1)
  if allowed > now then return {0, allowed - now, 0, now} end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - window))
local used = redis.call('ZCARD', KEYS[1])
local short = used + 1 + reserve - limit
if short <= 0 then
  redis.call('ZADD', KEYS[1], string.format('%d', now), ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ttl)
  if interval > 0 then
    tat = tat + interval
    redis.call('SET', KEYS[3], string.format('%d', tat), 'PX', string.format('%d', math.ceil((tat - now) / 1000) + 1000))
  end
  return {1, 0, 0, now}
end
if short > used then return {0, math.ceil(window / limit), 0, now} end
local oldest = redis.call('ZRANGE', KEYS[1], short - 1, short - 1, 'WITHSCORES')
return {0, tonumber(oldest[2]) + window - now, 0, now}
"""

_RATE = """
-- KEYS[1] theoretical arrival time (us), KEYS[2] pause flag
-- ARGV[1] emission interval (us), ARGV[2] burst
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then return {0, paused * 1000, 1, now} end
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local stored = redis.call('GET', KEYS[1])
local tat = stored and tonumber(stored) or now
if tat < now then tat = now end
local allowed = tat - interval * (burst - 1)
if allowed > now then return {0, allowed - now, 0, now} end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', string.format('%d', math.ceil((tat - now) / 1000) + 1000))
return {1, 0, 0, now}
"""

_PAUSE = """
-- KEYS[1] pause flag; ARGV[1] milliseconds. Extended, never shortened.
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
"""


def _taken(reply: list[Any]) -> Taken:
    granted, wait_us, paused, now_us = (int(x) for x in reply)
    return Taken(bool(granted), max(0.0, wait_us / 1e6), bool(paused), now_us / 1e6)


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


class RedisCoordinator:
    """The coordinator replicas share, in Redis or Valkey (redis-py's asyncio client).

    The client connects on first use; commands time out after ``timeout`` seconds and are
    retried twice quickly by the client, then :class:`Unavailable` is raised (see the
    module's note on what each caller does then).
    """

    shared = True

    def __init__(self, url: str, *, timeout: float = REDIS_TIMEOUT, client: Any = None) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialWithJitterBackoff

        password = _password(url)
        register_secret(password)
        register_secret(unquote(password or ""))  # as the client sends it
        self.timeout = timeout
        self.client = client or Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.2), 2),
            health_check_interval=30,
        )
        self._window = self.client.register_script(_WINDOW)
        self._rate = self.client.register_script(_RATE)
        self._pause = self.client.register_script(_PAUSE)
        self._member = f"{secrets.token_hex(6)}:"  # grant-log members: unique across replicas
        self._seq = itertools.count()
        self.down_since: float | None = None
        self._warned = 0.0

    # -- outages --------------------------------------------------------------------------------------
    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        from redis.exceptions import RedisError

        try:
            result = await fn()
        except (RedisError, OSError, TimeoutError) as e:
            self._failed(what, e)
            raise Unavailable(f"Redis {what}: {type(e).__name__}") from None
        if self.down_since is not None:
            log.info("Redis answers again after %.1fs; shared budgets and dedupe resume",
                     time.monotonic() - self.down_since)
            self.down_since = None
        return result

    def _failed(self, what: str, e: BaseException) -> None:
        now = time.monotonic()
        detail = redact(str(e))[:200]
        if self.down_since is None:
            self.down_since = self._warned = now
            log.warning(
                "Redis is unreachable (%s during %s: %s): shared rate budgets wait and retry, "
                "event dedupe falls back to this process", type(e).__name__, what, detail,
            )
        elif now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning("Redis still unreachable after %.0fs (%s during %s)", now - self.down_since,
                        type(e).__name__, what)

    # -- operations ----------------------------------------------------------------------------------
    @staticmethod
    def _keys(kind: str, key: str) -> list[str]:
        return [f"{PREFIX}{kind}:{{{key}}}", f"{PREFIX}pause:{{{key}}}"]

    async def take(self, key: str, limit: int, window: float, *, reserve: int = 0,
                   pace: tuple[float, float] | None = None, claims: Claims | None = None) -> Taken:
        member = f"{self._member}{next(self._seq)}"
        keys = [*self._keys("window", key), f"{PREFIX}pace:{{{key}}}", f"{PREFIX}claims:{{{key}}}"]
        args: list[int | str] = [int(limit), max(1, round(window * 1e6)), max(0, int(reserve)), member,
                                 max(1, round(1e6 / pace[0])) if pace else 0, max(1, int(pace[1])) if pace else 1,
                                 claims.replica if claims else "", max(0, claims.waiting) if claims else 0,
                                 max(0, claims.cap) if claims else 0, int(claims.progress) if claims else 0]
        reply = await self._call("a budget take", lambda: self._window(keys, args))
        return _taken(reply)

    async def take_rate(self, key: str, rate: float, burst: float) -> Taken:
        if math.isinf(rate):
            return Taken(True, 0.0, False, 0.0)
        args = [max(1, round(1e6 / rate)), max(1, int(burst))]
        reply = await self._call("a budget take", lambda: self._rate(self._keys("rate", key), args))
        return _taken(reply)

    async def pause(self, key: str, seconds: float) -> None:
        ms = math.ceil(seconds * 1000)
        if ms > 0:
            await self._call("a pause", lambda: self._pause(self._keys("window", key)[1:], [ms]))

    async def first(self, kind: str, id: str, ttl: float) -> bool:
        name = f"{PREFIX}seen:{kind}:{id}"
        ms = max(1, math.ceil(ttl * 1000))
        return bool(await self._call("a dedupe check", lambda: self.client.set(name, b"1", nx=True, px=ms)))

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def publish(self, topic: str, message: str) -> None:
        await self._call("a publish", lambda: self.client.publish(f"{PREFIX}{topic}", message))

    async def subscribe(self, topic: str) -> AsyncIterator[str]:
        from redis.exceptions import RedisError

        attempt = 0
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(f"{PREFIX}{topic}")
                if self.down_since is not None:
                    log.info("Redis answers again; the %s subscription resumes", topic)
                    self.down_since = None
                attempt = 0
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        data = msg["data"]
                        yield data.decode() if isinstance(data, bytes) else str(data)
            except (RedisError, OSError, TimeoutError) as e:
                self._failed(f"the {topic} subscription", e)
                await asyncio.sleep(retry_delay(attempt))
                attempt += 1
            finally:
                with contextlib.suppress(RedisError, OSError, RuntimeError):
                    await pubsub.aclose()

    async def aclose(self) -> None:
        from redis.exceptions import RedisError

        with contextlib.suppress(RedisError, OSError, RuntimeError):  # shutting down: nothing to save
            await self.client.aclose()


def coordinator(settings: Settings) -> Coordinator:
    """Redis when ``PARLEY_REDIS_URL`` is set, else this process's memory."""
    url = settings.redis_url.get_secret_value().strip() if settings.redis_url else ""
    return RedisCoordinator(url) if url else LocalCoordinator()


# --- dedupe --------------------------------------------------------------------------------------------


class Dedupe:
    """Handle each delivery id once: across replicas when the coordinator is shared.

    This process's own memory (the last ``size`` ids) answers first, so a repeat that
    reaches the same process costs no round trip and is still caught while Redis is
    unreachable; otherwise the shared coordinator decides (``ttl`` seconds). An id is
    marked before anything awaits, so two deliveries racing in one process count once.
    """

    def __init__(self, coord: Coordinator | None, kind: str, *, ttl: float, size: int = 10_000) -> None:
        self.coord = coord
        self.kind = kind
        self.ttl = ttl
        self.size = size
        self.seen: collections.OrderedDict[str, None] = collections.OrderedDict()

    async def first(self, id: str | int | None) -> bool:
        if id is None or id == "":
            return True
        key = str(id)
        if key in self.seen:
            return False
        self.seen[key] = None
        if len(self.seen) > self.size:
            self.seen.popitem(last=False)
        if self.coord is None or not self.coord.shared:
            return True
        try:
            return await self.coord.first(self.kind, key, self.ttl)
        except Unavailable:
            return True  # fail open: handled here rather than dropped (logged by the coordinator)


def retry_delay(attempt: int) -> float:
    """How long a budget waits before asking an unreachable coordinator again."""
    return min(RETRY_MAX, 0.25 * 2 ** min(attempt, 8))
