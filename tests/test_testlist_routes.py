"""
Prioritised test lists over a real server (api-routes.md sections 8 and
12.8), and the in-memory prioritisation that keeps them fresh.
"""

import csv
import datetime
import io
import json
import os

from twisted.internet import reactor, task
from twisted.trial import unittest

from ooni_twisted.testlists import rules
from ooni_twisted.testlists.live import LivePriorities, load

from .support import DATA, deferred_test, make_config, start_server
from .test_probe_routes import load_test_lists

METADATA = {"count": 1, "current_page": -1, "limit": -1, "next_url": "", "pages": 1}
GLOBAL_ENTRIES = 1467
US_ENTRIES = 47


async def list_server(testcase):
    server = await start_server(testcase, make_config(os.path.abspath(testcase.mktemp())))
    await server.clickhouse.run(load_test_lists)
    await server.context.priorities.refresh()
    return server


async def eventually(check, timeout=15.0):
    """
    Run C{check} until it returns a true value or C{timeout} seconds pass;
    return its last value.
    """
    deadline = reactor.seconds() + timeout
    while True:
        value = await check()
        if value or reactor.seconds() > deadline:
            return value
        await task.deferLater(reactor, 0.1, lambda: None)


def fastpath_rows(url, cc, asn, count, anomaly="f"):
    when = datetime.datetime.utcnow().replace(microsecond=0) - datetime.timedelta(hours=1)
    return [
        (f"uid{cc}{asn}{i}", f"rid{cc}{asn}{i}", url, cc, asn, "web_connectivity", when, when, anomaly)
        for i in range(count)
    ]


FASTPATH_COLUMNS = [
    "measurement_uid",
    "report_id",
    "input",
    "probe_cc",
    "probe_asn",
    "test_name",
    "measurement_start_time",
    "test_start_time",
    "anomaly",
]


