"""
Quotas through the whole server on loopback (api-routes.md section 7):
X-Real-IP from the loopback proxy stands for the client address, and most
tests make every request cost exactly one second of budget.
"""

import math
import os
import sys
import time

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from ooni_twisted.accounts import tokens
from ooni_twisted.ratelimit import QuotaHook
from ooni_twisted.storage.quotas import QuotaService

from .support import HASH_KEY, JWT_KEY, deferred_test, make_config, start_server

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LIMITS = (
    "ipaddr_per_day=3,ipaddr_per_week=10,ipaddr_per_month=20,"
    "token_per_day=2,token_per_week=10,token_per_month=20"
)

HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


class SteppingClock:
    """
    A monotonic clock that moves C{step} seconds at each reading: the
    resource reads it when a request starts and when it finishes, so each
    sequential request costs exactly C{step} seconds of quota.
    """

    def __init__(self, step):
        self.step = step
        self.now = 1000.0

    def __call__(self):
        self.now += self.step
        return self.now


def quota_config(testcase, **overrides):
    # No ingestion pass is due while these tests run (they submit nothing),
    # so none is in flight when a server stops.
    values = {
        "rate_limits": LIMITS,
        "rate_limit_unmetered": "10.9.9.9",
        "ingest_interval": "3600",
    }
    values.update(overrides)
    return make_config(testcase.mktemp(), **values)


async def serve(testcase, config, step=1.0):
    """
    Start a server; with C{step}, every request costs C{step} seconds.
    """
    server = await start_server(testcase, config)
    # Stop the timers first, while the thread pools still run: the server's
    # stop ends them all at once, and a timer pass then in flight (ingestion)
    # can wait forever for pool work that is never run.
    testcase.addCleanup(server.timers.stopService)
    if step is not None:
        server.site.resource._clock = SteppingClock(step)
    (server.quota_hook,) = [h for h in server.context.hooks if isinstance(h, QuotaHook)]
    server.quotas = server.quota_hook.store
    return server


async def fetch(server, ip=None, path="/robots.txt", method="GET", headers=None):
    headers = dict(headers or {})
    if ip is not None:
        headers["X-Real-IP"] = ip
    return await server.client.request(method, path, headers=headers)


def rate_headers(response):
    """The three X-RateLimit-* values, or None when there are none."""
    values = [response.headers.getRawHeaders(name) for name in HEADERS]
    if values == [None, None, None]:
        return None
    return tuple(v[0] if v else None for v in values)


async def wait_for(predicate, timeout=5.0):
    """Poll C{predicate} until true (the store flushes once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await deferLater(reactor, 0.1, lambda: None)


async def stored(server, key, seconds):
    """True once LMDB holds C{seconds} left in C{key}'s daily bucket."""
    rows = await deferToThreadPool(reactor, server.file_pool, server.quotas.summary)
    return [key, seconds] in rows


def session_token(email, role):
    now = int(time.time())
    account = tokens.account_id(email, HASH_KEY)
    claims = tokens.session_claims(account, role, now, now, 2, 7)
    return account, tokens.encode(claims, JWT_KEY)


