"""
The legacy listing GET /api/v1/files (api-routes.md section 13.1) over the
real fastpath rows, and GET /files/download/<path> (section 13.2): paging
through every archived file and downloading each one.
"""

import datetime
import gzip
from urllib.parse import parse_qsl, urlsplit

from twisted.trial import unittest

from ooni_twisted.measurements.files import uid_index

from .support import deferred_test, start_server
from .test_measurement_fixtures import (
    archive_batch,
    fastpath_row_for,
    fastpath_rows,
    new_uid,
    quiet_config,
    seed_fastpath,
    uid_parts,
    usable_measurements,
)

BASE = "https://api.example.org"
RESULT_KEYS = {"download_url", "index", "probe_asn", "probe_cc", "test_name", "test_start_time"}


def reports(rows, predicate=lambda r: True):
    """
    report_id -> (first test_start_time, min uid, cc, asn, test_name) by Python.
    """
    out = {}
    for r in rows:
        if r["probe_cc"] == "ZZ" or r["probe_asn"] == 0 or not predicate(r):
            continue
        rid = r["report_id"]
        start = datetime.datetime.strptime(r["test_start_time"], "%Y-%m-%d %H:%M:%S")
        prev = out.get(rid)
        if prev is None:
            out[rid] = [start, r["measurement_uid"], r["probe_cc"], r["probe_asn"], r["test_name"]]
        else:
            prev[0] = min(prev[0], start)
            prev[1] = min(prev[1], r["measurement_uid"])
    return out


