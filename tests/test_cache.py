"""
The response cache: the in-process LRU with TTL, Redis through txredisapi
(a real redis-server started on a free loopback port), the route helper,
and the server honouring max-age without hiding its own writes.
"""

import os
import signal
import socket
import subprocess
import time

from twisted.internet import reactor, task
from twisted.trial import unittest
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from ooni_twisted.storage.cache import (
    CachedResponse,
    MemoryCache,
    RedisCache,
    cache_key,
    cacheable_ttl,
    cached,
    serve_cached,
)

from .support import deferred_test, start_server
from .test_measurement_fixtures import fastpath_rows, quiet_config, seed_fastpath

ONE = CachedResponse(200, [(b"content-type", b"application/json")], b'{"a":1}\n')


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class RedisProcess:
    """
    A redis-server of this test on a free loopback port, without persistence.
    """

    def __init__(self, testcase):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        testcase.addCleanup(self.stop)

    async def ready(self):
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                await task.deferLater(reactor, 0.02, lambda: None)
        raise RuntimeError("redis-server did not start")

    def pause(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self):
        if self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            self.proc.wait(5)


def request_for(uri, headers=None):
    """
    A real twisted.web Request for C{uri} on a dummy channel.
    """
    request = Request(DummyChannel(), False)
    request.method = b"GET"
    request.uri = uri
    request.path = uri.partition(b"?")[0]
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    return request


class CachedResponseTests(unittest.SynchronousTestCase):
    def test_round_trip(self):
        """A response encoded for Redis decodes to the same status, headers and body."""
        response = CachedResponse(
            200, [(b"content-type", b"application/json"), (b"cache-control", b"max-age=60")],
            b"\x00\xff 00123\n{}",
        )
        self.assertEqual(CachedResponse.decode(response.encode()), response)

    def test_garbage_is_a_miss(self):
        """Bytes that are not an encoded response decode to None."""
        for data in (b"", b"no newline", b"{bad json\nbody", b'{"s":1}\nbody', None, "text"):
            self.assertIsNone(CachedResponse.decode(data))


class MemoryCacheTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.cache = MemoryCache(self.clock, max_entries=3)

    def get(self, key):
        return self.successResultOf(self.cache.get(key))

    def test_entry_expires_with_ttl(self):
        """An entry is served until its TTL passes on the injected clock, then missed."""
        self.cache.put("k", ONE, 60)
        self.clock.advance(59.9)
        self.assertEqual(self.get("k"), ONE)
        self.clock.advance(0.2)
        self.assertIsNone(self.get("k"))
        self.assertEqual(len(self.cache), 0)

    def test_lru_eviction(self):
        """Past max_entries the least recently used entry goes first."""
        for key in "abc":
            self.cache.put(key, ONE, 60)
        self.get("a")  # a is now the most recent
        self.cache.put("d", ONE, 60)
        self.assertIsNone(self.get("b"))
        self.assertEqual([k for k in "acd" if self.get(k)], ["a", "c", "d"])

    def test_byte_bound(self):
        """Entries are evicted to stay under max_bytes; one larger than it is not stored."""
        cache = MemoryCache(self.clock, max_entries=100, max_bytes=1000)
        big = CachedResponse(200, [], b"x" * 400)
        for key in "abc":
            cache.put(key, big, 60)
        self.assertIsNone(self.successResultOf(cache.get("a")))
        self.assertIsNotNone(self.successResultOf(cache.get("c")))
        cache.put("huge", CachedResponse(200, [], b"x" * 2000), 60)
        self.assertIsNone(self.successResultOf(cache.get("huge")))

    def test_zero_ttl_not_stored(self):
        """A TTL of 0 stores nothing."""
        self.cache.put("k", ONE, 0)
        self.assertIsNone(self.get("k"))

    def test_invalidate_bumps_generation(self):
        """invalidate_measurements moves to a new generation and drops old entries."""
        self.assertEqual(self.successResultOf(self.cache.generation()), 0)
        self.cache.put("k", ONE, 60)
        self.cache.invalidate_measurements()
        self.assertEqual(self.successResultOf(self.cache.generation()), 1)
        self.assertIsNone(self.get("k"))