class TestListUrlsTests(unittest.TestCase):
    @deferred_test
    async def test_urls(self):
        """test-list/urls filters by category and country and honours the limit."""
        server = await list_server(self)
        response, body = await server.client.get(
            "/api/v1/test-list/urls?category_codes=NEWS&limit=1"
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["max-age=1"])
        self.assertEqual(body["metadata"], METADATA)
        self.assertEqual(len(body["results"]), 1)
        self.assertEqual(body["results"][0]["category_code"], "NEWS")
        self.assertEqual(sorted(body["results"][0]), ["category_code", "country_code", "url"])

        _, body = await server.client.get(
            "/api/v1/test-list/urls?category_codes=news,%20CULTR,&country_code=US&limit=1"
        )
        self.assertEqual(len(body["results"]), 1)
        self.assertIn(body["results"][0]["category_code"], ("NEWS", "CULTR"))

        _, body = await server.client.get("/api/v1/test-list/urls")
        self.assertEqual(body["metadata"]["count"], GLOBAL_ENTRIES)
        self.assertEqual({r["country_code"] for r in body["results"]}, {"XX"})

        _, body = await server.client.get("/api/v1/test-list/urls?probe_cc=us&limit=-1&debug=1")
        results = body["results"]
        self.assertEqual(len(results), GLOBAL_ENTRIES + US_ENTRIES)
        self.assertEqual({r["country_code"] for r in results}, {"XX", "US"})
        self.assertEqual(
            sorted(results[0]),
            ["category_code", "country_code", "msmt_cnt", "priority", "url", "weight"],
        )
        weights = [r["weight"] for r in results]
        self.assertEqual(weights, sorted(weights, reverse=True))

        for limit in ("0", "-5"):
            _, body = await server.client.get(f"/api/v1/test-list/urls?limit={limit}")
            self.assertEqual(body["metadata"]["count"], 1)  # reference quirk

        for query in ("limit=abc", "limit=99999999999999999999", "country_code=%ff"):
            response, body = await server.client.get(f"/api/v1/test-list/urls?{query}")
            self.assertEqual((response.code, body), (200, {}), query)
            self.assertEqual(response.headers.getRawHeaders("cache-control"), ["max-age=0"])

    @deferred_test
    async def test_rule_changes_show(self):
        """Rules imported into the live table change the lists within seconds."""
        server = await list_server(self)
        news_only = [{"category_code": "NEWS", "cc": "*", "domain": "*", "url": "*", "priority": 5}]
        await server.clickhouse.run(rules.replace_rules, news_only)

        async def only_news():
            _, body = await server.client.get("/api/v1/test-list/urls?country_code=US")
            return {r["category_code"] for r in body["results"]} == {"NEWS"} and body

        body = await eventually(only_news)
        self.assertTrue(body)
        us_news = [r["url"] for r in body["results"] if r["country_code"] == "US"]
        self.assertTrue(us_news)

        # a strong rule for one US URL puts it first for US, not elsewhere
        target = us_news[-1]
        boosted = news_only + [
            {"category_code": "*", "cc": "US", "domain": "*", "url": target, "priority": 1000}
        ]
        await server.clickhouse.run(rules.replace_rules, boosted)

        async def target_first():
            _, body = await server.client.get("/api/v1/test-list/urls?country_code=US&limit=1")
            return body["results"][0]["url"] == target

        self.assertTrue(await eventually(target_first))
        _, body = await server.client.get("/api/v1/test-list/urls?country_code=IT")
        self.assertNotIn(target, [r["url"] for r in body["results"]])

        # check-in uses the same snapshot
        _, body = await server.client.post(
            "/api/v1/check-in", {"probe_cc": "US", "probe_asn": "AS1", "charging": False}
        )
        self.assertEqual(body["tests"]["web_connectivity"]["urls"][0]["url"], target)

    @deferred_test
    async def test_counts_show(self):
        """Measurements counted for a network push its URL down within seconds."""
        server = await list_server(self)
        url = "http://thehill.com/"
        one_rule = [{"category_code": "NEWS", "cc": "US", "domain": "*", "url": "*", "priority": 10}]
        await server.clickhouse.run(rules.replace_rules, one_rule)
        await server.context.priorities.refresh()
        await server.clickhouse.insert("fastpath", FASTPATH_COLUMNS, fastpath_rows(url, "US", 1234, 3))

        async def counted():
            _, body = await server.client.get(
                "/api/_/debug_prioritization?probe_cc=US&probe_asn=AS1234&limit=9999"
            )
            found = [e for e in body["entries"] if e["url"] == url and e["cc"] == "us"]
            return found and found[0]["msmt_cnt"] == 3 and body

        body = await eventually(counted)
        self.assertTrue(body)
        items = [i for i in body["test_items"] if i["url"] == url and i["country_code"] == "US"]
        self.assertEqual((items[0]["priority"], items[0]["msmt_cnt"]), (10, 3))
        self.assertAlmostEqual(items[0]["weight"], 10 / 3)
        self.assertEqual(body["test_items"][-1]["url"], url)  # measured: last
        # other networks do not see those counts
        _, body = await server.client.post(
            "/api/v1/check-in",
            {"probe_cc": "US", "probe_asn": "AS99", "run_type": "manual"},
        )
        urls = body["tests"]["web_connectivity"]["urls"]
        self.assertNotEqual(urls[-1]["url"], url)
        _, body = await server.client.post(
            "/api/v1/check-in",
            {"probe_cc": "US", "probe_asn": "AS1234", "run_type": "manual"},
        )
        self.assertEqual(body["tests"]["web_connectivity"]["urls"][-1]["url"], url)


    @deferred_test
    async def test_submission_counts_show(self):
        """A submitted web_connectivity measurement is counted for its network within seconds."""
        server = await list_server(self)
        url = "http://thehill.com/"
        _, opened = await server.client.post(
            "/report", {"probe_cc": "US", "probe_asn": "AS4321", "test_name": "web_connectivity"}
        )
        now = datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M:%S")
        measurement = {
            "report_id": opened["report_id"],
            "input": url,
            "probe_cc": "US",
            "probe_asn": "AS4321",
            "test_name": "web_connectivity",
            "test_start_time": now,
            "measurement_start_time": now,
            "software_name": "ooniprobe",
            "software_version": "3.0.0",
            "test_keys": {"blocking": False, "accessible": True},
        }
        response, body = await server.client.post(
            f"/report/{opened['report_id']}", {"format": "json", "content": measurement}
        )
        self.assertIn("measurement_uid", body)

        async def counted():
            _, body = await server.client.get(
                "/api/_/debug_prioritization?probe_cc=US&probe_asn=4321&limit=9999"
            )
            return [e["msmt_cnt"] for e in body["entries"] if e["url"] == url] == [1]

        self.assertTrue(await eventually(counted, timeout=10))