class ListingTests(unittest.TestCase):
    async def start(self):
        server = await start_server(self, quiet_config(self, base_url=BASE))
        self.rows = fastpath_rows()
        await seed_fastpath(server, self.rows)
        return server

    async def get(self, server, query, status=200):
        response, body = await server.client.get("/api/v1/files?" + query)
        self.assertEqual(response.code, status, (query, response.body))
        return body

    @deferred_test
    async def test_listing_shape_and_order(self):
        """Each report appears once with the six v1 keys, newest test_start_time first."""
        server = await self.start()
        want = reports(self.rows)
        body = await self.get(server, "limit=10000")
        meta = body["metadata"]
        self.assertEqual(meta, {"count": len(want), "current_page": 1, "limit": 10000,
                                "next_url": None, "offset": 0, "pages": 1})
        results = body["results"]
        self.assertEqual(len(results), len(want))
        for result in results:
            self.assertEqual(set(result), RESULT_KEYS)
        by_rid = {}
        for result in results:
            rid = urlsplit(result["download_url"]).query.split("=", 1)[1]
            by_rid[rid] = result
        self.assertEqual(set(by_rid), set(want))
        for rid, (start, uid, cc, asn, test_name) in want.items():
            result = by_rid[rid]
            self.assertEqual(result["test_start_time"], start.strftime("%Y-%m-%dT%H:%M:%SZ"))
            self.assertEqual(result["index"], uid_index(uid, start))
            self.assertEqual((result["probe_cc"], result["probe_asn"], result["test_name"]),
                             (cc, f"AS{asn}", test_name))
            self.assertEqual(result["download_url"],
                             f"{BASE}/api/v1/raw_measurement?report_id={rid}")
        keys = [(r["test_start_time"], r["index"]) for r in results]
        self.assertEqual(keys, sorted(keys, reverse=True))

    @deferred_test
    async def test_filters(self):
        """probe_cc (any case), probe_asn, test_name, since/until and since_index filter reports."""
        server = await self.start()

        async def rids(query):
            body = await self.get(server, query + "&limit=10000")
            self.assertEqual(body["metadata"]["count"], len(body["results"]))
            return {urlsplit(r["download_url"]).query.split("=", 1)[1] for r in body["results"]}

        self.assertEqual(await rids("probe_cc=it"),
                         set(reports(self.rows, lambda r: r["probe_cc"] == "IT")))
        for asn in ("AS30722", "30722"):
            found = await rids(f"probe_asn={asn}")
            self.assertEqual(found, set(reports(self.rows, lambda r: r["probe_asn"] == 30722)))
        self.assertEqual(await rids("test_name=dnscheck"),
                         set(reports(self.rows, lambda r: r["test_name"] == "dnscheck")))
        all_reports = reports(self.rows)
        since, until = datetime.datetime(2024, 1, 1), datetime.datetime(2024, 1, 15)
        self.assertEqual(
            await rids("since=2024-01-01T00:00:00&until=2024-01-15"),
            {rid for rid, v in all_reports.items() if since < v[0] <= until},
        )
        indexes = sorted(uid_index(v[1], v[0]) for v in all_reports.values())
        middle = indexes[len(indexes) // 2]
        found = await rids(f"since_index={middle}")
        self.assertEqual(len(found), len([i for i in indexes if i > middle]))
        body = await self.get(server, "probe_asn=AS30722&limit=1")
        self.assertEqual(body["results"][0]["probe_asn"], "AS30722")

    @deferred_test
    async def test_ordering(self):
        """order_by and order sort the reports; index, idx and report_no are synonyms."""
        server = await self.start()
        for order_by, key in (("probe_cc", "probe_cc"), ("probe_asn", None),
                              ("test_name", "test_name"), ("index", "index")):
            for order in ("asc", "desc"):
                body = await self.get(server, f"order_by={order_by}&order={order}&limit=10000")
                if key is None:
                    values = [int(r["probe_asn"][2:]) for r in body["results"]]
                else:
                    values = [r[key] for r in body["results"]]
                self.assertEqual(values, sorted(values, reverse=order == "desc"), order_by)
        by_index = await self.get(server, "order_by=index&order=asc&limit=10000")
        for synonym in ("idx", "report_no"):
            body = await self.get(server, f"order_by={synonym}&order=asc&limit=10000")
            self.assertEqual(body, by_index)

    @deferred_test
    async def test_paging_metadata(self):
        """Paging follows v1: exact count, pages, current_page and next_url."""
        server = await self.start()
        total = len(reports(self.rows))
        body = await self.get(server, "limit=1&since=2021-01-01&until=2026-01-01")
        meta = body["metadata"]
        self.assertEqual((meta["count"], meta["pages"], meta["current_page"]), (total, total, 1))
        self.assertEqual(
            meta["next_url"],
            f"{BASE}/api/v1/files?limit=1&since=2021-01-01&until=2026-01-01&offset=1",
        )
        body = await self.get(server, "limit=100&offset=200")
        meta = body["metadata"]
        self.assertEqual(meta["current_page"], 3)
        self.assertEqual(len(body["results"]), total - 200)
        self.assertIsNone(meta["next_url"])
        body = await self.get(server, "probe_cc=XX")
        self.assertEqual(body["metadata"], {"count": 0, "current_page": 1, "limit": 100,
                                            "next_url": None, "offset": 0, "pages": 0})

    @deferred_test
    async def test_errors(self):
        """Bad parameters answer the v1 error shape with status 400."""
        server = await self.start()
        for query in ("order=INVALID", "order_by=INVALID", "since=notadate", "until=2021-99-99",
                      "probe_asn=ASX", "limit=0", "offset=-1", "limit=x", "since_index=abc",
                      "probe_cc=ITA"):
            body = await self.get(server, query, 400)
            self.assertEqual(set(body), {"error_code", "error_message"}, query)
            self.assertEqual(body["error_code"], 400)
            self.assertTrue(body["error_message"])
        body = await self.get(server, "order=INVALID", 400)
        self.assertEqual(body["error_message"], "Invalid order")


class DownloadTests(unittest.TestCase):
    @deferred_test
    async def test_every_archived_file_downloads(self):
        """Paging through the listing reaches every archived file, and each download_url serves it."""
        server = await start_server(self, quiet_config(self))
        archive = server.context.archive
        received = datetime.datetime(2024, 2, 3, 4, 5, 6)
        items = []
        for i, (line, m) in enumerate(usable_measurements()):
            cc, testname = uid_parts(m["report_id"])
            uid = new_uid(received + datetime.timedelta(minutes=i), cc, testname, line)
            items.append((uid, line, m))
        await seed_fastpath(server, [fastpath_row_for(m, uid) for uid, _, m in items])
        # one object per report, the last report left unarchived
        paths = {}
        by_report = {}
        for uid, line, m in items:
            by_report.setdefault(m["report_id"], []).append((uid, line))
        report_ids = sorted(by_report)
        for n, rid in enumerate(report_ids[:-1]):
            paths[rid] = await archive_batch(server, archive, by_report[rid], received, batch=n)
        unarchived = report_ids[-1]

        seen = {}
        url = "/api/v1/files?limit=3"
        while url:
            response, body = await server.client.get(url)
            self.assertEqual(response.code, 200)
            for result in body["results"]:
                seen[result["download_url"]] = result
            url = body["metadata"]["next_url"]
            if url:
                self.assertTrue(url.startswith(server.config.base_url + "/api/v1/files?"))
                url = url.replace(server.config.base_url, server.test_url)
        self.assertEqual(len(seen), len(report_ids))
        for rid, s3path in paths.items():
            download = f"{server.config.base_url}/files/download/{s3path}"
            self.assertIn(download, seen)
            response, _ = await server.client.get(download.replace(server.config.base_url,
                                                                   server.test_url))
            self.assertEqual(response.code, 200, download)
            self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/gzip"])
            self.assertEqual(response.body[:2], b"\x1f\x8b")  # served as stored, not decoded
            self.assertEqual(response.body, await archive.read_all(s3path))
            lines = gzip.decompress(response.body).splitlines()
            self.assertEqual(lines, [line for _, line in by_report[rid]])
        fallback = [u for u in seen if "raw_measurement" in u]
        self.assertEqual(len(fallback), 1)
        self.assertEqual(dict(parse_qsl(urlsplit(fallback[0]).query)), {"report_id": unarchived})

    @deferred_test
    async def test_download_refusals(self):
        """Absent objects and paths leaving the archive are 404."""
        server = await start_server(self, quiet_config(self))
        secret = server.config.data_dir + "/control.json"
        self.assertTrue(secret)
        for path in ("raw/nothing.jsonl.gz", "../control.json", "raw/../../control.json",
                     "%2e%2e/control.json", "raw/%2e%2e/%2e%2e/control.json", "raw"):
            response, body = await server.client.get(f"/files/download/{path}")
            self.assertEqual(response.code, 404, path)
            self.assertNotIn(b"secret", response.body)
        # the legacy /<date>/<report_file> redirect lands on this route
        response, _ = await server.client.get("/2017-01-01/x.json", allow_redirects=False)
        self.assertEqual(response.code, 302)
        response, _ = await server.client.get(response.headers.getRawHeaders("location")[0])
        self.assertEqual(response.code, 404)
