"""
GET /api/v1/torsf_stats and GET/POST /api/_/measurement_feedback
(api-routes.md sections 10.3 and 12.2).
"""

import collections
import datetime
import time

from twisted.trial import unittest

from ooni_twisted.accounts import tokens
from ooni_twisted.measurements.feedback import VALID_STATUSES, summarize

from .support import JWT_KEY, deferred_test, start_server
from .test_measurement_fixtures import fastpath_rows, quiet_config, seed_fastpath

UID = "20210709005529.664022_MY_webconnectivity_68e5bea1060d1874"


def bearer(account, role="user"):
    now = int(time.time())
    token = tokens.encode(tokens.session_claims(account, role, now, now, 2, 7), JWT_KEY)
    return {"Authorization": [f"Bearer {token}"]}


class FeedbackTests(unittest.TestCase):
    async def post(self, server, payload, headers=None, status=200):
        response, body = await server.client.post(
            "/api/_/measurement_feedback", payload, headers=headers or {}
        )
        self.assertEqual(response.code, status, response.body)
        return response, body

    @deferred_test
    async def test_submit_and_summary(self):
        """Users' latest statuses are counted per status; the caller sees their own."""
        server = await start_server(self, quiet_config(self))
        alice, bob, carol = "a" * 32, "b" * 32, "c" * 32
        response, body = await self.post(
            server, {"measurement_uid": UID, "status": "blocked"}, bearer(alice)
        )
        self.assertEqual(body, {})
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["max-age=0, no-cache"])
        await self.post(server, {"measurement_uid": f"  {UID} ", "status": " ok "}, bearer(bob))
        await self.post(server, {"measurement_uid": UID, "status": "ok"}, bearer(carol, "admin"))
        # alice changes her mind: her new status replaces the old one
        await self.post(server, {"measurement_uid": UID, "status": "down.unreachable"},
                        bearer(alice))
        response, body = await server.client.get(f"/api/_/measurement_feedback/{UID}")
        self.assertEqual(body, {"summary": {"down.unreachable": 1, "ok": 2}})
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["max-age=0"])
        _, body = await server.client.get(f"/api/_/measurement_feedback/{UID}",
                                          headers=bearer(alice))
        self.assertEqual(body, {"summary": {"down.unreachable": 1, "ok": 2},
                                "user_feedback": "down.unreachable"})
        _, body = await server.client.get("/api/_/measurement_feedback/unknown-uid")
        self.assertEqual(body, {"summary": {}})

    @deferred_test
    async def test_errors(self):
        """Anonymous posts are 401; bad statuses and bodies are 400."""
        server = await start_server(self, quiet_config(self))
        _, body = await self.post(server, {"measurement_uid": UID, "status": "ok"}, status=401)
        self.assertEqual(body, {"error": "Authentication required"})
        auth = bearer("d" * 32)
        _, body = await self.post(server, {"measurement_uid": UID, "status": "nope"}, auth, 400)
        self.assertEqual(body, {"error": "Invalid status"})
        await self.post(server, {"measurement_uid": UID}, auth, 400)
        await self.post(server, {"measurement_uid": UID, "status": 7}, auth, 400)
        await self.post(server, ["ok"], auth, 400)
        response, body = await server.client.post(
            "/api/_/measurement_feedback", data=b"{not json", headers=auth
        )
        self.assertEqual((response.code, body), (400, {"error": "JSON expected"}))
        _, body = await server.client.get(f"/api/_/measurement_feedback/{UID}")
        self.assertEqual(body, {"summary": {}})

    def test_summarize(self):
        """The summary adds counts across rows and marks the caller's status."""
        rows = [
            {"status": "ok", "is_mine": 0, "cnt": 2},
            {"status": "ok", "is_mine": 1, "cnt": 1},
            {"status": "blocked", "is_mine": 0, "cnt": 1},
        ]
        self.assertEqual(summarize(rows),
                         {"summary": {"ok": 3, "blocked": 1}, "user_feedback": "ok"})
        self.assertEqual(len(VALID_STATUSES), 15)


class TorsfTests(unittest.TestCase):
    @deferred_test
    async def test_daily_counts(self):
        """torsf_stats counts torsf rows per day and country, with the anomaly rate."""
        server = await start_server(self, quiet_config(self))
        rows = fastpath_rows()
        extra = []
        for i, (day, anomaly) in enumerate((("2021-07-28 10:00:00", "f"),
                                            ("2021-07-28 11:00:00", "t"),
                                            ("2021-07-29 12:00:00", "f"))):
            row = dict(rows[1])
            row.update(measurement_uid=f"2021072{i}_IT_torsf_{i:016x}", probe_cc="IT",
                       measurement_start_time=day, anomaly=anomaly, msm_failure="f",
                       report_id=f"20210728T000000Z_torsf_IT_30722_n1_{i:016d}")
            extra.append(row)
        await seed_fastpath(server, rows + extra)
        response, body = await server.client.get(
            "/api/v1/torsf_stats?probe_cc=IT&since=2021-07-27&until=2021-07-30"
        )
        self.assertEqual(body, {"v": 0, "result": [
            {"anomaly_count": 1, "anomaly_rate": 0.5, "confirmed_count": 0, "failure_count": 0,
             "measurement_count": 2, "measurement_start_day": "2021-07-28", "probe_cc": "IT"},
            {"anomaly_count": 0, "anomaly_rate": 0.0, "confirmed_count": 0, "failure_count": 0,
             "measurement_count": 1, "measurement_start_day": "2021-07-29", "probe_cc": "IT"},
        ]})
        # an old window is cacheable for a day
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["max-age=86400"])
        _, body = await server.client.get("/api/v1/torsf_stats?since=2023-01-01")
        counts = collections.Counter(
            (r["measurement_start_time"][:10], r["probe_cc"]) for r in rows
            if r["test_name"] == "torsf" and r["measurement_start_time"] > "2023-01-01"
        )
        got = {(r["measurement_start_day"], r["probe_cc"]): r["measurement_count"]
               for r in body["result"]}
        self.assertEqual(got, dict(counts))
        self.assertTrue(got)
        keys = [(r["measurement_start_day"], r["probe_cc"]) for r in body["result"]]
        self.assertEqual(keys, sorted(keys))

    @deferred_test
    async def test_cache_header_and_errors(self):
        """No Cache-Control for recent windows; unparsable dates are E3 400 with v 0."""
        server = await start_server(self, quiet_config(self))
        response, body = await server.client.get("/api/v1/torsf_stats")
        self.assertEqual(body, {"v": 0, "result": []})
        self.assertIsNone(response.headers.getRawHeaders("cache-control"))
        recent = (datetime.datetime.utcnow() - datetime.timedelta(hours=24)).strftime("%Y-%m-%d")
        response, _ = await server.client.get(f"/api/v1/torsf_stats?until={recent}")
        self.assertIsNone(response.headers.getRawHeaders("cache-control"))
        for query in ("since=garbage", "until=2021-02-31"):
            response, body = await server.client.get(f"/api/v1/torsf_stats?{query}")
            self.assertEqual(response.code, 400, query)
            self.assertEqual(body["v"], 0)
            self.assertTrue(body["error"])