class BudgetTests(unittest.TestCase):
    @deferred_test
    async def test_real_requests_spend_a_tiny_budget(self):
        """With a budget of a few milliseconds, real request time runs it out
        and the client then gets the JSON 429, with CORS and no-cache."""
        config = quota_config(
            self, rate_limits="ipaddr_per_day=0.003,ipaddr_per_week=1,ipaddr_per_month=1"
        )
        server = await serve(self, config, step=None)
        codes = []
        for _ in range(1000):
            response, body = await fetch(server, "198.51.100.7")
            codes.append(response.code)
            if response.code == 429:
                break
            self.assertEqual(rate_headers(response)[:2], ("0.003", "0"))
        self.assertEqual(codes[-1], 429)
        self.assertGreater(len(codes), 1)
        self.assertEqual(set(codes[:-1]), {200})
        self.assertEqual(body, {"error": "429 error"})
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-cache"])
        self.assertEqual(response.headers.getRawHeaders("access-control-allow-origin"), ["*"])
        self.assertEqual(rate_headers(response)[:2], ("0.003", "0"))
        response, _ = await fetch(server, "198.51.100.7")
        self.assertEqual(response.code, 429)

    @deferred_test
    async def test_headers_count_down_to_429(self):
        """Before the budget is spent each response says the limit, the whole
        seconds left before it and the next refill; then 429 carries them too."""
        server = await serve(self, quota_config(self))
        seen = []
        for _ in range(4):
            response, _ = await fetch(server, "198.51.100.7")
            seen.append((response.code,) + rate_headers(response))
        self.assertEqual(
            [row[:3] for row in seen],
            [(200, "3", "3"), (200, "3", "2"), (200, "3", "1"), (429, "3", "0")],
        )
        # The reset is the next hourly refill; it moves only when a refill
        # runs (here, at most the start-up catch-up).
        resets = [int(row[3]) for row in seen]
        self.assertEqual(resets, sorted(resets))
        self.assertEqual(resets[-1], math.ceil(server.quotas.next_refill_time()))
        self.assertLess(abs(resets[-1] - (time.time() + 3600)), 60)

    @deferred_test
    async def test_what_is_metered(self):
        """Unknown paths, preflights and the loopback proxy itself are metered;
        /, /health, /report* and the unmetered network carry no header and
        still answer when the client's budget is spent."""
        server = await serve(self, quota_config(self))
        response, _ = await fetch(server, "203.0.113.9", path="/api/v1/nothing-here")
        self.assertEqual((response.code, rate_headers(response)[1]), (404, "3"))
        response, _ = await fetch(server, "203.0.113.9", path="/api/v1/measurements", method="OPTIONS")
        self.assertEqual((response.code, rate_headers(response)[1]), (200, "2"))
        response, _ = await fetch(server)  # the TCP peer, 127.0.0.1
        self.assertEqual((response.code, rate_headers(response)[1]), (200, "3"))
        response, _ = await fetch(server, "not-an-address")  # falls back to the peer
        self.assertEqual((response.code, rate_headers(response)[1]), (200, "2"))
        for _ in range(2):
            await fetch(server, "203.0.113.9")
        response, _ = await fetch(server, "203.0.113.9")
        self.assertEqual(response.code, 429)
        for path in ("/", "/health", "/report", "/report/20240101T000000Z_x/close"):
            method = "GET" if path in ("/", "/health") else "POST"
            response, _ = await fetch(server, "203.0.113.9", path=path, method=method)
            self.assertNotEqual(response.code, 429, path)
            self.assertIsNone(rate_headers(response), path)
        for _ in range(5):
            response, _ = await fetch(server, "10.9.9.9")
            self.assertEqual(response.code, 200)
            self.assertIsNone(rate_headers(response))


