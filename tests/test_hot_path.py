"""
The fast paths of check-in and routing give exactly what the plain code
gives: report ids made in bulk, check-in answers encoded from templates,
test lists cached in the snapshot, routing answers looked up in a table.
"""

import json
import random
from datetime import datetime, timedelta, timezone

from klein import Klein
from twisted.trial.unittest import SynchronousTestCase
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ooni_twisted.app import ApiResource
from ooni_twisted.probes.checkin import (
    CHECKIN_V1_TESTS,
    CHECKIN_V2_NETTESTS,
    CheckinEncoder,
    build_checkin_v1,
    build_checkin_v2,
)
from ooni_twisted.probes.ids import new_report_id, new_report_ids
from ooni_twisted.testlists import prioritization
from ooni_twisted.testlists.prioritization import PrioritySnapshot, generate_test_list
from ooni_twisted.web.jsonenc import dumps

from .test_prioritization import load_citizenlab, load_rules

NOW = datetime(2023, 9, 27, 10, 0, 0, 123456)


class Stream:
    """A deterministic rand(n): the next n bytes of a seeded stream."""

    def __init__(self, seed):
        self._rng = random.Random(seed)
        self.calls = 0

    def __call__(self, n):
        self.calls += 1
        return bytes(self._rng.getrandbits(8) for _ in range(n))


class NewReportIdsTests(SynchronousTestCase):
    def test_same_as_one_by_one(self):
        """Bulk ids equal new_report_id calls reading the same random stream in order."""
        names = list(CHECKIN_V2_NETTESTS) + ["Web_Connectivity_", "x"]
        for cc, asn, cid, now in (
            ("IT", 30722, "1", NOW),
            ("ZZ", 0, "ams-pg", NOW.replace(tzinfo=timezone.utc)),
            ("US", "7922", "7", datetime(2021, 1, 1, 3, 4, 5, tzinfo=timezone(timedelta(hours=5)))),
        ):
            bulk = new_report_ids(names, cc, asn, cid, now, Stream(1))
            stream = Stream(1)
            single = [new_report_id(n, cc, asn, cid, now, stream) for n in names]
            self.assertEqual(bulk, single)

    def test_one_rand_call(self):
        """All random parts come from one rand call, and the real ones all differ."""
        stream = Stream(2)
        new_report_ids(CHECKIN_V1_TESTS, "IT", 1, "1", NOW, stream)
        self.assertEqual(stream.calls, 1)
        ids = new_report_ids(CHECKIN_V1_TESTS, "IT", 1, "1", NOW)
        self.assertEqual(len({i[-16:] for i in ids}), len(CHECKIN_V1_TESTS))
        self.assertEqual(new_report_ids((), "IT", 1, "1", NOW), [])


URLS = [
    {"category_code": "NEWS", "country_code": "XX", "url": "https://a.org/"},
    {"category_code": "GRP", "country_code": "US", "url": "https://b.org/p?q=\"x\"&r=\\"},
    {"category_code": "MISC", "country_code": "XX", "url": "https://ü.example/%20é\u2028"},
]


