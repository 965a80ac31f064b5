"""Tests for ooni_twisted.testlists.prioritization (api-routes.md §8)."""

import csv
import json
import os
import random
import time
from urllib.parse import urlsplit

from twisted.trial.unittest import SynchronousTestCase

from ooni_twisted.testlists.prioritization import (
    DEFAULT_RULES,
    PrioritySnapshot,
    compute_priorities,
    failover_test_list,
    generate_test_list,
    match_rule,
    rules_for_country,
)

DATA = os.path.join(os.path.dirname(__file__), "data")


def load_rules():
    with open(os.path.join(DATA, "url_priorities_us.json")) as f:
        return json.load(f)


def load_citizenlab():
    """Rows of the global (cc ZZ) and US (cc us) test lists, as in the citizenlab table."""
    rows = []
    for cc, name in (("ZZ", "global"), ("us", "us")):
        with open(os.path.join(DATA, "test-lists", "lists", name + ".csv")) as f:
            for line in csv.DictReader(f):
                rows.append(
                    {
                        "domain": urlsplit(line["url"]).hostname,
                        "url": line["url"],
                        "cc": cc,
                        "category_code": line["category_code"],
                    }
                )
    return rows


def rule(category_code="*", cc="*", domain="*", url="*", priority=0):
    return dict(category_code=category_code, cc=cc, domain=domain, url=url, priority=priority)


def entry(category_code, domain, url, cc, msmt_cnt=0):
    return dict(category_code=category_code, domain=domain, url=url, cc=cc, msmt_cnt=msmt_cnt)


HIDDEN_WIKI = entry("MISC", "thehiddenwiki.org", "https://thehiddenwiki.org/", "ZZ", 38)


class MatchRuleTests(SynchronousTestCase):
    def test_spec_example(self):
        """The hidden wiki global entry matches the MISC wildcard rule and the MISC/US rule."""
        self.assertTrue(match_rule(HIDDEN_WIKI, rule("MISC", priority=20)))
        self.assertTrue(match_rule(HIDDEN_WIKI, rule("MISC", cc="US", priority=-200)))

    def test_mismatches(self):
        """A differing category, domain or url makes the rule not match."""
        self.assertFalse(match_rule(HIDDEN_WIKI, rule("NEWS")))
        self.assertFalse(match_rule(HIDDEN_WIKI, rule(domain="example.org")))
        self.assertFalse(match_rule(HIDDEN_WIKI, rule(url="https://thehiddenwiki.org/x")))

    def test_wildcards(self):
        """`*` and the empty string both mean any."""
        self.assertTrue(match_rule(HIDDEN_WIKI, rule("", "", "", "")))
        self.assertTrue(
            match_rule(
                HIDDEN_WIKI,
                rule("MISC", "*", "thehiddenwiki.org", "https://thehiddenwiki.org/"),
            )
        )

    def test_country_entries(self):
        """Country entries match rules of their own cc (any case) or `*`, not others."""
        us = entry("NEWS", "a.org", "https://a.org/", "US")
        self.assertTrue(match_rule(us, rule(cc="US")))
        self.assertTrue(match_rule(us, rule(cc="*")))
        self.assertFalse(match_rule(us, rule(cc="IE")))
        lower = entry("NEWS", "a.org", "https://a.org/", "us")
        self.assertTrue(match_rule(lower, rule(cc="US")))
        self.assertTrue(match_rule(entry("NEWS", "a", "u", "US"), rule(cc="us")))

    def test_global_entries_match_any_cc(self):
        """Global entries accept rules of any cc."""
        self.assertTrue(match_rule(HIDDEN_WIKI, rule(cc="IE")))