class KeyingTests(unittest.TestCase):
    async def spend(self, server, ip, requests=3):
        for _ in range(requests):
            response, _ = await fetch(server, ip)
            self.assertEqual(response.code, 200)

    @deferred_test
    async def test_ipv4_networks(self):
        """Two addresses in one /24 share a bucket; another /24 has its own."""
        server = await serve(self, quota_config(self))
        await self.spend(server, "198.51.100.7")
        response, _ = await fetch(server, "198.51.100.200")
        self.assertEqual((response.code, rate_headers(response)[1]), (429, "0"))
        response, _ = await fetch(server, "198.51.101.7")
        self.assertEqual((response.code, rate_headers(response)[1]), (200, "3"))

    @deferred_test
    async def test_ipv6_networks(self):
        """Two addresses in one /64 share a bucket; another /64 has its own."""
        server = await serve(self, quota_config(self))
        await self.spend(server, "2001:db8:1:1::5")
        response, _ = await fetch(server, "2001:db8:1:1:ffff:1:2:3")
        self.assertEqual((response.code, rate_headers(response)[1]), (429, "0"))
        response, _ = await fetch(server, "2001:db8:1:2::5")
        self.assertEqual((response.code, rate_headers(response)[1]), (200, "3"))

    @deferred_test
    async def test_exact_address_keying(self):
        """With prefixes of 32 and 128 each address has its own bucket."""
        config = quota_config(self, rate_limit_ipv4_prefix="32", rate_limit_ipv6_prefix="128")
        server = await serve(self, config)
        await self.spend(server, "198.51.100.7")
        await self.spend(server, "2001:db8:1:1::5")
        self.assertEqual((await fetch(server, "198.51.100.7"))[0].code, 429)
        self.assertEqual((await fetch(server, "2001:db8:1:1::5"))[0].code, 429)
        self.assertEqual((await fetch(server, "198.51.100.8"))[0].code, 200)
        self.assertEqual((await fetch(server, "2001:db8:1:1::6"))[0].code, 200)

    @deferred_test
    async def test_tokens_have_their_own_budget(self):
        """With rate_limit_tokens a valid session spends its account's token
        budget, apart from its network's; a bad token counts as anonymous."""
        server = await serve(self, quota_config(self, rate_limit_tokens="true"))
        _, token = session_token("user@example.org", "user")
        auth = {"Authorization": f"Bearer {token}"}
        seen = []
        for _ in range(3):
            response, _ = await fetch(server, "198.51.100.7", headers=auth)
            seen.append((response.code,) + rate_headers(response)[:2])
        self.assertEqual(seen, [(200, "2", "2"), (200, "2", "1"), (429, "2", "0")])
        response, _ = await fetch(server, "198.51.100.7")
        self.assertEqual((response.code,) + rate_headers(response)[:2], (200, "3", "3"))
        bad = {"Authorization": "Bearer not.a.token"}
        response, _ = await fetch(server, "198.51.100.7", headers=bad)
        self.assertEqual((response.code,) + rate_headers(response)[:2], (200, "3", "2"))


class RefillAndRestartTests(unittest.TestCase):
    @deferred_test
    async def test_refill_restores_service(self):
        """An hourly refill gives a spent key a twenty-fourth of its daily
        budget back and moves X-RateLimit-Reset; a day of refills fills it."""
        server = await serve(self, quota_config(self))
        store = server.quotas
        key = "198.51.100.0/24"

        async def refill(when):
            # As QuotaService does it; charges not yet flushed would only be
            # subtracted after the refill, so wait for the flush first.
            await wait_for(lambda: stored(server, key, 0.0))
            result = await deferToThreadPool(
                reactor, server.file_pool, store.refill_transaction, when
            )
            return store.end_refill(result)

        for _ in range(3):
            await fetch(server, "198.51.100.7")
        self.assertEqual((await fetch(server, "198.51.100.7"))[0].code, 429)
        later = store.next_refill_time()
        # About an hour since the last refill (the start-up catch-up may
        # have moved it by a moment since we read it).
        self.assertTrue(3500 < await refill(later) <= 3600)
        self.assertAlmostEqual(store.remaining(key), 3 / 24, places=3)
        response, _ = await fetch(server, "198.51.100.7")
        self.assertEqual(response.code, 200)
        self.assertEqual(rate_headers(response), ("3", "0", str(math.ceil(later + 3600))))
        self.assertEqual((await fetch(server, "198.51.100.7"))[0].code, 429)
        self.assertEqual(await refill(later + 86400), 86400.0)
        response, _ = await fetch(server, "198.51.100.7")
        self.assertEqual((response.code, rate_headers(response)[1]), (200, "3"))

    @deferred_test
    async def test_quotas_survive_a_restart(self):
        """Spent and partly spent budgets are the same after a server restart."""
        config = quota_config(
            self, rate_limits="ipaddr_per_day=1,ipaddr_per_week=10,ipaddr_per_month=20"
        )
        server = await serve(self, config, step=0.5)
        for _ in range(2):
            await fetch(server, "198.51.100.7")
        self.assertEqual((await fetch(server, "198.51.100.7"))[0].code, 429)
        await fetch(server, "203.0.113.9")
        await server.timers.stopService()  # see serve()
        await server.stopService()
        self.assertTrue(server.quotas.closed)

        server = await serve(self, config, step=0.5)
        self.assertEqual((await fetch(server, "198.51.100.7"))[0].code, 429)
        # Catching up on the restart's seconds refills well under a millisecond.
        self.assertAlmostEqual(server.quotas.remaining("203.0.113.0/24"), 0.5, places=3)
        response, _ = await fetch(server, "198.51.101.1")
        self.assertEqual((response.code, rate_headers(response)[1]), (200, "1"))

    @deferred_test
    async def test_processes_share_quotas(self):
        """Charges flushed by another process on the same quota_dir reach the
        server's headers after its next flush."""
        config = quota_config(self)
        server = await serve(self, config)
        child = (
            "import sys, time\n"
            "from ooni_twisted.storage.quotas import QuotaStore, parse_rate_limits\n"
            "class Clock:\n"
            "    seconds = staticmethod(time.time)\n"
            "store = QuotaStore(sys.argv[1], parse_rate_limits(sys.argv[2]), Clock())\n"
            "store.charge('192.0.2.0/24', 2.0)\n"
            "store.flush()\n"
            "store.close()\n"
        )
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-c", child, config.quota_dir, LIMITS],
            env=dict(os.environ, PYTHONPATH=REPO),
        )
        self.assertEqual(code, 0, err.decode())

        async def seen():
            return server.quotas.remaining("192.0.2.0/24") < 3

        await wait_for(seen)
        response, _ = await fetch(server, "192.0.2.50")
        self.assertEqual((response.code, rate_headers(response)[1]), (200, "1"))


