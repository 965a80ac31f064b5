"""
The server's own response cache: an in-process LRU with TTL, or Redis
shared by every API host (DESIGN.md, "Two sizes, one code path").

Routes tell clients how long an answer stays good with Cache-Control
max-age (api-routes.md section 2.2); the same number bounds how long this
cache may replay it. Two rules shape the code:

* the cache is an optimisation, so a cache that is down or slow is a miss
  after a small timeout, never an error or a long wait;
* the server must never hide its own writes, so every key carries a
  generation number that ingestion bumps after each pass
  (L{IResponseCache.invalidate_measurements}); a response computed before
  the bump is stored under the old generation, which nobody reads any more.
"""

import hashlib
import json
from collections import OrderedDict
from urllib.parse import unquote_to_bytes, urlsplit

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.logger import Logger
from zope.interface import Interface, implementer

log = Logger()

#: Response headers replayed from the cache (CORS and rate-limit headers are
#: set per request by the app, Content-Length is recomputed).
STORED_HEADERS = (b"content-type", b"cache-control", b"content-disposition")


class CachedResponse:
    """
    What a hit replays: status, a few headers, the body bytes.
    """

    __slots__ = ("status", "headers", "body")

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = tuple(headers)
        self.body = body

    def __eq__(self, other):
        return isinstance(other, CachedResponse) and (
            (self.status, self.headers, self.body) == (other.status, other.headers, other.body)
        )

    def __repr__(self):
        return f"CachedResponse({self.status}, {self.headers!r}, {len(self.body)} bytes)"

    def size(self):
        return len(self.body) + sum(len(n) + len(v) for n, v in self.headers) + 64

    def encode(self):
        """
        Bytes for a shared store: one JSON line of metadata, then the body.
        """
        meta = {
            "s": self.status,
            "h": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in self.headers],
        }
        return json.dumps(meta, separators=(",", ":")).encode("ascii") + b"\n" + self.body

    @classmethod
    def decode(cls, data):
        """
        The inverse of L{encode}; None for anything malformed (a miss).
        """
        if not isinstance(data, bytes):
            return None
        head, sep, body = data.partition(b"\n")
        if not sep:
            return None
        try:
            meta = json.loads(head)
            headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in meta["h"]]
            status = int(meta["s"])
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeError):
            return None
        return cls(status, headers, body)


class IResponseCache(Interface):
    """
    A key -> L{CachedResponse} store with per-entry TTL and a generation
    counter. Every method returns a Deferred that never fails and fires
    within the implementation's small timeout.
    """

    def generation():
        """
        The current generation (an int) to put in keys.
        """

    def get(key):
        """
        The L{CachedResponse} stored under C{key}, or None.
        """

    def put(key, response, ttl):
        """
        Store C{response} for C{ttl} seconds (an int > 0).
        """

    def invalidate_measurements():
        """
        Make every entry stored so far unreachable (ingestion calls this after
        each pass, writes through the API after each write).
        """

    def close():
        """
        Release connections.
        """


class CacheStats:
    """
    Counters for tests and metrics.
    """

    def __init__(self):
        self.hits = 0
        self.misses = 0
        self.stores = 0
        self.errors = 0


@implementer(IResponseCache)
class MemoryCache:
    """
    In-process LRU bounded by entry count and total bytes, entries expiring
    by the injected clock (an IReactorTime).
    """

    def __init__(self, clock, max_entries=20000, max_bytes=128 * 1024 * 1024):
        self._clock = clock
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries = OrderedDict()  # key -> (expires, response, size)
        self._bytes = 0
        self._generation = 0
        self.stats = CacheStats()

    def __len__(self):
        return len(self._entries)

    def generation(self):
        return succeed(self._generation)

    def get(self, key):
        entry = self._entries.get(key)
        if entry is None:
            self.stats.misses += 1
            return succeed(None)
        expires, response, _ = entry
        if expires <= self._clock.seconds():
            self._drop(key)
            self.stats.misses += 1
            return succeed(None)
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return succeed(response)

    def put(self, key, response, ttl):
        if ttl <= 0:
            return succeed(None)
        size = response.size() + len(key)
        if size > self._max_bytes:
            return succeed(None)
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self._clock.seconds() + ttl, response, size)
        self._bytes += size
        self.stats.stores += 1
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
        return succeed(None)

    def _drop(self, key):
        _, _, size = self._entries.pop(key)
        self._bytes -= size

    def invalidate_measurements(self):
        self._generation += 1
        # Old generations are never read again: free their memory now.
        self._entries.clear()
        self._bytes = 0
        return succeed(None)

    def close(self):
        self._entries.clear()
        self._bytes = 0
        return succeed(None)