class CheckinEncoderTests(SynchronousTestCase):
    def setUp(self):
        self.encoder = CheckinEncoder(max_lists=3)

    def assertSameBytes(self, geo, cc, asn, urls, client_ip, cid="1", now=NOW):
        for encode, build in (
            (self.encoder.v1, build_checkin_v1),
            (self.encoder.v2, build_checkin_v2),
        ):
            fast = encode(geo, cc, asn, urls, client_ip, cid, now, Stream(3))
            plain = dumps(build(geo, cc, asn, urls, client_ip, cid, now, Stream(3)))
            self.assertEqual(fast, plain, (build.__name__, geo, cc, urls, client_ip, cid))
            json.loads(fast)

    def test_client_addresses(self):
        """Every helper rotation and feature flag of the client address encodes identically."""
        for ip in (
            "1.2.3.4", "1.2.3.10", "1.2.3.11", "1.2.3.12", "1.2.3.13",
            "10.34.0.1", "10.239.7.7", "::ffff:10.34.0.1", "2001:34::1", "::1",
            "bogus", "", None,
        ):
            self.assertSameBytes(("US", "AS2149", "COGENT-2149"), "US", 2149, URLS, ip)

    def test_odd_values(self):
        """Unknown, non-ASCII and quoting-prone values encode as the generic encoder does."""
        self.assertSameBytes(("ZZ", "AS0", None), "ZZ", 0, URLS, "1.2.3.4")
        self.assertSameBytes(("DE", "AS3320", "Deutsche Telekom AG \u00e4\"\\"), "DE", 3320, [], "1.2.3.4")
        self.assertSameBytes(("A\"", "AS1", "x%sy"), "A\"", 1, URLS, "1.2.3.4", cid="c%d\\")
        aware = NOW.replace(tzinfo=timezone(timedelta(hours=-7)))
        self.assertSameBytes(("IT", "AS1", "n"), "IT", 1, URLS, "1.2.3.4", now=aware)

    def test_url_lists(self):
        """Items with other keys or types, tuples and empty lists fall back to the generic encoding."""
        debug_items = [dict(u, priority=3, weight=1.5) for u in URLS]
        for urls in (
            [], URLS, tuple(URLS), debug_items, [{"category_code": "N", "country_code": None, "url": "u"}],
        ):
            self.assertSameBytes(("US", "AS1", "n"), "US", 1, urls, "1.2.3.4")

    def test_remembered_lists(self):
        """Lists reused, and more lists than are remembered, still encode identically."""
        lists = [[dict(URLS[n % 3], url="https://%d.example/" % n)] for n in range(8)]
        for _ in range(2):
            for urls in lists:
                self.assertSameBytes(("US", "AS1", "n"), "US", 1, urls, "1.2.3.4")
        self.assertEqual(len(self.encoder._urls_v1), 3)
        self.assertEqual(len(self.encoder._urls_v2), 3)

    def test_remembered_size_bound(self):
        """Remembered JSON stays within its character budget; larger lists are not kept."""
        self.encoder = CheckinEncoder(max_chars=2000)
        small = [dict(URLS[0], url="https://%d.example/" % n) for n in range(5)]
        large = [dict(URLS[0], url="https://%d.example/" % n) for n in range(100)]
        for n in range(20):
            urls = large if n % 4 == 0 else [dict(u) for u in small]
            self.assertSameBytes(("US", "AS1", "n"), "US", 1, urls, "1.2.3.4")
            for remembered in (self.encoder._urls_v1, self.encoder._urls_v2):
                self.assertLessEqual(remembered.chars, 2000)
                self.assertEqual(id(urls) in remembered._by_id, urls is not large)

    def test_real_lists(self):
        """Lists from a snapshot of the real test lists encode identically."""
        snapshot = PrioritySnapshot(load_citizenlab(), load_rules(), {})
        for cc, categories, limit in (("US", (), 100), ("IT", ("NEWS",), 9999), ("DE", (), 20)):
            urls = snapshot.generate(cc, 0, categories, limit).items
            self.assertSameBytes((cc, "AS1", "n"), cc, 1, urls, "1.2.3.4")


class SnapshotCacheTests(SynchronousTestCase):
    def setUp(self):
        self.rows = load_citizenlab()
        self.rules = load_rules()
        urls = [r["url"] for r in self.rows]
        rng = random.Random(5)
        self.counters = {("US", 7, url): rng.randint(1, 50) for url in rng.sample(urls, 300)}
        self.snapshot = PrioritySnapshot(self.rows, self.rules, self.counters)
        self.references = {}

    def reference(self, cc, asn, categories):
        """The full list; shorter limits give its prefixes."""
        key = (cc, asn, frozenset(categories))
        if key not in self.references:
            self.references[key] = generate_test_list(
                self.snapshot.entries_for(cc, asn), self.rules, categories, 9999, False,
                country_code=cc,
            ).items
        return self.references[key]

    def check(self, snapshot=None):
        snapshot = snapshot or self.snapshot
        for cc, asn in (("US", 7), ("US", 8), ("us", 0), ("IT", 0), ("FR", 12), ("ZZ", 0)):
            for categories in ((), ("NEWS",), ["NEWS", "GRP"], ("GRP", "NEWS"), "NEWS"):
                full = self.reference(cc, asn, categories)
                for limit in (20, 100, 9999, 0):
                    self.assertEqual(
                        snapshot.generate(cc, asn, categories, limit).items,
                        full[: max(limit, 1)],
                        (cc, asn, categories, limit),
                    )

    def test_repeated_calls(self):
        """Cached lists, asked again in any order of categories, equal the reference."""
        self.check()
        self.check()

    def test_cache_bound(self):
        """With a tiny cache bound the lists stay right and the cache stays small."""
        self.patch(prioritization, "_MAX_CACHED_LISTS", 2)
        snapshot = PrioritySnapshot(self.rows, self.rules, self.counters)
        self.check(snapshot)
        self.assertLessEqual(len(snapshot._results), 2)

    def test_refresh_not_stale(self):
        """A snapshot with new counters gives its own lists, not the old snapshot's."""
        before = self.snapshot.generate("US", 7, (), 9999).items
        first = before[0]["url"]
        fresh = self.snapshot.with_counters({("US", 7, first): 10**6})
        self.assertEqual(fresh.generate("US", 7, (), 9999).items[-1]["url"], first)
        self.assertEqual(self.snapshot.generate("US", 7, (), 9999).items, before)