class ComputePrioritiesTests(SynchronousTestCase):
    def test_spec_example(self):
        """With the US rules the hidden wiki gets priority -180 and weight -180/38."""
        (out,) = compute_priorities([HIDDEN_WIKI], load_rules())
        self.assertEqual(out["priority"], -180)
        self.assertEqual(out["weight"], -4.7368421052631575)
        self.assertEqual(out["msmt_cnt"], 38)
        self.assertEqual(out["url"], "https://thehiddenwiki.org/")

    def test_unmeasured_weight(self):
        """An unmeasured entry is weighted as if it had 0.1 measurements."""
        (out,) = compute_priorities([entry("NEWS", "a", "u", "ZZ", 0)], [rule("NEWS", priority=3)])
        self.assertEqual(out["weight"], 3 / 0.1)

    def test_no_rule_means_zero(self):
        """An entry no rule matches has priority 0 and weight 0."""
        (out,) = compute_priorities([entry("XYZ", "a", "u", "ZZ", 5)], DEFAULT_RULES)
        self.assertEqual((out["priority"], out["weight"]), (0, 0))

    def test_sorted_by_weight_stable(self):
        """Output is by weight descending; equal weights keep input order."""
        rules = [rule("NEWS", priority=100), rule("GAME", priority=20)]
        entries = [
            entry("GAME", "g", "g1", "ZZ", 0),
            entry("NEWS", "n", "n1", "ZZ", 10),
            entry("NEWS", "n", "n2", "ZZ", 0),
            entry("NEWS", "n", "n3", "ZZ", 10),
            entry("GAME", "g", "g2", "ZZ", 2),
        ]
        out = compute_priorities(entries, rules)
        self.assertEqual([e["url"] for e in out], ["n2", "g1", "n1", "n3", "g2"])
        self.assertNotIn("priority", entries[0])  # inputs untouched


class GenerateTestListTests(SynchronousTestCase):
    rules = [
        rule("NEWS", priority=100),
        rule("MISC", priority=20),
        rule("MISC", cc="US", priority=-200),
    ]
    entries = [
        entry("NEWS", "a.org", "https://a.org/", "ZZ", 5),
        entry("MISC", "b.org", "https://b.org/", "ZZ", 0),
        entry("NEWS", "c.org", "https://c.org/", "us", 1),
        entry("GAME", "d.org", "https://d.org/", "ZZ", 0),
    ]

    def test_items(self):
        """Non-positive priorities are dropped; global entries get XX, others their cc."""
        result = generate_test_list(self.entries, self.rules, [], 100, False)
        self.assertEqual(
            result.items,
            [
                {"category_code": "NEWS", "url": "https://c.org/", "country_code": "US"},
                {"category_code": "NEWS", "url": "https://a.org/", "country_code": "XX"},
            ],
        )
        self.assertEqual((result.entries, result.rules), ([], []))

    def test_rules_filtered_by_country(self):
        """With country_code, rules of other countries do not touch global entries."""
        with_us = generate_test_list(self.entries, self.rules, ["MISC"], 100, False, "US")
        self.assertEqual(with_us.items, [])
        for_it = generate_test_list(self.entries, self.rules, ["MISC"], 100, False, "IT")
        self.assertEqual([i["url"] for i in for_it.items], ["https://b.org/"])

    def test_category_filter(self):
        """Only the requested categories are listed."""
        result = generate_test_list(self.entries, self.rules, {"MISC"}, 100, False, "IT")
        self.assertEqual([i["category_code"] for i in result.items], ["MISC"])

    def test_limit(self):
        """The list stops at limit items."""
        result = generate_test_list(self.entries, self.rules, (), 1, False)
        self.assertEqual(len(result.items), 1)

    def test_limit_zero_or_negative_yields_one(self):
        """A limit <= 0 still yields one item (reference quirk)."""
        for limit in (0, -1, -50):
            result = generate_test_list(self.entries, self.rules, (), limit, False)
            self.assertEqual(len(result.items), 1, limit)

    def test_debug(self):
        """Debug adds msmt_cnt, priority, weight and returns the raw entries and rules."""
        result = generate_test_list(self.entries, self.rules, (), 100, True, "US")
        self.assertEqual(
            result.items[0],
            {
                "category_code": "NEWS",
                "url": "https://c.org/",
                "country_code": "US",
                "msmt_cnt": 1,
                "priority": 100,
                "weight": 100.0,
            },
        )
        self.assertEqual(result.entries, self.entries)
        self.assertEqual(result.rules, self.rules)

    def test_real_data_only_xx_or_us(self):
        """On the US lists every item is XX or US, and the hidden wiki is left out."""
        rows = load_citizenlab()
        entries = [dict(row, msmt_cnt=0) for row in rows]
        items = generate_test_list(entries, load_rules(), (), 9999, False, "US").items
        self.assertGreater(len(items), 1000)
        self.assertEqual({i["country_code"] for i in items}, {"XX", "US"})
        self.assertNotIn("https://thehiddenwiki.org/", [i["url"] for i in items])


class RulesForCountryTests(SynchronousTestCase):
    def test_filter(self):
        """A country uses its own rules (any case) and the wildcard ones."""
        rules = [rule(cc="*"), rule(cc=""), rule(cc="US"), rule(cc="us"), rule(cc="IE")]
        self.assertEqual(rules_for_country(rules, "us"), rules[:4])