def _race(d, clock, timeout, default=None):
    """
    A Deferred firing with C{d}'s result, or with C{default} after
    C{timeout} seconds, whichever comes first; never fails (failures give
    C{default}). C{d} itself is left to finish on its own.
    """
    out = Deferred()

    def expire():
        if not out.called:
            out.callback(_Timeout)

    call = clock.callLater(timeout, expire)

    def done(result):
        if call.active():
            call.cancel()
        if not out.called:
            out.callback(result)
        return None

    d.addBoth(done)
    return out


class _TimeoutMarker:
    def __repr__(self):
        return "<cache timeout>"


_Timeout = _TimeoutMarker()


def _redis_address(url):
    parts = urlsplit(url)
    db = (parts.path or "/0").strip("/") or "0"
    return parts.hostname, parts.port or 6379, int(db), parts.password


@implementer(IResponseCache)
class RedisCache:
    """
    Entries in Redis (txredisapi), shared by every host using the same
    server: keys under C{prefix}, the generation in the key C{prefix}gen.

    Each operation waits at most C{timeout} seconds. After a failure or a
    timeout the cache is skipped for C{retry_after} seconds, so an outage
    costs one short wait, not one per request. Replies stay bytes
    (charset=None) and are never turned into numbers (convertNumbers=False:
    a cached body such as C{00123} must come back as sent).
    """

    def __init__(
        self,
        url,
        clock,
        timeout=0.1,
        retry_after=2.0,
        generation_refresh=0.5,
        prefix="ooni-api:",
        connection=None,
    ):
        self._clock = clock
        self._timeout = timeout
        self._retry_after = retry_after
        self._refresh = generation_refresh
        self._prefix = prefix.encode("utf-8")
        self._gen_key = self._prefix + b"gen"
        self._down_until = 0.0
        self._generation = 0
        self._generation_read = None  # clock time of the last read
        self._pending_bumps = 0
        self.stats = CacheStats()
        if connection is None:
            import txredisapi

            host, port, db, password = _redis_address(url)
            connection = txredisapi.lazyConnectionPool(
                host=host,
                port=port,
                dbid=db,
                poolsize=4,
                reconnect=True,
                charset=None,
                password=password,
                connectTimeout=1,
                replyTimeout=2,
                convertNumbers=False,
            )
        self._redis = connection

    # -- plumbing ----------------------------------------------------------

    def _available(self):
        return self._clock.seconds() >= self._down_until

    def _failed(self, why):
        self.stats.errors += 1
        if self._available():
            log.warn("response cache: Redis unavailable ({why}); skipping it for a while", why=why)
        self._down_until = self._clock.seconds() + self._retry_after

    async def _call(self, method, *args, **kwargs):
        """
        Run one Redis command with the timeout; (ok, result).
        """
        if not self._available():
            return False, None
        try:
            d = getattr(self._redis, method)(*args, **kwargs)
        except Exception as e:
            self._failed(e)
            return False, None
        failure = []

        def trap(f):
            failure.append(f)
            return None

        d.addErrback(trap)
        result = await _race(d, self._clock, self._timeout)
        if result is _Timeout:
            self._failed("timeout")
            return False, None
        if failure:
            self._failed(failure[0].getErrorMessage())
            return False, None
        if self._pending_bumps:
            self._flush_bumps()
        return True, result

    def _flush_bumps(self):
        pending, self._pending_bumps = self._pending_bumps, 0

        async def bump():
            ok, value = await self._call("incrby", self._gen_key, pending)
            if ok:
                self._set_generation(value)
            else:
                self._pending_bumps += pending

        ensureDeferred(bump())

    def _set_generation(self, value):
        try:
            self._generation = int(value)
        except (TypeError, ValueError):
            return
        self._generation_read = self._clock.seconds()

    # -- IResponseCache ------------------------------------------------------

    def generation(self):
        now = self._clock.seconds()
        if self._generation_read is not None and now - self._generation_read < self._refresh:
            return succeed(self._generation)

        async def read():
            ok, value = await self._call("get", self._gen_key)
            if ok:
                self._set_generation(value if value is not None else 0)
            return self._generation

        return ensureDeferred(read())

    def get(self, key):
        async def run():
            ok, data = await self._call("get", self._prefix + key.encode("utf-8"))
            response = CachedResponse.decode(data) if ok and data is not None else None
            if response is None:
                self.stats.misses += 1
            else:
                self.stats.hits += 1
            return response

        return ensureDeferred(run())

    def put(self, key, response, ttl):
        if ttl <= 0:
            return succeed(None)

        async def run():
            ok, _ = await self._call(
                "set", self._prefix + key.encode("utf-8"), response.encode(), expire=int(ttl)
            )
            if ok:
                self.stats.stores += 1

        return ensureDeferred(run())

    def invalidate_measurements(self):
        # Locally at once, so this host never reads what it just outdated.
        self._generation += 1
        self._generation_read = self._clock.seconds()

        async def run():
            ok, value = await self._call("incr", self._gen_key)
            if ok:
                self._set_generation(value)
            else:
                self._pending_bumps += 1

        return ensureDeferred(run())

    def close(self):
        d = self._redis.disconnect()
        d.addErrback(lambda f: None)
        return d


