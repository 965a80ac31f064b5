"""
The whole server on a loopback port: start, routes of the foundation,
errors, CORS, body limit, restart keeping data.
"""

from twisted.trial import unittest

from ooni_twisted.storage import schema

from .support import deferred_test, make_config, start_server


class ServerTests(unittest.TestCase):
    @deferred_test
    async def test_health(self):
        """GET /health answers 200 JSON when the database answers."""
        server = await start_server(self, make_config(self.mktemp()))
        response, body = await server.client.get("/health")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, {"status": "UP"})
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        self.assertEqual(response.length, len(response.body))
        self.assertIsNone(response.headers.getRawHeaders("transfer-encoding"))

    @deferred_test
    async def test_unknown_route_and_method(self):
        """Unknown paths are JSON 404; a wrong method on a known path is JSON 405."""
        server = await start_server(self, make_config(self.mktemp()))
        response, body = await server.client.get("/api/v1/nothing-here")
        self.assertEqual((response.code, body), (404, {"error": "Not found"}))
        self.assertEqual(response.headers.getRawHeaders("access-control-allow-origin"), ["*"])
        response, body = await server.client.post("/health", {})
        self.assertEqual(response.code, 405)
        self.assertEqual(body, {"error": "Method not allowed"})
        response, body = await server.client.get("/report/20230101T000000Z_ndt_IT_1_n1_abc")
        self.assertEqual((response.code, body), (405, {"error": "Method not allowed"}))
        self.assertEqual(response.headers.getRawHeaders("allow"), ["POST"])

    @deferred_test
    async def test_undecodable_path(self):
        """A path that is not UTF-8 once unquoted is a JSON 404, not a framework error."""
        server = await start_server(self, make_config(self.mktemp()))
        response, body = await server.client.get("/files/by_country/%ff%fe")
        self.assertEqual((response.code, body), (404, {"error": "Not found"}))

    @deferred_test
    async def test_robots_and_redirects(self):
        """robots.txt and the legacy redirects answer as the reference does."""
        server = await start_server(self, make_config(self.mktemp()))
        response, _ = await server.client.get("/robots.txt")
        body = response.body
        self.assertTrue(body.startswith(b"\nUser-agent: *\n"))
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["max-age=86400"])
        response, _ = await server.client.get("/2021-07-09", allow_redirects=False)
        self.assertEqual(response.code, 301)
        self.assertEqual(
            response.headers.getRawHeaders("location"),
            ["https://explorer.ooni.org/search?until=2021-07-10&since=2021-07-09"],
        )
        response, body = await server.client.get("/files/by_date/2020-19-39")
        self.assertEqual((response.code, body), (400, {"error": "Invalid date format"}))
        response, _ = await server.client.get("/not-a-date")
        self.assertEqual(response.code, 404)

    @deferred_test
    async def test_preflight(self):
        """OPTIONS answers the CORS preflight for any route without running it."""
        server = await start_server(self, make_config(self.mktemp()))
        response, _ = await server.client.request(
            "OPTIONS",
            "/api/v1/measurements",
            headers={"Access-Control-Request-Headers": "Authorization, Content-Type"},
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders("access-control-allow-headers"),
            ["Authorization, Content-Type"],
        )
        self.assertIn(b"POST", response.headers.getRawHeaders(b"access-control-allow-methods")[0])

    @deferred_test
    async def test_credentialed_cors(self):
        """Session routes echo only OONI origins, with credentials allowed."""
        server = await start_server(self, make_config(self.mktemp()))
        response, _ = await server.client.request(
            "OPTIONS",
            "/api/_/quotas_summary",
            headers={"Origin": "https://explorer.ooni.org"},
        )
        self.assertEqual(
            response.headers.getRawHeaders("access-control-allow-origin"),
            ["https://explorer.ooni.org"],
        )
        self.assertEqual(response.headers.getRawHeaders("access-control-allow-credentials"), ["true"])
        response, _ = await server.client.request(
            "OPTIONS",
            "/api/_/quotas_summary",
            headers={"Origin": "https://evil.example.org"},
        )
        self.assertIsNone(response.headers.getRawHeaders("access-control-allow-origin"))

    @deferred_test
    async def test_body_limit(self):
        """A body over max_body_size gets a 413 JSON answer and the server stays up."""
        server = await start_server(self, make_config(self.mktemp(), max_body_size="1000"))
        response, body = await server.client.post("/health", data=b"x" * 5000)
        self.assertEqual(response.code, 413)
        self.assertEqual(body, {"error": "Request body too large"})
        response, _ = await server.client.get("/health")
        self.assertEqual(response.code, 200)

    @deferred_test
    async def test_restart_keeps_data(self):
        """Rows written before a stop are there after the next start."""
        config = make_config(self.mktemp())
        server = await start_server(self, config)
        await server.clickhouse.insert("accounts", ["account_id", "role"], [("a" * 32, "admin")])
        await server.stopService()
        server = await start_server(self, config)
        rows = await server.clickhouse.query("SELECT role FROM accounts")
        self.assertEqual(rows, [{"role": "admin"}])
        versions = await server.clickhouse.run(schema.applied_versions)
        self.assertEqual(versions, {m[0] for m in schema.MIGRATIONS})
