"""Tests for ooni_twisted.storage.quotas (spec §7, §12.9 quotas_summary)."""

import math
import os
import sys
import time

import lmdb
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ooni_twisted.storage.quotas import (
    Limits,
    NetworkSet,
    QuotaKeyer,
    QuotaService,
    QuotaStore,
    parse_networks,
    parse_rate_limits,
    quota_key,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T0 = 1_700_000_000.0


class ParseRateLimitsTests(SynchronousTestCase):
    def test_defaults(self):
        """An empty setting gives the reference limits of §7.1."""
        limits = parse_rate_limits("")
        self.assertEqual(limits.for_kind("ipaddr"), (4000, 20000, 60000))
        self.assertEqual(limits.for_kind("token"), (500, 2000, 6000))

    def test_overrides(self):
        """Named limits replace their default and leave the others alone."""
        limits = parse_rate_limits(" ipaddr_per_day=10, token_per_week = 3.5 ,")
        self.assertEqual(limits.for_kind("ipaddr"), (10, 20000, 60000))
        self.assertEqual(limits.for_kind("token"), (500, 3.5, 6000))

    def test_rejects_bad_settings(self):
        """Unknown names, repeated names and non-positive or non-numeric
        values raise ValueError."""
        for text in [
            "ipaddr_per_hour=5",
            "ipaddr_per_day",
            "ipaddr_per_day=abc",
            "ipaddr_per_day=0",
            "ipaddr_per_day=-3",
            "ipaddr_per_day=nan",
            "ipaddr_per_day=inf",
            "ipaddr_per_day=1,ipaddr_per_day=2",
        ]:
            self.assertRaises(ValueError, parse_rate_limits, text)
        self.assertRaises(ValueError, parse_rate_limits, None)
        self.assertRaises(ValueError, Limits, ipaddr_per_day=0)

    def test_unknown_kind(self):
        """Asking the limits of an unknown kind raises ValueError."""
        self.assertRaises(ValueError, Limits().for_kind, "cookie")


class NetworksTests(SynchronousTestCase):
    def test_membership(self):
        """Exact addresses and networks, IPv4 and IPv6, match their members
        only; an IPv4-mapped IPv6 address matches as IPv4."""
        nets = parse_networks("127.0.0.1, 10.0.0.0/8 ,2001:db8::/32,")
        self.assertIn("127.0.0.1", nets)
        self.assertIn("10.200.3.4", nets)
        self.assertIn("::ffff:10.1.1.1", nets)
        self.assertIn("2001:db8:ffff::1", nets)
        self.assertNotIn("127.0.0.2", nets)
        self.assertNotIn("11.0.0.1", nets)
        self.assertNotIn("2001:db9::1", nets)
        self.assertNotIn("not an address", nets)
        self.assertNotIn(None, nets)

    def test_empty_and_bad(self):
        """An empty list contains nothing; a bad entry raises ValueError."""
        self.assertFalse(parse_networks(""))
        self.assertNotIn("127.0.0.1", parse_networks(" , "))
        self.assertRaises(ValueError, parse_networks, "127.0.0.1, localhost")
        self.assertRaises(ValueError, parse_networks, "10.0.0.0/33")


class QuotaKeyTests(SynchronousTestCase):
    def test_ipv4_slash24(self):
        """IPv4 clients are keyed by their /24 network."""
        self.assertEqual(quota_key("1.2.3.4"), "1.2.3.0/24")
        self.assertEqual(quota_key("1.2.3.255"), "1.2.3.0/24")
        self.assertEqual(quota_key("::ffff:1.2.3.4"), "1.2.3.0/24")

    def test_ipv6_slash64(self):
        """IPv6 clients are keyed by their /64 network, in compressed form."""
        self.assertEqual(quota_key("2001:db8:0:1:2:3:4:5"), "2001:db8:0:1::/64")
        self.assertEqual(quota_key("2001:DB8:0:1::9"), "2001:db8:0:1::/64")
        self.assertEqual(quota_key("fe80::1%eth0"), "fe80::/64")

    def test_exact_keying(self):
        """Full-length prefixes key by the bare address, as the reference."""
        self.assertEqual(quota_key("1.2.3.4", 32, 128), "1.2.3.4")
        self.assertEqual(quota_key("2001:db8::1", 32, 128), "2001:db8::1")
        self.assertEqual(quota_key("::1.2.3.4", 32, 128), "::102:304")
        self.assertEqual(quota_key("10.9.8.7", 16, 48), "10.9.0.0/16")

    def test_bad_input(self):
        """Non-addresses and impossible prefixes raise ValueError."""
        for bad in ["", "1.2.3", "01.2.3.4", "1.2.3.4 ", "example.org", None, 7, b"1.2.3.4"]:
            self.assertRaises(ValueError, quota_key, bad)
        self.assertRaises(ValueError, quota_key, "1.2.3.4", 33)
        self.assertRaises(ValueError, quota_key, "::1", 24, 129)
        self.assertRaises(ValueError, quota_key, "1.2.3.4", "24")

    def test_keyer(self):
        """QuotaKeyer gives the key, None for unmetered addresses, keeps its
        memo bounded and rejects bad addresses and prefixes."""
        keyer = QuotaKeyer(unmetered=parse_networks("127.0.0.1"), max_entries=2)
        self.assertEqual(keyer("1.2.3.4"), "1.2.3.0/24")
        self.assertEqual(keyer("1.2.3.4"), "1.2.3.0/24")
        self.assertIsNone(keyer("127.0.0.1"))
        self.assertEqual(keyer("2001:db8::1"), "2001:db8::/64")
        self.assertLessEqual(len(keyer._memo), 2)
        self.assertRaises(ValueError, keyer, "nope")
        self.assertRaises(ValueError, keyer, ["1.2.3.4"])
        self.assertEqual(QuotaKeyer(32, 128)("1.2.3.4"), "1.2.3.4")
        self.assertRaises(ValueError, QuotaKeyer, 24, 200)
        self.assertIsInstance(QuotaKeyer().unmetered, NetworkSet)


class StoreMixin:
    def open(self, limits=None, path=None, clock=None, **kw):
        if path is None:
            path = self.path
        store = QuotaStore(path, limits or Limits(), clock or self.clock, **kw)
        self.addCleanup(store.close)
        return store

    def setUp(self):
        self.path = self.mktemp()
        self.clock = Clock()
        self.clock.advance(T0)


class QuotaStoreTests(StoreMixin, SynchronousTestCase):
    def test_unknown_key_is_full(self):
        """A key with no stored value has full buckets; the headers show the
        daily budget and the next hourly refill."""
        store = self.open()
        self.assertFalse(store.is_exhausted("1.2.3.0/24"))
        self.assertEqual(store.remaining("1.2.3.0/24"), 4000.0)
        self.assertEqual(tuple(store.status("1.2.3.0/24")), (4000, 4000.0, T0 + 3600))
        self.assertEqual(store.next_refill_time(), T0 + 3600)

    def test_tiny_budget_is_exhausted(self):
        """A key is exhausted once its charges reach the daily budget, before
        and after the charges are flushed."""
        store = self.open(Limits(ipaddr_per_day=1))
        key = quota_key("1.2.3.4")
        store.charge(key, 0.6)
        self.assertFalse(store.is_exhausted(key))
        self.assertAlmostEqual(store.remaining(key), 0.4)
        store.charge(key, 0.5)
        self.assertTrue(store.is_exhausted(key))
        self.assertEqual(store.remaining(key), 0.0)
        self.assertEqual(store.flush(), 1)
        self.assertTrue(store.is_exhausted(key))
        self.assertEqual(store.summary(), [[key, 0.0]])

    def test_weekly_budget_also_exhausts(self):
        """Any bucket at zero exhausts the key, and the headers then report
        that bucket's limit."""
        store = self.open(Limits(ipaddr_per_day=100, ipaddr_per_week=2))
        store.charge("k", 2.0)
        self.assertTrue(store.is_exhausted("k"))
        store.flush()
        self.assertTrue(store.is_exhausted("k"))
        self.assertEqual(store.status("k").limit, 2)

    def test_two_slash24_have_separate_buckets(self):
        """Clients in two different /24 networks do not share a budget."""
        store = self.open(Limits(ipaddr_per_day=1))
        a, b = quota_key("10.0.1.7"), quota_key("10.0.2.7")
        self.assertNotEqual(a, b)
        store.charge(a, 1.0)
        store.flush()
        self.assertTrue(store.is_exhausted(a))
        self.assertFalse(store.is_exhausted(b))

    def test_two_slash64_have_separate_buckets(self):
        """Clients in two different /64 networks do not share a budget."""
        store = self.open(Limits(ipaddr_per_day=1))
        a, b = quota_key("2001:db8:0:1::5"), quota_key("2001:db8:0:2::5")
        self.assertNotEqual(a, b)
        store.charge(a, 1.0)
        self.assertTrue(store.is_exhausted(a))
        self.assertFalse(store.is_exhausted(b))

    def test_same_slash24_shares_one_bucket(self):
        """Two addresses of one /24 (and of one /64) spend the same budget."""
        store = self.open(Limits(ipaddr_per_day=1))
        store.charge(quota_key("10.0.1.7"), 0.5)
        store.charge(quota_key("10.0.1.200"), 0.5)
        self.assertTrue(store.is_exhausted(quota_key("10.0.1.99")))
        store.charge(quota_key("2001:db8::1"), 1.0)
        self.assertTrue(store.is_exhausted(quota_key("2001:db8::ffff:2")))
        store.flush()
        self.assertEqual(len(store.summary()), 2)

    def test_quotas_survive_reopen(self):
        """Flushed charges are still there after closing and reopening."""
        store = self.open()
        store.charge("1.2.3.0/24", 12.5)
        store.flush()
        store.close()
        store = self.open()
        self.assertEqual(store.remaining("1.2.3.0/24"), 3987.5)

    def test_millisecond_precision(self):
        """Stored values keep milliseconds; many small charges add up."""
        store = self.open()
        for _ in range(1000):
            store.charge("k", 0.0004)
        store.flush()
        store.close()
        self.assertEqual(self.open().remaining("k"), 3999.6)

    def test_refill_restores(self):
        """An hourly refill gives back limit/24 of the daily budget and
        ends the exhaustion."""
        store = self.open(Limits(ipaddr_per_day=24))
        store.charge("k", 30.0)
        store.flush()
        self.assertTrue(store.is_exhausted("k"))
        self.clock.advance(3600)
        self.assertEqual(store.refill(), 3600.0)
        self.assertFalse(store.is_exhausted("k"))
        self.assertEqual(store.remaining("k"), 1.0)
        self.assertEqual(store.next_refill_time(), T0 + 7200)

    def test_refill_is_proportional_to_elapsed_time(self):
        """Each bucket regains elapsed × limit / window (§7.4)."""
        store = self.open()
        store.charge("k", 3000.0)
        store.flush()
        self.clock.advance(7200)
        store.refill()
        # day: 1000 + 2 h × 4000 / 24 h; week and month have more left.
        self.assertAlmostEqual(store.remaining("k"), 1000 + 2 * 4000 / 24, places=3)

    def test_full_bucket_deletes_the_key(self):
        """A bucket refilled to its limit is deleted: the key leaves the
        summary and is full again."""
        store = self.open()
        for i in range(5):
            store.charge(f"k{i}", 1.0 + i)
        store.flush()
        self.assertEqual(len(store.summary()), 5)
        self.clock.advance(30 * 24 * 3600)
        store.refill()
        self.assertEqual(store.summary(), [])
        self.assertEqual(store.remaining("k0"), 4000.0)
        with store._env.begin() as txn:
            for k in store._kinds.values():
                for db in k.dbs:
                    self.assertEqual(txn.stat(db)["entries"], 0)

    def test_refill_keeps_partly_full_keys(self):
        """A refill deletes the keys that became full and keeps the others,
        wherever they sit in the database."""
        store = self.open(Limits(ipaddr_per_day=24, ipaddr_per_week=10_000,
                                 ipaddr_per_month=10_000))
        for name in "abcde":
            store.charge(name, 0.5 if name in "ace" else 10.0)
        store.flush()
        self.clock.advance(3600)
        store.refill()
        self.assertEqual(store.summary(), [["b", 15.0], ["d", 15.0]])

    def test_no_double_refill_across_restart(self):
        """A store reopened right after a refill does not refill the same
        hour again; later it refills only the time since."""
        store = self.open(Limits(ipaddr_per_day=24))
        store.charge("k", 24.0)
        store.flush()
        self.clock.advance(3600)
        store.refill()
        store.close()
        store = self.open(Limits(ipaddr_per_day=24))
        self.assertEqual(store.refill(), 0.0)
        self.assertEqual(store.remaining("k"), 1.0)
        self.clock.advance(1800)
        self.assertEqual(store.refill(), 1800.0)
        self.assertEqual(store.remaining("k"), 1.5)

    def test_no_lost_refill_across_restart(self):
        """Time spent closed is refilled at the next refill after reopening."""
        store = self.open(Limits(ipaddr_per_day=24))
        store.charge("k", 24.0)
        store.flush()
        store.close()
        self.clock.advance(2 * 3600 + 900)
        store = self.open(Limits(ipaddr_per_day=24))
        self.assertEqual(store.next_refill_time(), T0 + 3600)
        store.refill()
        self.assertEqual(store.remaining("k"), 2.25)

    def test_clock_going_back_refills_nothing(self):
        """A refill at a time before the stored one changes nothing."""
        store = self.open(Limits(ipaddr_per_day=24))
        store.charge("k", 24.0)
        store.flush()
        self.assertEqual(store.refill(T0 - 3600), 0.0)
        self.assertEqual(store.next_refill_time(), T0 + 3600)
        self.assertEqual(store.remaining("k"), 0.0)

    def test_new_store_owes_no_refill(self):
        """A new environment counts refills from its creation."""
        store = self.open(Limits(ipaddr_per_day=24))
        store.charge("k", 24.0)
        store.flush()
        self.assertEqual(store.refill(), 0.0)
        self.assertTrue(store.is_exhausted("k"))

    def test_summary_lowest_daily_first(self):
        """quotas_summary lists stored keys by remaining daily seconds,
        lowest first, at most `limit`, and leaves out unflushed charges."""
        store = self.open()
        self.assertEqual(store.summary(), [])
        for key, cost in [("a", 5.0), ("b", 50.0), ("c", 0.25), ("d", 3999.0)]:
            store.charge(key, cost)
        store.flush()
        store.charge("e", 100.0)
        self.assertEqual(
            store.summary(),
            [["d", 1.0], ["b", 3950.0], ["a", 3995.0], ["c", 3999.75]],
        )
        self.assertEqual(store.summary(limit=2), [["d", 1.0], ["b", 3950.0]])
        self.assertEqual(store.summary(limit=0), [])
        self.assertRaises(ValueError, store.summary, -1)
        self.assertRaises(ValueError, store.summary, "20")

    def test_token_kind(self):
        """Token keys have their own buckets and the token limits."""
        store = self.open(Limits(token_per_day=1))
        store.charge("acct", 1.0, kind="token")
        self.assertTrue(store.is_exhausted("acct", kind="token"))
        self.assertFalse(store.is_exhausted("acct"))
        self.assertEqual(store.status("other", "token").limit, 1)
        store.flush()
        self.assertEqual(store.summary(kind="token"), [["acct", 0.0]])
        self.assertEqual(store.summary(), [])

    def test_bad_arguments(self):
        """Unknown kinds, bad keys and bad charges raise ValueError and
        charge nothing."""
        store = self.open()
        self.assertRaises(ValueError, store.is_exhausted, "k", "cookie")
        self.assertRaises(ValueError, store.charge, "k", 1.0, "cookie")
        for key in ["", None, 5, b"k", ["k"], "x" * 600]:
            self.assertRaises(ValueError, store.is_exhausted, key)
            self.assertRaises(ValueError, store.charge, key, 1.0)
        for seconds in [-1.0, math.nan, math.inf, "1", None]:
            self.assertRaises(ValueError, store.charge, "k", seconds)
        self.assertEqual(store.remaining("k"), 4000.0)
        self.assertEqual(store.flush(), 0)
        self.assertRaises(ValueError, QuotaStore, self.mktemp(), Limits(), None)

    def test_lowered_limit_caps_stored_values(self):
        """After limits are lowered, stored values are read as at most the
        new limit and a refill drops them."""
        store = self.open()
        store.charge("k", 1.0)
        store.flush()
        store.close()
        store = self.open(Limits(ipaddr_per_day=100))
        self.assertEqual(store.remaining("k"), 100.0)
        self.clock.advance(60)
        store.refill()
        self.assertEqual(store.summary(), [])

    def test_charges_during_a_flush_are_counted(self):
        """While a flush is being written, both its charges and new ones
        count, and the new ones go into the next flush."""
        store = self.open(Limits(ipaddr_per_day=10))
        store.charge("k", 4.0)
        batch = store.begin_flush()
        self.assertRaises(RuntimeError, store.begin_flush)
        store.charge("k", 3.0)
        self.assertEqual(store.remaining("k"), 3.0)
        result = store.write_batch(batch)
        self.assertEqual(store.end_flush(result), 1)
        self.assertEqual(store.remaining("k"), 3.0)
        store.flush()
        self.assertEqual(store.summary(), [["k", 3.0]])

    def test_failed_flush_keeps_charges(self):
        """When LMDB refuses a flush (map full) the error propagates and the
        charges stay pending."""
        store = self.open(map_size=64 * 1024)
        for i in range(1000):
            store.charge(f"key-{i}", 1.0)
        self.assertRaises(lmdb.MapFullError, store.flush)
        self.assertEqual(store.remaining("key-7"), 3999.0)
        self.assertEqual(len(store.begin_flush()["ipaddr"]), 1000)

    def test_close_is_idempotent(self):
        """close() twice is harmless and marks the store closed."""
        store = self.open()
        store.close()
        store.close()
        self.assertTrue(store.closed)


CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from ooni_twisted.storage.quotas import Limits, QuotaStore

class FixedClock:
    def seconds(self):
        return float(sys.argv[3])

store = QuotaStore(sys.argv[2], Limits(), FixedClock(), fsync=False)
mode = sys.argv[4]
if mode == "share":
    print(store.remaining("a"))
    store.charge("a", 20.0)
    store.charge("b", 5.0)
    store.flush()
elif mode == "refill":
    print(store.refill())
elif mode == "hammer":
    start = float(sys.argv[5])
    while time.time() < start:
        time.sleep(0.005)
    count = 0
    while time.time() < start + 0.4:
        store.charge("h", 0.001)
        store.flush()
        count += 1
    print(count)
store.close()
"""


class TwoProcessTests(StoreMixin, TestCase):
    """Several processes on one host share one environment."""

    def child(self, *args):
        env = dict(os.environ, PYTHONPATH=REPO)
        d = getProcessOutputAndValue(
            sys.executable,
            ["-c", CHILD, REPO, self.path, repr(self.clock.seconds())] + list(args),
            env=env,
        )

        def check(result):
            out, err, code = result
            self.assertEqual(code, 0, err.decode())
            return out.decode().strip()

        return d.addCallback(check)

    @inlineCallbacks
    def test_processes_see_each_others_charges(self):
        """Charges flushed by one process are seen by another after its own
        flush, and both land in the summary."""
        store = self.open()
        store.charge("a", 10.0)
        store.flush()
        self.assertEqual(store.remaining("a"), 3990.0)
        seen = yield self.child("share")
        self.assertEqual(float(seen), 3990.0)
        store.flush()
        self.assertEqual(store.remaining("a"), 3970.0)
        self.assertEqual(store.remaining("b"), 3995.0)
        self.assertEqual(store.summary(), [["a", 3970.0], ["b", 3995.0]])

    @inlineCallbacks
    def test_one_refill_per_stretch_of_time(self):
        """When two processes refill at the same moment, only the first
        one refills anything."""
        store = self.open()
        store.charge("a", 1000.0)
        store.flush()
        self.clock.advance(3600)
        self.assertEqual(store.refill(), 3600.0)
        second = yield self.child("refill")
        self.assertEqual(float(second), 0.0)
        self.assertAlmostEqual(store.remaining("a"), 3000 + 4000 / 24, places=3)

    @inlineCallbacks
    def test_concurrent_flushes_lose_nothing(self):
        """Two processes flushing charges to one key at the same time never
        lose an update: the stored value is the limit minus every charge."""
        self.open().close()  # create the environment first
        start = repr(time.time() + 1.0)
        counts = yield gatherResults([self.child("hammer", start), self.child("hammer", start)])
        total = sum(int(c) for c in counts)
        self.assertGreater(total, 0)
        store = self.open()
        self.assertAlmostEqual(store.remaining("h"), 4000 - total / 1000.0, places=6)


class QuotaServiceTests(StoreMixin, SynchronousTestCase):
    def service(self, store, **kw):
        svc = QuotaService(store, self.clock, threadpool=None, **kw)
        return svc

    def test_start_catches_up_missed_refills(self):
        """startService refills the time the store was closed."""
        store = self.open(Limits(ipaddr_per_day=24))
        store.charge("k", 24.0)
        store.flush()
        store.close()
        self.clock.advance(3 * 3600)
        store = self.open(Limits(ipaddr_per_day=24))
        svc = self.service(store)
        self.successResultOf(svc.startService())
        self.assertEqual(store.remaining("k"), 3.0)
        self.assertEqual(store.next_refill_time(), self.clock.seconds() + 3600)
        self.successResultOf(svc.stopService())

    def test_timers_flush_and_refill(self):
        """The flush timer writes charges every interval; the refill timer
        refills every hour."""
        store = self.open(Limits(ipaddr_per_day=24))
        svc = self.service(store, flush_interval=1.0)
        svc.startService()
        store.charge("k", 24.0)
        self.assertEqual(store.summary(), [])
        self.clock.advance(1.0)
        self.assertEqual(store.summary(), [["k", 0.0]])
        self.clock.advance(3599.0)
        self.assertEqual(store.remaining("k"), 1.0)
        self.assertEqual(svc.failures, 0)
        self.successResultOf(svc.stopService())

    def test_failing_flush_is_logged_and_retried(self):
        """A flush that fails is logged and counted, its charges are kept,
        and the timer keeps running."""
        store = self.open(map_size=64 * 1024)
        svc = self.service(store, flush_interval=1.0)
        svc.startService()
        for i in range(1000):
            store.charge(f"key-{i}", 1.0)
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertEqual(svc.failures, 2)
        self.assertEqual(len(self.flushLoggedErrors(lmdb.MapFullError)), 2)
        self.assertTrue(svc._flush_loop.running)
        self.assertEqual(store.remaining("key-3"), 3999.0)
        self.successResultOf(svc.stopService())
        self.assertEqual(svc.failures, 3)
        self.assertEqual(len(self.flushLoggedErrors(lmdb.MapFullError)), 1)
        self.assertTrue(store.closed)

    def test_stop_flushes_and_closes(self):
        """stopService writes the last charges and closes the store."""
        store = self.open()
        svc = self.service(store)
        svc.startService()
        store.charge("k", 2.0)
        self.successResultOf(svc.stopService())
        self.assertTrue(store.closed)
        self.assertFalse(svc.running)
        self.assertEqual(self.open().remaining("k"), 3998.0)


class QuotaServiceThreadTests(StoreMixin, TestCase):
    @inlineCallbacks
    def test_flush_in_a_thread_pool(self):
        """With a real thread pool, a flush tick writes the charges from a
        worker thread and installs the fresh view."""
        pool = ThreadPool(1, 1, name="quota-test")
        pool.start()
        self.addCleanup(pool.stop)
        store = self.open(clock=reactor)
        svc = QuotaService(store, reactor, threadpool=pool, flush_interval=60.0)
        yield svc.startService()
        store.charge("k", 3.0)
        yield svc.flush_tick()
        self.assertEqual(store.summary(), [["k", 3997.0]])
        self.assertEqual(store.remaining("k"), 3997.0)
        yield svc.stopService()
        self.assertTrue(store.closed)