class KeyTests(unittest.SynchronousTestCase):
    def test_sorted_query(self):
        """Equivalent queries in another parameter order share a key unless order matters."""
        a = request_for(b"/api/v1/x?b=2&a=1")
        b = request_for(b"/api/v1/x?a=1&b=2")
        self.assertEqual(cache_key(a), cache_key(b))
        self.assertNotEqual(cache_key(a, keep_order=True), cache_key(b, keep_order=True))
        self.assertNotEqual(cache_key(a), cache_key(request_for(b"/api/v1/y?a=1&b=2")))

    def test_authorization_varies(self):
        """With vary_auth, two bearers get two keys; without it, one."""
        a = request_for(b"/x?a=1", {b"authorization": b"Bearer one"})
        b = request_for(b"/x?a=1", {b"authorization": b"Bearer two"})
        self.assertEqual(cache_key(a), cache_key(b))
        self.assertNotEqual(cache_key(a, vary_auth=True), cache_key(b, vary_auth=True))

    def test_long_keys_are_digested(self):
        """A very long query becomes a fixed-size digest key."""
        key = cache_key(request_for(b"/x?q=" + b"a" * 2000))
        self.assertEqual(len(key), 64)

    def test_cacheable_ttl(self):
        """Only a 200 with max-age > 0 and no no-cache is cacheable, for max-age seconds."""
        cases = [
            (200, b"max-age=60", 60),
            (200, b"max-age=0", 0),
            (200, b"max-age=0, no-cache", 0),
            (200, b"no-cache, max-age=60", 0),
            (400, b"max-age=60", 0),
            (200, None, 0),
            (200, b"max-age=abc", 0),
        ]
        for status, header, expected in cases:
            request = request_for(b"/x")
            request.setResponseCode(status)
            if header is not None:
                request.setHeader(b"Cache-Control", header)
            self.assertEqual(cacheable_ttl(request), expected, (status, header))


class ServeCachedTests(unittest.TestCase):
    @deferred_test
    async def test_hit_replays_status_headers_body(self):
        """A second identical request is answered from the cache with the stored headers."""
        cache = MemoryCache(task.Clock())
        calls = []

        def produce(request):
            calls.append(1)
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Cache-Control", b"max-age=60")
            request.setHeader(b"X-Other", b"not stored")
            return b'{"n":%d}' % len(calls)

        first = request_for(b"/a?x=1")
        self.assertEqual(await serve_cached(cache, first, lambda: produce(first)), b'{"n":1}')
        second = request_for(b"/a?x=1")
        self.assertEqual(await serve_cached(cache, second, lambda: produce(second)), b'{"n":1}')
        self.assertEqual(len(calls), 1)
        self.assertEqual(second.responseHeaders.getRawHeaders(b"cache-control"), [b"max-age=60"])
        self.assertEqual(second.responseHeaders.getRawHeaders(b"content-length"), [b"7"])
        self.assertIsNone(second.responseHeaders.getRawHeaders(b"x-other"))

    @deferred_test
    async def test_uncacheable_not_stored(self):
        """Responses with max-age=0 or an error status are computed every time."""
        cache = MemoryCache(task.Clock())
        calls = []

        def produce(request, status, header):
            calls.append(1)
            request.setResponseCode(status)
            request.setHeader(b"Cache-Control", header)
            return b"{}"

        for status, header in ((200, b"max-age=0"), (500, b"max-age=60")):
            for _ in range(2):
                request = request_for(b"/b")
                await serve_cached(cache, request, lambda: produce(request, status, header))
        self.assertEqual(len(calls), 4)
        self.assertEqual(len(cache), 0)

    @deferred_test
    async def test_invalidation_between_compute_and_store(self):
        """A response computed before an invalidation is never served after it."""
        cache = MemoryCache(task.Clock())
        value = [b"old"]

        async def produce(request):
            request.setHeader(b"Cache-Control", b"max-age=60")
            body = value[0]
            # ingestion commits new data and bumps the generation meanwhile
            value[0] = b"new"
            await cache.invalidate_measurements()
            return body

        first = request_for(b"/c")
        self.assertEqual(await serve_cached(cache, first, lambda: produce(first)), b"old")
        second = request_for(b"/c")
        self.assertEqual(await serve_cached(cache, second, lambda: produce(second)), b"new")


    @deferred_test
    async def test_decorator_keys_by_authorization(self):
        """The route decorator with vary_auth keeps one entry per bearer."""
        calls = []

        class Routes:
            cache = MemoryCache(task.Clock())

            @cached(vary_auth=True)
            def mine(self, request):
                calls.append(request.getHeader(b"authorization"))
                request.setHeader(b"Cache-Control", b"max-age=3600")
                return b"for " + (request.getHeader(b"authorization") or b"nobody")

        routes = Routes()
        for bearer in (b"Bearer a", b"Bearer b", b"Bearer a"):
            request = request_for(b"/api/_/ooni_run/fetch/1", {b"authorization": bearer})
            self.assertEqual(await routes.mine(request), b"for " + bearer)
        self.assertEqual(calls, [b"Bearer a", b"Bearer b"])


