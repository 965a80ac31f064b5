"""
GET /api/v1/measurements against the 1080 real fastpath rows of tests/data:
every filter, ordering, paging (offset and keyset cursor), the defaults of
the time window, the spec's errors, and database time limits.
"""

import datetime
import time
from urllib.parse import parse_qsl, urlsplit

from twisted.internet import defer, task
from twisted.trial import unittest

from ooni_twisted.measurements import search
from ooni_twisted.storage.clickhouse import ChdbBackend, ClickHouse
from ooni_twisted.web.errors import ApiError
from ooni_twisted.web.params import QueryArgs

from .support import deferred_test, start_server
from .test_measurement_fixtures import fastpath_rows, quiet_config, seed_citizenlab, seed_fastpath

WINDOW = "since=2020-01-01&until=2026-01-01"
BASE = "https://api.ooni.io"


def ts(text):
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S")


def expected(rows, predicate, order_by="measurement_start_time", order="desc"):
    """
    The uids the route should list, in its order, by plain Python.
    """
    chosen = [r for r in rows if predicate(r)]
    reverse = order == "desc"

    def key(r):
        value = r[order_by]
        value = ts(value) if order_by.endswith("_time") else value
        if order_by == "measurement_start_time":
            return (value, r["report_id"], r["input"])  # the table's sorting key
        return (value, r["measurement_uid"])

    return [r["measurement_uid"] for r in sorted(chosen, key=key, reverse=reverse)]


def uids(body):
    return [r["measurement_uid"] for r in body["results"]]