class DefaultRulesTests(SynchronousTestCase):
    def test_values(self):
        """The defaults are 31 wildcard rules with the §8.7 priorities."""
        self.assertEqual(len(DEFAULT_RULES), 31)
        by_code = {r["category_code"]: r["priority"] for r in DEFAULT_RULES}
        self.assertEqual(len(by_code), 31)
        self.assertEqual(
            (by_code["NEWS"], by_code["GRP"], by_code["MMED"], by_code["REL"], by_code["FILE"]),
            (100, 100, 80, 60, 40),
        )
        self.assertEqual((by_code["DATE"], by_code["CTRL"], by_code["MISC"]), (30, 20, 20))
        for r in DEFAULT_RULES:
            self.assertEqual((r["cc"], r["domain"], r["url"]), ("*", "*", "*"))


class FailoverTests(SynchronousTestCase):
    def test_sample(self):
        """Failover samples distinct global entries of the requested categories, all XX."""
        rows = load_citizenlab()
        items = failover_test_list(rows, ["NEWS", "GRP"], 30, random.Random(4))
        self.assertEqual(len(items), 30)
        self.assertEqual(len({i["url"] for i in items}), 30)
        self.assertEqual({i["country_code"] for i in items}, {"XX"})
        self.assertTrue({i["category_code"] for i in items} <= {"NEWS", "GRP"})
        global_urls = {r["url"] for r in rows if r["cc"] == "ZZ"}
        self.assertTrue({i["url"] for i in items} <= global_urls)

    def test_deterministic_with_seeded_rng(self):
        """The same seed gives the same sample."""
        rows = load_citizenlab()
        a = failover_test_list(rows, (), 10, random.Random(1))
        b = failover_test_list(rows, (), 10, random.Random(1))
        self.assertEqual(a, b)

    def test_limit_bounds(self):
        """The sample is capped by the candidates and empty for a limit <= 0."""
        rows = [dict(r) for r in load_citizenlab()[:5]]
        self.assertEqual(len(failover_test_list(rows, (), 9999, random.Random())), 5)
        self.assertEqual(failover_test_list(rows, (), 0, random.Random()), [])
        self.assertEqual(failover_test_list(rows, (), -1, random.Random()), [])
        self.assertEqual(failover_test_list(rows, ["NOPE"], 5, random.Random()), [])