class DebugRoutesTests(unittest.TestCase):
    @deferred_test
    async def test_debug_prioritization(self):
        """debug_prioritization shows entries, rules and items; bad parameters are 400."""
        server = await list_server(self)
        response, body = await server.client.get("/api/_/debug_prioritization?probe_cc=us")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["max-age=0"])
        self.assertEqual(sorted(body), ["entries", "prio_rules", "test_items"])
        self.assertEqual(len(body["entries"]), GLOBAL_ENTRIES + US_ENTRIES)
        self.assertEqual(
            sorted(body["entries"][0]), ["category_code", "cc", "domain", "msmt_cnt", "url"]
        )
        self.assertEqual(len(body["prio_rules"]), 31)  # the seeded defaults
        self.assertEqual(len(body["test_items"]), 1)  # limit absent -> -1
        _, body = await server.client.get(
            "/api/_/debug_prioritization?probe_cc=US&probe_asn=1234&category_codes=GRP&limit=5"
        )
        self.assertEqual(len(body["test_items"]), 5)
        self.assertEqual({i["category_code"] for i in body["test_items"]}, {"GRP"})
        for query in ("probe_asn=ASX", "limit=x"):
            response, body = await server.client.get(f"/api/_/debug_prioritization?{query}")
            self.assertEqual(response.code, 400, query)
            self.assertIn("error", body)

    @deferred_test
    async def test_show_countries_prioritization(self):
        """show_countries_prioritization lists every entry with last week's counts, as JSON or CSV."""
        server = await list_server(self)
        url = "http://thehill.com/"
        await server.clickhouse.insert(
            "fastpath",
            FASTPATH_COLUMNS,
            fastpath_rows(url, "US", 5, 2, anomaly="t")
            + fastpath_rows(url, "US", 6, 2)
            + fastpath_rows("https://www.reddit.com/", "IT", 7, 2),
        )
        response, body = await server.client.get("/api/_/show_countries_prioritization")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["max-age=1"])
        self.assertEqual(len(body), GLOBAL_ENTRIES + US_ENTRIES)
        keys = ["anomaly_perc", "category_code", "cc", "domain", "msmt_cnt", "priority", "url"]
        self.assertTrue(all(sorted(item) == keys for item in body))
        order = [(item["cc"], -item["priority"]) for item in body]
        self.assertEqual(order, sorted(order))
        self.assertEqual({item["cc"] for item in body}, {"US", "ZZ"})
        hill = [i for i in body if i["url"] == url and i["cc"] == "US"]
        self.assertEqual((hill[0]["msmt_cnt"], hill[0]["anomaly_perc"]), (4, 50))
        # global entries are joined on cc ZZ, so Italian counts do not show there
        reddit = [i for i in body if i["url"] == "https://www.reddit.com/"]
        self.assertEqual([(i["cc"], i["msmt_cnt"], i["anomaly_perc"]) for i in reddit], [("ZZ", 0, 0)])

        response, _ = await server.client.get("/api/_/show_countries_prioritization?format=csv")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/csv"])
        self.assertIsNone(response.headers.getRawHeaders("cache-control"))
        rows = list(csv.reader(io.StringIO(response.body.decode())))
        self.assertEqual(rows[0], keys)
        self.assertEqual(len(rows), 1 + GLOBAL_ENTRIES + US_ENTRIES)


class LivePrioritiesTests(unittest.TestCase):
    @deferred_test
    async def test_failover(self):
        """While the database fails, test-list/urls samples the global list and check-in keeps its list."""
        server = await list_server(self)
        live = server.context.priorities
        await server.clickhouse.execute("RENAME TABLE url_priorities TO url_priorities_away")
        live.stale_after = 1.0

        async def failing():
            return live.failures > 0 and not live.fresh()

        self.assertTrue(await eventually(failing))
        for _ in range(3):
            _, body = await server.client.get(
                "/api/v1/test-list/urls?country_code=US&category_codes=NEWS&limit=7"
            )
            self.assertEqual(body["metadata"]["count"], 7)
            self.assertEqual({r["country_code"] for r in body["results"]}, {"XX"})
            self.assertEqual({r["category_code"] for r in body["results"]}, {"NEWS"})
        _, body = await server.client.post(
            "/api/v1/check-in", {"probe_cc": "US", "probe_asn": "AS1"}
        )
        self.assertEqual(len(body["tests"]["web_connectivity"]["urls"]), 100)

        await server.clickhouse.execute("RENAME TABLE url_priorities_away TO url_priorities")

        async def recovered():
            _, body = await server.client.get("/api/v1/test-list/urls?country_code=US")
            return body["metadata"]["count"] == GLOBAL_ENTRIES + US_ENTRIES

        self.assertTrue(await eventually(recovered))
        self.flushLoggedErrors()

    @deferred_test
    async def test_load_reuses_unchanged_inputs(self):
        """A refresh with nothing new keeps the snapshot; new counts alone keep its lists."""
        server = await list_server(self)
        first = await server.clickhouse.run(load, None)
        again = await server.clickhouse.run(load, first)
        self.assertIs(again, first)
        await server.clickhouse.insert(
            "fastpath", FASTPATH_COLUMNS, fastpath_rows("http://thehill.com/", "US", 7, 1)
        )
        counted = await server.clickhouse.run(load, first)
        self.assertIsNot(counted, first)
        self.assertIs(counted.snapshot._lists, first.snapshot._lists)
        self.assertEqual(counted.counters, {("US", 7, "http://thehill.com/"): 1})

    @deferred_test
    async def test_admin_command_refreshes(self):
        """An admin command run in the server reloads the snapshot without waiting for the timer."""
        server = await list_server(self)
        live = LivePriorities(server.clickhouse, reactor, interval=3600)
        await live.start()
        self.assertEqual(live.refreshes, 1)
        with open(DATA.child("url_priorities_us.json").path) as f:
            imported = json.load(f)
        await server.clickhouse.run(rules.replace_rules, imported)
        live.admin_command("import-url-priorities")

        async def refreshed():
            return live.refreshes == 2

        self.assertTrue(await eventually(refreshed))
        self.assertEqual(len(live.snapshot.rules), len(imported))