class Feature:
    def __init__(self, app):
        self.app = app


def _features():
    first, second, third = Klein(), Klein(), Klein()

    @first.route("/a", methods=["GET"])
    def a_get(request):
        return b"first"

    @first.route("/items/<name>", methods=["GET"])
    def item(request, name):
        return b"item"

    @first.route("/dir/", methods=["GET"])
    def directory(request):
        return b"dir"

    @second.route("/a", methods=["POST"])
    def a_post(request):
        return b"second"

    @second.route("/items/special", methods=["GET", "DELETE"])
    def special(request):
        return b"special"

    @second.route("/only-put", methods=["PUT"])
    def only_put(request):
        return b"put"

    @third.route("/", branch=True)
    def pages(request):
        return b"pages"

    return [Feature(first), Feature(second), Feature(third)]


class Request:
    def __init__(self, method, path):
        self.method = method
        self.path = path


class RoutingTableTests(SynchronousTestCase):
    def setUp(self):
        self.features = _features()
        self.resource = ApiResource(self.features[:2])
        self.resources = [resource for _, resource in self.resource._routes]

    def find(self, method, path, resource=None):
        return (resource or self.resource)._find(Request(method, path))

    def test_table_agrees_with_matching(self):
        """Every looked-up answer is what matching the maps in order gives."""
        self.assertTrue(self.resource._literal)
        for (path, method), answer in self.resource._literal.items():
            matched = self.resource._match(path, method)
            self.assertIs(answer[0], matched[0], (path, method))
            self.assertEqual(type(answer[1]), type(matched[1]), (path, method))

    def test_first_feature_wins(self):
        """A literal path is routed to the first feature that has it for the method."""
        first, second = self.resources
        self.assertEqual(self.find(b"GET", b"/a"), (first, None))
        self.assertEqual(self.find(b"POST", b"/a"), (second, None))
        # an earlier feature's converter rule shadows a later literal rule
        self.assertEqual(self.find(b"GET", b"/items/special"), (first, None))
        self.assertEqual(self.find(b"DELETE", b"/items/special"), (second, None))
        self.assertEqual(self.find(b"GET", b"/items/other"), (first, None))
        # percent-encoded literal paths are the same path
        self.assertEqual(self.find(b"GET", b"/%61"), (first, None))

    def test_errors(self):
        """Other methods are 405 with the allowed ones; unknown and undecodable paths 404."""
        resource, error = self.find(b"PUT", b"/a")
        self.assertIsNone(resource)
        self.assertIsInstance(error, MethodNotAllowed)
        self.assertEqual(set(error.valid_methods), {"GET", "HEAD"})
        resource, error = self.find(b"BREW", b"/a")
        self.assertIsInstance(error, MethodNotAllowed)
        resource, error = self.find(b"GET", b"/only-put")
        self.assertEqual(set(error.valid_methods), {"PUT"})
        for path in (b"/nothing", b"/a/b", b"/%ff"):
            resource, error = self.find(b"GET", path)
            self.assertIsNone(resource)
            self.assertIsInstance(error, NotFound, path)

    def test_redirect_goes_to_feature(self):
        """A path only a redirect matches (missing trailing slash) goes to that feature."""
        first, _ = self.resources
        self.assertEqual(self.find(b"GET", b"/dir"), (first, None))
        self.assertEqual(self.find(b"GET", b"/dir/"), (first, None))

    def test_catch_all_last(self):
        """With a catch-all feature last, only paths no earlier feature has reach it;
        a path an earlier feature serves under other methods is a 405."""
        resource = ApiResource(self.features)
        first, second, pages = [r for _, r in resource._routes]
        self.assertIs(self.find(b"GET", b"/a", resource)[0], first)
        self.assertIs(self.find(b"POST", b"/a", resource)[0], second)
        found, error = self.find(b"PUT", b"/a", resource)
        self.assertIsNone(found)
        self.assertIsInstance(error, MethodNotAllowed)
        self.assertIs(self.find(b"GET", b"/elsewhere", resource)[0], pages)