class RedisCacheTests(unittest.TestCase):
    async def start(self, **kwargs):
        self.redis = await RedisProcess(self).ready()
        cache = RedisCache(self.redis.url, reactor, **kwargs)
        self.addCleanup(cache.close)
        return cache

    @deferred_test
    async def test_put_get_and_ttl(self):
        """Entries round-trip through Redis with the TTL set as the key's expiry."""
        cache = await self.start()
        self.assertIsNone(await cache.get("k"))
        await cache.put("k", ONE, 60)
        self.assertEqual(await cache.get("k"), ONE)
        ttl = subprocess.run(
            ["redis-cli", "-p", str(self.redis.port), "TTL", "ooni-api:k"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        self.assertTrue(55 <= int(ttl) <= 60, ttl)
        self.assertEqual((cache.stats.hits, cache.stats.misses, cache.stats.stores), (1, 1, 1))

    @deferred_test
    async def test_numbers_stay_bytes(self):
        """A body that looks like a number (00123) comes back exactly as stored."""
        cache = await self.start()
        for body in (b"00123", b"123", b"1.50", b"-0"):
            raw = CachedResponse(200, [], body)
            await cache.put("n" + body.decode(), raw, 60)
            self.assertEqual((await cache.get("n" + body.decode())).body, body)

    @deferred_test
    async def test_generation_shared_between_hosts(self):
        """An invalidation by one host reaches another host sharing the Redis server."""
        one = await self.start(generation_refresh=0.0)
        two = RedisCache(self.redis.url, reactor, generation_refresh=0.0)
        self.addCleanup(two.close)
        before = await two.generation()
        await one.invalidate_measurements()
        self.assertEqual(await two.generation(), before + 1)
        self.assertEqual(await one.generation(), before + 1)

    @deferred_test
    async def test_slow_redis_is_a_quick_miss(self):
        """A Redis that stops answering costs one short timeout, then is skipped."""
        cache = await self.start(timeout=0.1, retry_after=0.5)
        await cache.put("k", ONE, 60)
        self.assertEqual(await cache.get("k"), ONE)
        self.redis.pause()
        started = time.monotonic()
        self.assertIsNone(await cache.get("k"))
        self.assertLess(time.monotonic() - started, 0.5)
        started = time.monotonic()
        self.assertIsNone(await cache.get("k"))
        await cache.put("other", ONE, 60)
        self.assertLess(time.monotonic() - started, 0.05)
        self.redis.resume()
        await task.deferLater(reactor, 0.6, lambda: None)
        self.assertEqual(await cache.get("k"), ONE)

    @deferred_test
    async def test_down_redis_never_fails(self):
        """With redis-server gone, every operation returns quickly as a miss."""
        cache = await self.start(timeout=0.1)
        self.redis.stop()
        started = time.monotonic()
        self.assertIsNone(await cache.get("k"))
        await cache.put("k", ONE, 60)
        await cache.invalidate_measurements()
        self.assertIsInstance(await cache.generation(), int)
        self.assertLess(time.monotonic() - started, 1.0)

    @deferred_test
    async def test_unreachable_at_start(self):
        """A Redis URL where nothing listens gives misses, not errors."""
        cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", reactor, timeout=0.1)
        self.addCleanup(cache.close)
        self.assertIsNone(await cache.get("k"))
        await cache.put("k", ONE, 60)
        self.assertIsNone(await cache.get("k"))


class ServerCacheTests(unittest.TestCase):
    SEARCH = "/api/v1/measurements?probe_cc=IT&since=2020-01-01&until=2026-01-01&limit=500"

    async def check_freshness(self, server):
        rows = fastpath_rows()
        it = [r for r in rows if r["probe_cc"] == "IT"]
        await seed_fastpath(server, it[:-1])
        _, first = await server.client.get(self.SEARCH)
        self.assertEqual(len(first["results"]), len(it) - 1)
        # New rows land behind the cache's back: the cached answer holds...
        await seed_fastpath(server, it[-1:])
        _, again = await server.client.get(self.SEARCH)
        self.assertEqual(again["results"], first["results"])
        # ...until ingestion says it wrote something.
        await server.context.cache.invalidate_measurements()
        _, fresh = await server.client.get(self.SEARCH)
        self.assertEqual(len(fresh["results"]), len(it))

    @deferred_test
    async def test_memory_cache_serves_and_invalidates(self):
        """The embedded cache replays a search for max-age and drops it on invalidation."""
        server = await start_server(self, quiet_config(self))
        self.assertIsInstance(server.context.cache, MemoryCache)
        await self.check_freshness(server)
        self.assertGreaterEqual(server.context.cache.stats.hits, 1)

    @deferred_test
    async def test_redis_cache_serves_and_invalidates(self):
        """With redis_url the server caches in Redis, with the same freshness rules."""
        redis = await RedisProcess(self).ready()
        server = await start_server(self, quiet_config(self, redis_url=redis.url))
        self.addCleanup(server.context.cache.close)
        self.assertIsInstance(server.context.cache, RedisCache)
        await self.check_freshness(server)
        self.assertGreaterEqual(server.context.cache.stats.hits, 1)

    @deferred_test
    async def test_server_with_redis_down(self):
        """A server whose Redis is down answers normally and promptly."""
        config = quiet_config(self, redis_url=f"redis://127.0.0.1:{free_port()}/0")
        server = await start_server(self, config)
        self.addCleanup(server.context.cache.close)
        await seed_fastpath(server, fastpath_rows()[:50])
        started = time.monotonic()
        for _ in range(3):
            response, body = await server.client.get(self.SEARCH)
            self.assertEqual(response.code, 200)
        self.assertLess(time.monotonic() - started, 2.0)