class PrioritySnapshotTests(SynchronousTestCase):
    def setUp(self):
        self.rows = load_citizenlab()
        self.rules = load_rules() + [rule("NEWS", cc="IE", priority=-100)]
        rng = random.Random(7)
        urls = [r["url"] for r in self.rows]
        self.counters = {}
        for cc, asns in (("US", range(1, 40)), ("IE", (5, 6))):
            for asn in asns:
                for url in rng.sample(urls, rng.choice([3, 40, 400, 1500])):
                    self.counters[(cc, asn, url)] = rng.randint(1, 60)
        self.snapshot = PrioritySnapshot(self.rows, self.rules, self.counters)

    def reference(self, cc, asn, categories, limit, debug=False):
        return generate_test_list(
            self.snapshot.entries_for(cc, asn),
            self.rules,
            categories,
            limit,
            debug,
            country_code=cc,
        )

    def test_entries_for_counts(self):
        """Candidates are the global and country rows with counts per ASN, or summed for ASN 0."""
        entries = self.snapshot.entries_for("US", 3)
        self.assertEqual(len(entries), len(self.rows))
        for e in entries:
            self.assertEqual(e["msmt_cnt"], self.counters.get(("US", 3, e["url"]), 0))
        summed = {}
        for (cc, _, url), count in self.counters.items():
            if cc == "US":
                summed[url] = summed.get(url, 0) + count
        for e in self.snapshot.entries_for("us", 0):
            self.assertEqual(e["msmt_cnt"], summed.get(e["url"], 0))

    def test_other_country_gets_global_only(self):
        """A country without its own list gets only the global rows."""
        entries = self.snapshot.entries_for("IT", 0)
        self.assertEqual({e["cc"] for e in entries}, {"ZZ"})
        self.assertEqual(len(entries), sum(r["cc"] == "ZZ" for r in self.rows))

    def test_same_as_generate_test_list(self):
        """The fast path gives exactly generate_test_list's items for many networks and filters."""
        networks = [
            ("US", 0), ("US", 1), ("US", 2), ("US", 7), ("US", 999), ("us", 3),
            ("IE", 0), ("IE", 5), ("IE", 6), ("IT", 0), ("IT", 5), ("ZZ", 0),
        ]
        for cc, asn in networks:
            for categories in ((), ("NEWS",), ("MISC", "GRP", "XED")):
                # one slow run per network; shorter limits are its prefixes
                slow = self.reference(cc, asn, categories, 9999).items
                for limit in (9999, 100, 20, 1, 0, -1):
                    fast = self.snapshot.generate(cc, asn, categories, limit)
                    self.assertEqual(
                        fast.items, slow[: max(limit, 1)], (cc, asn, categories, limit)
                    )
        # repeated calls (cached orders) stay the same
        self.assertEqual(
            self.snapshot.generate("US", 7, (), 9999).items,
            self.reference("US", 7, (), 9999).items,
        )

    def test_debug_output(self):
        """Debug mode returns weighted items and the raw entries and country rules."""
        result = self.snapshot.generate("US", 2, (), 5, debug=True)
        self.assertEqual(result, self.reference("US", 2, (), 5, debug=True))
        self.assertEqual(
            set(result.items[0]),
            {"category_code", "url", "country_code", "msmt_cnt", "priority", "weight"},
        )
        self.assertNotIn("IE", {r["cc"] for r in result.rules})

    def test_measured_urls_sink(self):
        """A URL measured often in a network moves below unmeasured ones of the same priority."""
        first = self.snapshot.generate("IT", 0, ("NEWS",), 1).items[0]["url"]
        snapshot = self.snapshot.with_counters({("IT", 33, first): 1000})
        urls = [i["url"] for i in snapshot.generate("IT", 33, ("NEWS",), 9999).items]
        self.assertEqual(urls[-1], first)
        self.assertEqual(snapshot.generate("IT", 34, ("NEWS",), 1).items[0]["url"], first)

    def test_with_counters_keeps_rows_and_rules(self):
        """with_counters makes a new snapshot; the old one is unchanged."""
        fresh = self.snapshot.with_counters({})
        before = self.snapshot.generate("US", 3, (), 50).items
        self.assertEqual(fresh.entries_for("US", 3)[0]["msmt_cnt"], 0)
        self.assertEqual(fresh.rules, self.snapshot.rules)
        self.assertEqual(self.snapshot.generate("US", 3, (), 50).items, before)

    def test_explicit_cc_counters(self):
        """Given per-country sums are used for ASN 0 instead of derived ones."""
        url = "https://www.reddit.com/"
        snapshot = PrioritySnapshot(self.rows, self.rules, {}, {("US", url): 12})
        counts = {e["url"]: e["msmt_cnt"] for e in snapshot.entries_for("US", 0)}
        self.assertEqual(counts[url], 12)
        self.assertEqual(snapshot.entries_for("US", 5)[0]["msmt_cnt"], 0)

    def test_inputs_copied(self):
        """Changing the caller's rows or rules later does not change the snapshot."""
        rows = [dict(r) for r in self.rows]
        rules = [dict(r) for r in self.rules]
        snapshot = PrioritySnapshot(rows, rules, {})
        before = snapshot.generate("US", 0, (), 30).items
        for r in rules:
            r["priority"] = -1
        rows[0]["url"] = "https://changed.example/"
        self.assertEqual(snapshot.generate("US", 0, (), 30).items, before)

    def test_default_rules(self):
        """With the default rules every non-empty list entry has positive priority."""
        snapshot = PrioritySnapshot(self.rows, DEFAULT_RULES, {})
        items = snapshot.generate("DE", 3320, (), 9999).items
        self.assertGreater(len(items), 1000)
        self.assertEqual(items[0]["country_code"], "XX")

    def test_failover(self):
        """The snapshot's failover samples its global list."""
        items = self.snapshot.failover(("NEWS",), 5, random.Random(3))
        self.assertEqual(len(items), 5)
        self.assertEqual({(i["category_code"], i["country_code"]) for i in items}, {("NEWS", "XX")})

    def test_check_in_rate(self):
        """2,000 check-in lists (limit 100, many networks) take well under a second."""
        networks = [("US", asn) for asn in range(0, 45)] + [("IT", 0), ("IE", 5), ("BR", 28573)]
        for cc, asn in networks:  # first call per network builds its cached order
            self.snapshot.generate(cc, asn, (), 100)
        started = time.perf_counter()
        for n in range(2000):
            cc, asn = networks[n % len(networks)]
            self.snapshot.generate(cc, asn, (), 100)
        self.assertLess(time.perf_counter() - started, 1.0)