def open_cache(config, clock):
    """
    Redis when C{redis_url} is set, else the in-process cache.
    """
    if config.redis_url:
        return RedisCache(config.redis_url, clock)
    return MemoryCache(clock)


# -- the route helper ---------------------------------------------------------


def _query_pairs(request):
    uri = request.uri
    query = uri.partition(b"?")[2]
    return [p for p in query.split(b"&") if p]


def cache_key(request, vary_auth=False, keep_order=False):
    """
    Path plus query string: pairs sorted (equivalent queries share an
    entry) unless the response echoes their order (next_url); plus a
    digest of the Authorization header when the answer depends on it.
    """
    path = unquote_to_bytes(request.path)
    pairs = _query_pairs(request)
    if not keep_order:
        pairs = sorted(pairs)
    raw = path + b"?" + b"&".join(pairs)
    key = hashlib.sha256(raw).hexdigest() if len(raw) > 512 else raw.decode("latin-1")
    if vary_auth:
        auth = request.getHeader(b"authorization") or b""
        key += "|" + hashlib.sha256(auth).hexdigest()[:32]
    return key


def cacheable_ttl(request):
    """
    max-age of a 200 response that may be stored, else 0.
    """
    if request.code != 200:
        return 0
    values = request.responseHeaders.getRawHeaders(b"cache-control")
    if not values or len(values) != 1:
        return 0
    ttl = 0
    for directive in values[0].split(b","):
        directive = directive.strip().lower()
        if directive in (b"no-cache", b"no-store", b"private"):
            return 0
        if directive.startswith(b"max-age="):
            try:
                ttl = int(directive[len(b"max-age=") :])
            except ValueError:
                return 0
    if request.responseHeaders.hasHeader(b"set-cookie"):
        return 0
    return max(ttl, 0)


def _replay(request, response):
    request.setResponseCode(response.status)
    for name, value in response.headers:
        request.setHeader(name, value)
    request.setHeader(b"Content-Length", str(len(response.body)).encode("ascii"))
    return response.body


def _captured(request, body):
    headers = []
    for name in STORED_HEADERS:
        values = request.responseHeaders.getRawHeaders(name)
        if values:
            headers.append((name, values[0]))
    return CachedResponse(request.code, headers, body)


async def serve_cached(cache, request, produce, vary_auth=False, keep_order=False):
    """
    Answer from C{cache} when it holds this request's response; otherwise
    run C{produce()} (bytes, a Deferred or a coroutine) and store what it
    wrote if it is a 200 with max-age > 0.
    """
    if cache is None or request.method not in (b"GET", b"HEAD"):
        return await _result(produce())
    base = cache_key(request, vary_auth, keep_order)
    generation = await cache.generation()
    key = f"g{generation}:{base}"
    hit = await cache.get(key)
    if hit is not None:
        return _replay(request, hit)
    body = await _result(produce())
    if isinstance(body, bytes):
        ttl = cacheable_ttl(request)
        if ttl > 0:
            d = cache.put(key, _captured(request, body), ttl)
            d.addErrback(lambda f: log.failure("response cache store failed", f))
    return body


async def _result(value):
    if isinstance(value, Deferred) or hasattr(value, "__await__"):
        return await value
    return value


def cached(vary_auth=False, keep_order=False):
    """
    Decorate a route method so its responses go through C{self.cache}.
    """
    import functools

    def decorate(handler):
        @functools.wraps(handler)
        def wrapper(self, request, *args, **kwargs):
            return ensureDeferred(
                serve_cached(
                    self.cache,
                    request,
                    lambda: handler(self, request, *args, **kwargs),
                    vary_auth=vary_auth,
                    keep_order=keep_order,
                )
            )

        return wrapper

    return decorate