class SummaryTests(unittest.TestCase):
    @deferred_test
    async def test_quotas_summary(self):
        """Admins get the emptiest daily buckets, lowest first; others get 401."""
        server = await serve(self, quota_config(self))
        _, admin = session_token("admin@example.org", "admin")
        _, user = session_token("user@example.org", "user")
        # From the unmetered network, so that polling spends nothing.
        as_admin = {"Authorization": f"Bearer {admin}", "X-Real-IP": "10.9.9.9"}
        response, body = await server.client.get("/api/_/quotas_summary", headers=as_admin)
        self.assertEqual((response.code, body), (200, []))
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["max-age=0, no-cache"])
        for ip in ("198.51.100.7", "198.51.100.8", "203.0.113.9"):
            await fetch(server, ip)

        async def summary():
            _, body = await server.client.get("/api/_/quotas_summary", headers=as_admin)
            return body if len(body) == 2 else None

        self.assertEqual(
            await wait_for(summary), [["198.51.100.0/24", 1.0], ["203.0.113.0/24", 2.0]]
        )
        response, body = await server.client.get("/api/_/quotas_summary")
        self.assertEqual((response.code, body), (401, {"error": "Authentication required"}))
        self.assertIsNotNone(rate_headers(response))
        response, body = await server.client.get(
            "/api/_/quotas_summary", headers={"Authorization": f"Bearer {user}"}
        )
        self.assertEqual((response.code, body), (401, {"error": "Role not authorized"}))

    def test_service_is_a_timer(self):
        """build_quotas puts the quota service under the timers (which stop
        before the file pool) and closes the store when the context closes."""
        from twisted.application.service import MultiService

        from ooni_twisted.app import Context
        from ooni_twisted.ratelimit import build_quotas

        config = quota_config(self)
        timers = MultiService()
        context = Context(config, reactor, None, None, timers)
        quotas = build_quotas(context)
        self.assertIsInstance(quotas.service, QuotaService)
        self.assertIs(quotas.service.parent, timers)
        context.close()
        self.assertTrue(quotas.store.closed)