class SearchTests(unittest.TestCase):
    async def server(self, **config):
        server = await start_server(self, quiet_config(self, base_url=BASE, **config))
        self.rows = fastpath_rows()
        await seed_fastpath(server, self.rows)
        return server

    async def get(self, server, query, status=200):
        response, body = await server.client.get("/api/v1/measurements?" + query)
        self.assertEqual(response.code, status, (query, response.body))
        return body

    @deferred_test
    async def test_result_shape(self):
        """A search by report_id and input gives the 12-key result of section 12.2."""
        server = await self.server()
        row = next(r for r in self.rows if r["input"] and r["anomaly"] == "t")
        response, body = await server.client.get(
            f"/api/v1/measurements?report_id={row['report_id']}&input={row['input']}"
        )
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["max-age=60"])
        self.assertEqual(body["metadata"]["count"], 1)
        result = body["results"][0]
        self.assertEqual(
            result,
            {
                "anomaly": True,
                "confirmed": row["confirmed"] == "t",
                "failure": row["msm_failure"] == "t",
                "input": row["input"],
                "measurement_start_time": row["measurement_start_time"].replace(" ", "T") + "Z",
                "measurement_uid": row["measurement_uid"],
                "measurement_url": f"{BASE}/api/v1/raw_measurement?measurement_uid="
                + row["measurement_uid"],
                "probe_asn": f"AS{row['probe_asn']}",
                "probe_cc": row["probe_cc"],
                "report_id": row["report_id"],
                "scores": __import__("json").loads(row["scores"]),
                "test_name": row["test_name"],
            },
        )
        no_input = next(r for r in self.rows if r["input"] == "")
        body = await self.get(server, f"report_id={no_input['report_id']}")
        self.assertIn(None, [r["input"] for r in body["results"]])

    @deferred_test
    async def test_each_filter(self):
        """Every filter of the spec selects exactly the rows it names."""
        server = await self.server()
        rows = self.rows
        in_window = lambda r: "2020-01-01" < r["measurement_start_time"] <= "2026-01-01"  # noqa
        sample = next(r for r in rows if r["domain"] and r["probe_cc"] == "US")
        cases = [
            ("probe_cc=IT", lambda r: r["probe_cc"] == "IT"),
            ("probe_asn=AS30722", lambda r: r["probe_asn"] == 30722),
            ("probe_asn=30722", lambda r: r["probe_asn"] == 30722),
            ("test_name=dnscheck", lambda r: r["test_name"] == "dnscheck"),
            (f"domain={sample['domain']}", lambda r: r["domain"] == sample["domain"]),
            (f"input={sample['input']}", lambda r: r["input"] == sample["input"]),
            # input wins over domain
            (f"input={sample['input']}&domain=nothing.example.org",
             lambda r: r["input"] == sample["input"]),
            ("anomaly=true", lambda r: r["anomaly"] == "t"),
            ("anomaly=false", lambda r: r["anomaly"] == "f"),
            ("confirmed=TRUE", lambda r: r["confirmed"] == "t"),
            ("confirmed=no", lambda r: r["confirmed"] == "f"),
            ("failure=true", lambda r: r["msm_failure"] == "t"),
            ("failure=false", lambda r: r["msm_failure"] == "f"),
            ("anomaly=true&confirmed=true&failure=false",
             lambda r: (r["anomaly"], r["confirmed"], r["msm_failure"]) == ("t", "t", "f")),
            ("software_version=3.19.0", lambda r: r["software_version"] == "3.19.0"),
            ("software_version=3.19.0,3.20.0,3.19.0",
             lambda r: r["software_version"] in ("3.19.0", "3.20.0")),
            ("software_version=", lambda r: True),
            ("software_version=9.9.9", lambda r: False),
            ("test_version=0.4.2", lambda r: r["test_version"] == "0.4.2"),
            ("engine_version=3.19.0,3.18.1",
             lambda r: r["engine_version"] in ("3.19.0", "3.18.1")),
            ("test_name=not_a_test", lambda r: False),
        ]
        empty = ("software_version=9.9.9", "test_name=not_a_test")
        for query, predicate in cases:
            body = await self.get(server, f"{query}&{WINDOW}&limit=2000")
            want = expected(rows, lambda r: in_window(r) and predicate(r))
            self.assertEqual(uids(body), want, query)
            self.assertEqual(want == [], query in empty, query)

    @deferred_test
    async def test_time_bounds(self):
        """since is exclusive, until inclusive, on measurement_start_time."""
        server = await self.server()
        row = self.rows[500]
        moment = row["measurement_start_time"]
        day = moment.replace(" ", "T")
        body = await self.get(server, f"since={day}&until={day}&limit=2000")
        self.assertEqual(uids(body), [])
        body = await self.get(server, f"since=2000-01-01&until={day}&limit=2000")
        self.assertIn(row["measurement_uid"], uids(body))
        self.assertTrue(all(r["measurement_start_time"] <= day + "Z" for r in body["results"]))
        body = await self.get(server, f"since={day}&until=2030-01-01&limit=2000")
        self.assertNotIn(row["measurement_uid"], uids(body))
        self.assertEqual(
            uids(body),
            expected(self.rows, lambda r: r["measurement_start_time"] > moment),
        )
        # other date spellings of the lenient parser
        for since in ("20240101", "2024-1-1", "2024-01-01 00:00:00"):
            body = await self.get(server, f"since={since}&until=2024-01-01T00:10:00&limit=2000")
            self.assertEqual(
                uids(body),
                expected(self.rows, lambda r: "2024-01-01 00:00:00" < r["measurement_start_time"]
                         <= "2024-01-01 00:10:00"),
                since,
            )

    @deferred_test
    async def test_extreme_and_fractional_dates(self):
        """Fractional seconds and dates outside the column's range are answered, not 500."""
        server = await self.server()
        body = await self.get(server, "since=2024-01-01T00:00:00.9&until=2024-01-01T00:10:00.5"
                                      "&limit=2000")
        self.assertEqual(
            uids(body),
            expected(self.rows, lambda r: "2024-01-01 00:00:00" < r["measurement_start_time"]
                     <= "2024-01-01 00:10:00"),
        )
        body = await self.get(server, "since=0001-01-01&until=9999-12-31&limit=2000")
        self.assertEqual(len(body["results"]), len(self.rows))
        for query in ("until=0001-01-05", "since=9999-01-01", "until=1900-01-01"):
            body = await self.get(server, query)
            self.assertEqual(body["results"], [], query)
        response, _ = await server.client.get("/api/v1/files?since=0001-01-01T00:00:00.5")
        self.assertEqual(response.code, 200)
        response, _ = await server.client.get("/api/v1/torsf_stats?until=0002-01-01T00:00:00.5")
        self.assertEqual(response.code, 200)

    @deferred_test
    async def test_category_code(self):
        """category_code keeps the rows whose input is a citizenlab URL of that category."""
        server = await self.server()
        urls = sorted({r["input"] for r in self.rows if r["input"].startswith("http")})
        news, other = urls[:3], urls[3:5]
        await seed_citizenlab(
            server,
            [(u, "ZZ", "NEWS") for u in news] + [(news[0], "it", "NEWS")]
            + [(u, "ZZ", "POLR") for u in other],
        )
        body = await self.get(server, f"category_code=NEWS&{WINDOW}&limit=2000")
        self.assertEqual(uids(body), expected(self.rows, lambda r: r["input"] in news))
        body = await self.get(server, f"category_code=NEWS&input={other[0]}&{WINDOW}")
        self.assertEqual(uids(body), expected(self.rows, lambda r: r["input"] == other[0]))

    @deferred_test
    async def test_default_window_and_hidden_rows(self):
        """Without report_id the window is the 30 days before tomorrow; ZZ and AS0 never show."""
        server = await self.server()
        now = datetime.datetime.utcnow().replace(microsecond=0)
        template = dict(self.rows[0])
        made = {}
        for name, delta, cc, asn in (
            ("recent", datetime.timedelta(days=-1), "IT", 3269),
            ("old", datetime.timedelta(days=-40), "IT", 3269),
            ("future", datetime.timedelta(days=3), "IT", 3269),
            ("zz", datetime.timedelta(hours=-2), "ZZ", 3269),
            ("as0", datetime.timedelta(hours=-3), "IT", 0),
        ):
            row = dict(template)
            row.update(
                measurement_uid=f"{name}-uid-000000000000",
                report_id=f"20990101T000000Z_webconnectivity_{cc}_{asn}_n1_{name}xxxxxxxxxxx",
                probe_cc=cc,
                probe_asn=asn,
                measurement_start_time=(now + delta).strftime("%Y-%m-%d %H:%M:%S"),
            )
            made[name] = row
        await seed_fastpath(server, made.values())
        body = await self.get(server, "limit=2000")
        self.assertEqual(uids(body), [made["recent"]["measurement_uid"]])
        # with report_id there is no implicit window
        old = made["old"]
        body = await self.get(server, f"report_id={old['report_id']}")
        self.assertEqual(uids(body), [old["measurement_uid"]])
        for name in ("zz", "as0"):
            body = await self.get(server, f"report_id={made[name]['report_id']}")
            self.assertEqual(uids(body), [], name)

    @deferred_test
    async def test_ordering(self):
        """order_by over each whitelisted column, asc and desc, sorts as the spec says."""
        server = await self.server()
        for order_by in search.ORDERABLE:
            for order in ("asc", "DESC"):
                body = await self.get(
                    server, f"probe_cc=US&{WINDOW}&order_by={order_by}&order={order}&limit=2000"
                )
                want = expected(
                    self.rows, lambda r: r["probe_cc"] == "US", order_by, order.lower()
                )
                self.assertTrue(want)
                self.assertEqual(uids(body), want, (order_by, order))
        body = await self.get(server, f"{WINDOW}")
        self.assertEqual(len(body["results"]), 100)
        self.assertEqual(uids(body), expected(self.rows, lambda r: True)[:100])

    @deferred_test
    async def test_paging_by_offset(self):
        """Pages carry count/pages -1 and next_url until a short page gives the totals."""
        server = await self.server()
        want = expected(self.rows, lambda r: r["test_name"] == "web_connectivity"
                        and r["probe_cc"] == "US")
        total = len(want)
        limit = 25
        query = f"test_name=web_connectivity&probe_cc=US&{WINDOW}&limit={limit}"
        seen = []
        url = "/api/v1/measurements?" + query
        pages = 0
        while url:
            response, body = await server.client.get(url.replace(BASE, ""))
            meta = body["metadata"]
            self.assertEqual(meta["current_page"], pages + 1)
            self.assertEqual(meta["offset"], pages * limit)
            seen.extend(uids(body))
            pages += 1
            url = meta["next_url"]
            if url:
                self.assertEqual((meta["count"], meta["pages"]), (-1, -1))
                parts = urlsplit(url)
                self.assertEqual(f"{parts.scheme}://{parts.netloc}{parts.path}",
                                 f"{BASE}/api/v1/measurements")
                pairs = parse_qsl(parts.query)
                self.assertEqual([k for k, _ in pairs],
                                 ["test_name", "probe_cc", "since", "until", "limit", "offset"])
                self.assertEqual(dict(pairs)["offset"], str(pages * limit))
            else:
                self.assertEqual(meta["count"], total)
                self.assertEqual(meta["pages"], -(-total // limit))
        self.assertEqual(seen, want)
        # a page past the end, as the 4th page of the reference's 300-row example
        body = await self.get(server, f"{query}&offset={limit * pages + limit}")
        self.assertEqual(body["results"], [])
        self.assertEqual(body["metadata"]["count"], limit * pages + limit)
        # offset and limit appended when absent: offset first, then limit
        body = await self.get(server, f"probe_cc=US&{WINDOW}")
        self.assertTrue(body["metadata"]["next_url"].endswith("&offset=100&limit=100"))

    @deferred_test
    async def test_unknown_test_name_metadata(self):
        """An empty result has exactly the reference's metadata values."""
        server = await self.server()
        body = await self.get(server, "test_name=nothing")
        body["metadata"].pop("query_time")
        self.assertEqual(
            body,
            {"metadata": {"count": 0, "current_page": 1, "limit": 100, "next_url": None,
                          "offset": 0, "pages": 0},
             "results": []},
        )

    @deferred_test
    async def test_same_query_same_answer(self):
        """The same paged query three times gives identical answers."""
        server = await self.server()
        answers = []
        for _ in range(3):
            body = await self.get(server, f"probe_cc=BR&{WINDOW}&limit=10&offset=10")
            body["metadata"].pop("query_time")
            answers.append(body)
        self.assertEqual(answers[0], answers[1])
        self.assertEqual(answers[1], answers[2])

    @deferred_test
    async def test_cursor_paging(self):
        """Following next_cursor walks the same rows as offset paging, in every order."""
        server = await self.server()
        for order_by, order in (("measurement_start_time", "desc"), ("probe_asn", "asc"),
                                ("input", "desc"), ("test_start_time", "asc")):
            base = f"{WINDOW}&order_by={order_by}&order={order}&limit=97"
            want = expected(self.rows, lambda r: True, order_by, order)
            got = []
            body = await self.get(server, base)
            got.extend(uids(body))
            while "next_cursor" in body["metadata"]:
                cursor = body["metadata"]["next_cursor"]
                offset = len(got)
                body = await self.get(server, f"{base}&cursor={cursor}")
                self.assertEqual(body["metadata"]["offset"], offset)
                self.assertEqual(body["metadata"]["current_page"], offset // 97 + 1)
                got.extend(uids(body))
                if body["metadata"]["next_url"]:
                    next_pairs = dict(parse_qsl(urlsplit(body["metadata"]["next_url"]).query))
                    self.assertEqual(next_pairs["cursor"], body["metadata"]["next_cursor"])
            self.assertEqual(got, want, order_by)
            self.assertEqual(body["metadata"]["count"], len(want))
        # a deep page by cursor equals the same page by offset
        first = await self.get(server, f"{WINDOW}&limit=500")
        deep_cursor = await self.get(
            server, f"{WINDOW}&limit=100&cursor={first['metadata']['next_cursor']}"
        )
        deep_offset = await self.get(server, f"{WINDOW}&limit=100&offset=500")
        self.assertEqual(deep_cursor["results"], deep_offset["results"])

    @deferred_test
    async def test_errors(self):
        """Bad parameters get the spec's status and a JSON error message."""
        server = await self.server()
        cases = [
            ("probe_cc=ZZ", 403),
            ("probe_asn=AS0", 403),
            ("probe_asn=0", 403),
            ("probe_asn=ASX", 400),
            ("probe_asn=as123", 400),
            ("order=sideways", 400),
            ("order_by=report_id", 400),
            ("order_by=measurement_start_time%3B%20DROP%20TABLE%20fastpath", 400),
            ("since=yesterday", 400),
            ("until=2021-13-45", 400),
            ("limit=0", 400),
            ("limit=-5", 400),
            ("limit=abc", 400),
            ("limit=99999999999999999999", 400),
            ("offset=-1", 400),
            ("offset=1.5", 400),
            ("report_id=BOGUS", 400),
            ("report_id=20210709T004340Z_web+connectivity_MY", 400),
            ("cursor=not-a-cursor", 400),
        ]
        for query, status in cases:
            response, body = await server.client.get("/api/v1/measurements?" + query)
            self.assertEqual(response.code, status, query)
            self.assertIsInstance(body, dict, query)
            self.assertTrue(body.get("error"), query)
            self.assertEqual(response.headers.getRawHeaders("access-control-allow-origin"), ["*"])
        _, body = await server.client.get("/api/v1/measurements?order=sideways")
        self.assertEqual(body, {"error": "Invalid order"})
        _, body = await server.client.get("/api/v1/measurements?report_id=BOGUS")
        self.assertIn("Invalid report_id", body["error"])
        # a cursor made for another order is refused
        first = await self.get(server, f"{WINDOW}&limit=5")
        cursor = first["metadata"]["next_cursor"]
        response, _ = await server.client.get(
            f"/api/v1/measurements?{WINDOW}&limit=5&order=asc&cursor={cursor}"
        )
        self.assertEqual(response.code, 400)
        # the table survived the injection attempt
        self.assertEqual(len((await self.get(server, f"{WINDOW}&limit=5"))["results"]), 5)

    @deferred_test
    async def test_okhttp(self):
        """okhttp clients get the fixed no-cache answer with one empty result."""
        server = await self.server()
        response, body = await server.client.get(
            "/api/v1/measurements?probe_cc=IT", headers={"User-Agent": "okhttp/3.12"}
        )
        self.assertEqual(body, search.OKHTTP_ANSWER)
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["max-age=0, no-cache"])
        # and a cached answer for others is not what okhttp gets
        await self.get(server, "probe_cc=IT")
        response, body = await server.client.get(
            "/api/v1/measurements?probe_cc=IT", headers={"User-Agent": "okhttp/3.12"}
        )
        self.assertEqual(len(body["results"]), 1)

    @deferred_test
    async def test_busy_pool_answers_504(self):
        """When the database cannot answer within query_timeout, the client gets 504, not a hang."""
        server = await start_server(
            self, quiet_config(self, query_timeout="0.3", clickhouse_threads="1")
        )
        blocked = server.clickhouse.run(lambda backend: time.sleep(2.0))
        started = time.monotonic()
        response, body = await server.client.get("/api/v1/measurements?probe_cc=IT")
        self.assertEqual(response.code, 504)
        self.assertEqual(body, {"error": search.TIMEOUT_MESSAGE})
        self.assertLess(time.monotonic() - started, 1.9)
        await blocked


class ParseTests(unittest.SynchronousTestCase):
    NOW = datetime.datetime(2024, 5, 17, 13, 45)

    def parse(self, query):
        return search.parse_search(QueryArgs({k.encode(): [v.encode()] for k, v in
                                              parse_qsl(query, keep_blank_values=True)}),
                                   self.NOW)

    def test_window_defaults(self):
        """until defaults to tomorrow midnight and since to 30 days before it."""
        s = self.parse("")
        self.assertEqual(s.until, datetime.datetime(2024, 5, 18))
        self.assertEqual(s.since, datetime.datetime(2024, 4, 18))
        s = self.parse("until=2024-01-10")
        self.assertEqual(s.since, datetime.datetime(2023, 12, 11))
        s = self.parse("report_id=20210709T004340Z_webconnectivity_MY_4818_n1_YCM7J9mGcEHds2K3")
        self.assertEqual((s.since, s.until), (None, None))

    def test_values_are_bound(self):
        """Every user value reaches SQL as a bound parameter, never as text."""
        s = self.parse("probe_cc=IT'--&test_name=x'&domain=a'b&category_code=N'&"
                       "software_version=1',2")
        sql, params = search.search_sql(s)
        self.assertNotIn("'--", sql)
        self.assertNotIn("a'b", sql)
        self.assertEqual(params["probe_cc"], "IT'--")
        self.assertEqual(params["software_versions"], ["1'", "2"])

    def test_cursor_round_trip(self):
        """A cursor decodes to what was encoded; tampered cursors are 400."""
        cursor = search.Cursor("measurement_start_time", "desc", 200,
                               (datetime.datetime(2024, 1, 1, 0, 0, 1), "rid", "é"))
        self.assertEqual(search.Cursor.decode(cursor.encode()), cursor)
        other = search.Cursor("probe_asn", "asc", 5, (30722, "uid"))
        self.assertEqual(search.Cursor.decode(other.encode()), other)
        import base64
        import json as jsonlib

        def forge(payload):
            return base64.urlsafe_b64encode(jsonlib.dumps(payload).encode()).decode()

        for bad in ("", "!!!", "W10", cursor.encode()[:-3],
                    forge([2, "probe_asn", "asc", 5, ["30722", "uid"]]),
                    forge([2, "probe_asn", "asc", -1, [1, "uid"]]),
                    forge([2, "report_id", "asc", 0, ["a", "b"]]),
                    forge([2, "input", "up", 0, ["a", "b"]]),
                    forge([2, "input", "asc", 0, ["a"]]),
                    forge([2, "measurement_start_time", "asc", 0, ["yesterday", "a", "b"]]),
                    forge({"a": 1})):
            with self.assertRaises(ApiError, msg=bad):
                search.Cursor.decode(bad)

    def test_keyset_condition(self):
        """The keyset condition nests the tie-breakers after a range on the first column."""
        params = {}
        sql = search.keyset_condition(
            search.sort_key("measurement_start_time"),
            (datetime.datetime(2024, 1, 1, 0, 0, 1, 5), "r", "i"), "desc", params,
        )
        self.assertEqual(
            sql,
            "measurement_start_time <= {after_0:DateTime} AND "
            "(measurement_start_time < {after_0:DateTime} OR "
            "(measurement_start_time = {after_0:DateTime} AND "
            "(report_id < {after_1:String} OR (report_id = {after_1:String} AND "
            "input < {after_2:String}))))",
        )
        self.assertEqual(params, {"after_0": datetime.datetime(2024, 1, 1, 0, 0, 1),
                                  "after_1": "r", "after_2": "i"})


class GuardTests(unittest.TestCase):
    def test_reactor_side_limit(self):
        """A database answer that never comes becomes a 504 after the limit."""
        clock = task.Clock()
        d = defer.ensureDeferred(search.guarded(defer.Deferred(), clock, 5))
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        failure = self.failureResultOf(d, ApiError)
        self.assertEqual(failure.value.status, 504)

    @deferred_test
    async def test_clickhouse_time_limit(self):
        """A query stopped by ClickHouse's max_execution_time is a 504."""
        from twisted.internet import reactor
        from twisted.python.threadpool import ThreadPool

        pool = ThreadPool(1, 1)
        pool.start()
        self.addCleanup(pool.stop)
        backend = ChdbBackend(self.mktemp(), max_execution_time=0.2)
        self.addCleanup(backend.close)
        db = ClickHouse(backend, reactor, pool)
        started = time.monotonic()
        with self.assertRaises(ApiError) as raised:
            await search.guarded(
                db.query("SELECT sleepEachRow(0.01) FROM numbers(1000) "
                         "SETTINGS max_block_size = 10"),
                reactor, 10,
            )
        self.assertEqual(raised.exception.status, 504)
        self.assertLess(time.monotonic() - started, 2)
