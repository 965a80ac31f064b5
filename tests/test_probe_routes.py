"""
The probe services over a real server on loopback: check-in, credentials,
static configuration, reports and submissions into the spool, geolookup and
the spool path served to peers (api-routes.md sections 9 and 12.10).
"""

import hashlib
import json
import os

import jwt
import zstandard
from twisted.trial import unittest

from ooni_twisted.probes.checkin import CHECKIN_V1_TESTS, CHECKIN_V2_NETTESTS
from ooni_twisted.probes.routes import BodyTooLarge, decompress_zstd
from ooni_twisted.storage.spool import hourdir
from ooni_twisted.testlists import citizenlab

from .mmdb import build_test_mmdbs
from .test_checkin_logic import BOUNCER
from .support import DATA, JWT_KEY, deferred_test, make_config, start_server

NOCACHE = ["max-age=0, no-cache"]
JSON_TYPE = {b"Content-Type": [b"application/json"]}
MEASUREMENT = {
    "format": "json",
    "content": {
        "probe_cc": "US",
        "probe_asn": "AS1234",
        "test_name": "web_connectivity",
        "input": "https://example.org/",
        "test_keys": {"blocking": False},
    },
}

#: The smallest body a probe can submit: an envelope around an empty measurement.
EMPTY_ENVELOPE = b'{"format":"json","content":{}}'


def load_test_lists(backend):
    rows = citizenlab.read_test_lists(DATA.child("test-lists").path).rows
    citizenlab.replace_citizenlab(backend, rows)
    return len(rows)


async def probe_server(testcase, geoip=True, test_lists=True, **overrides):
    """
    A server with the test GeoIP databases and the test lists loaded into
    its in-memory prioritisation.
    """
    base = os.path.abspath(testcase.mktemp())
    os.makedirs(base)
    # Ingestion then passes once at start only, so spooled bodies stay
    # readable from the spool while the test looks at them.
    overrides.setdefault("ingest_interval", "3600")
    if geoip:
        cc_db, asn_db = build_test_mmdbs(base)
        overrides.setdefault("geoip_cc_db", cc_db)
        overrides.setdefault("geoip_asn_db", asn_db)
    server = await start_server(testcase, make_config(base, **overrides))
    if test_lists:
        await server.clickhouse.run(load_test_lists)
        await server.context.priorities.refresh()
    return server


def forwarded(address):
    return {"X-Forwarded-For": [address]}


class ZstdTests(unittest.SynchronousTestCase):
    def test_frames(self):
        """One frame or several concatenated frames decompress to their content."""
        c = zstandard.ZstdCompressor()
        self.assertEqual(decompress_zstd(c.compress(b"hello"), 100), b"hello")
        self.assertEqual(
            decompress_zstd(c.compress(b"hello") + c.compress(b" world"), 100), b"hello world"
        )

    def test_limit(self):
        """Content over the limit raises BodyTooLarge without inflating it all."""
        bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))
        self.assertLess(len(bomb), 10000)
        self.assertRaises(BodyTooLarge, decompress_zstd, bomb, 1 << 20)

    def test_malformed(self):
        """Garbage, truncated frames, trailing junk and empty input are ValueError."""
        frame = zstandard.ZstdCompressor().compress(b"x" * 1000)
        for bad in (b"garbage here", frame[:-3], frame + b"junk", b""):
            self.assertRaises(ValueError, decompress_zstd, bad, 1 << 20)


class CheckInTests(unittest.TestCase):
    @deferred_test
    async def test_check_in_geolocated(self):
        """A probe sending no location gets the one of its forwarded address, with its URLs."""
        server = await probe_server(self)
        response, body = await server.client.post(
            "/api/v1/check-in", {}, headers=forwarded("192.33.4.12")
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("cache-control"), NOCACHE)
        self.assertEqual(body["v"], 1)
        self.assertEqual(
            (body["probe_cc"], body["probe_asn"], body["probe_network_name"]),
            ("US", "AS2149", "COGENT-2149"),
        )
        self.assertRegex(body["utc_time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertEqual(sorted(body["conf"]), ["features", "test_helpers"])
        self.assertEqual(body["conf"]["features"], {"torsf_enabled": True})
        self.assertEqual(sorted(body["tests"]), sorted(CHECKIN_V1_TESTS))
        web = body["tests"]["web_connectivity"]
        parts = web["report_id"].split("_")
        self.assertEqual(parts[1:5], ["webconnectivity", "US", "2149", "n1"])
        # charging by default: 100 URLs, from the global and the US lists
        self.assertEqual(len(web["urls"]), 100)
        self.assertLessEqual({u["country_code"] for u in web["urls"]}, {"XX", "US"})
        self.assertEqual(sorted(web["urls"][0]), ["category_code", "country_code", "url"])
        # the text after the last space of the first X-Forwarded-For line
        _, body = await server.client.post(
            "/api/v1/check-in", {}, headers=forwarded("10.0.0.1, 5.6.7.8")
        )
        self.assertEqual((body["probe_cc"], body["probe_asn"]), ("DE", "AS6805"))
        _, body = await server.client.post("/api/v1/check-in", {})
        self.assertEqual(
            (body["probe_cc"], body["probe_asn"], body["probe_network_name"]),
            ("ZZ", "AS0", None),
        )
        self.assertIn("_ZZ_0_", body["tests"]["dash"]["report_id"])

    @deferred_test
    async def test_check_in_probe_values_and_limits(self):
        """The probe's own cc/asn choose its list and report ids; run type and battery its size."""
        server = await probe_server(self)
        probe = {"probe_cc": "us", "probe_asn": "AS1234", "charging": False}
        _, body = await server.client.post(
            "/api/v1/check-in", probe, headers=forwarded("5.34.7.8")
        )
        # the lookup is reported, the probe's values are used
        self.assertEqual((body["probe_cc"], body["probe_asn"]), ("ZZ", "AS0"))
        self.assertEqual(body["conf"]["features"]["webconnectivity_0.5"], True)
        web = body["tests"]["web_connectivity"]
        self.assertIn("_webconnectivity_US_1234_", web["report_id"])
        self.assertEqual(len(web["urls"]), 20)
        probe["run_type"] = "manual"
        _, body = await server.client.post("/api/v1/check-in", probe)
        urls = body["tests"]["web_connectivity"]["urls"]
        self.assertEqual(len(urls), 1514)  # every global and US entry
        self.assertEqual(len([u for u in urls if u["country_code"] == "US"]), 47)

    @deferred_test
    async def test_check_in_categories(self):
        """Category codes, as a list or a comma string, restrict the URLs."""
        server = await probe_server(self)
        probe = {"probe_cc": "US", "probe_asn": "AS1234"}
        _, body = await server.client.post(
            "/api/v1/check-in", dict(probe, web_connectivity={"category_codes": ["NEWS"]})
        )
        urls = body["tests"]["web_connectivity"]["urls"]
        self.assertGreater(len(urls), 10)
        self.assertEqual({u["category_code"] for u in urls}, {"NEWS"})
        _, body = await server.client.post(
            "/api/v1/check-in", dict(probe, web_connectivity={"category_codes": "LGBT,GRP"})
        )
        urls = body["tests"]["web_connectivity"]["urls"]
        self.assertEqual({u["category_code"] for u in urls}, {"LGBT", "GRP"})
        # case-sensitive, as in the reference
        _, body = await server.client.post(
            "/api/v1/check-in", dict(probe, web_connectivity={"category_codes": ["news"]})
        )
        self.assertEqual(body["tests"]["web_connectivity"]["urls"], [])

    @deferred_test
    async def test_check_in_v2(self):
        """The experimental check-in lists nettests in order, with targets."""
        server = await probe_server(self)
        response, body = await server.client.post(
            "/api/_/check-in",
            {"probe_cc": "US", "probe_asn": "AS1234", "charging": False},
            headers=forwarded("8.8.8.8"),
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("cache-control"), NOCACHE)
        self.assertEqual(body["v"], 2)
        self.assertEqual((body["probe_cc"], body["probe_asn"]), ("US", "AS15169"))
        self.assertEqual(body["conf"]["features"], {})
        names = [n["test_name"] for n in body["nettests"]]
        self.assertEqual(names, list(CHECKIN_V2_NETTESTS))
        by_name = {n["test_name"]: n for n in body["nettests"]}
        web = by_name["web_connectivity"]
        self.assertIn("_webconnectivity_US_1234_", web["report_id"])
        self.assertEqual(len(web["targets"]), 20)
        target = web["targets"][0]
        self.assertEqual(sorted(target), ["attributes", "input", "options"])
        self.assertEqual(sorted(target["attributes"]), ["category_code", "country_code"])
        self.assertEqual(len(by_name["dnscheck"]["targets"]), 42)
        self.assertEqual(len(by_name["stunreachability"]["targets"]), 10)
        self.assertEqual(by_name["ndt"]["targets"], [])

    @deferred_test
    async def test_check_in_bad_bodies(self):
        """Unusable check-in bodies are 400 JSON errors and the server keeps serving."""
        server = await probe_server(self, test_lists=False)
        bad = [
            b"",
            b"{not json",
            b"\xff\xfe{}",
            b"[]",
            b"null",
            b'"text"',
            b"[" * 100000 + b"]" * 100000,
            b'{"a":' * 50000 + b"1" + b"}" * 50000,
            b'{"probe_cc": 12}',
            b'{"probe_cc": "USA"}',
            b'{"probe_asn": "1234"}',
            b'{"probe_asn": ["AS1"]}',
            b'{"web_connectivity": "NEWS"}',
            b'{"web_connectivity": {"category_codes": 5}}',
            b'{"web_connectivity": {"category_codes": ["NE WS"]}}',
            b'{"web_connectivity": {"category_codes": [1]}}',
        ]
        for path in ("/api/v1/check-in", "/api/_/check-in"):
            for data in bad:
                response, body = await server.client.post(path, data=data)
                self.assertEqual(response.code, 400, (path, data[:40]))
                self.assertIsInstance(body["error"], str)
        response, body = await server.client.post("/api/v1/check-in", data=b"{}")
        self.assertEqual((response.code, body["v"]), (200, 1))
        # without a Content-Type, and with an empty list when nothing is loaded
        self.assertEqual(body["tests"]["web_connectivity"]["urls"], [])

    @deferred_test
    async def test_without_geoip(self):
        """Without GeoIP databases every address is unknown."""
        server = await probe_server(self, geoip=False, test_lists=False)
        _, body = await server.client.post(
            "/api/v1/check-in", {}, headers=forwarded("192.33.4.12")
        )
        self.assertEqual((body["probe_cc"], body["probe_asn"]), ("ZZ", "AS0"))
        _, body = await server.client.post("/api/v1/geolookup", {"addresses": ["5.6.7.8"]})
        self.assertEqual(
            body["geolocation"], {"5.6.7.8": {"as_name": None, "asn": None, "cc": None}}
        )


class CredentialTests(unittest.TestCase):
    @deferred_test
    async def test_register_and_login(self):
        """register gives a client_id that login turns into a probe token."""
        server = await probe_server(self, geoip=False, test_lists=False)
        response, body = await server.client.post("/api/v1/register", data=b"{}")
        self.assertEqual((response.code, body), (400, {"error": "error: JSON expected!"}))
        response, body = await server.client.post(
            "/api/v1/register", data=b"{broken", headers=JSON_TYPE
        )
        self.assertEqual(response.code, 200)
        response, body = await server.client.post(
            "/api/v1/register", {"password": "x", "probe_cc": "IT"}
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("cache-control"), NOCACHE)
        client_id = body["client_id"]
        self.assertEqual(len(client_id), 132)
        claims = jwt.decode(client_id, JWT_KEY, algorithms=["HS256"], audience="probe_login")
        self.assertEqual(sorted(claims), ["aud", "iat"])

        response, body = await server.client.post(
            "/api/v1/login", data=json.dumps({"username": client_id, "password": "x"}).encode()
        )
        self.assertEqual(response.code, 200)
        self.assertRegex(body["expire"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        token = jwt.decode(body["token"], JWT_KEY, algorithms=["HS256"], audience="probe_token")
        self.assertEqual(token, {"registration_time": claims["iat"], "aud": "probe_token"})

        for legacy in ({"username": "BOGUSBOGUS", "password": "x"}, {}, {"username": 5}):
            response, body = await server.client.post("/api/v1/login", legacy)
            self.assertEqual(response.code, 200)
            token = jwt.decode(
                body["token"], JWT_KEY, algorithms=["HS256"], audience="probe_token"
            )
            self.assertIsNone(token["registration_time"])

    @deferred_test
    async def test_login_errors(self):
        """Badly signed or foreign tokens are 401; unparsable bodies 400."""
        server = await probe_server(self, geoip=False, test_lists=False)
        forged = jwt.encode({"iat": 1, "aud": "probe_login"}, "another-key-of-32-bytes-or-more!!")
        foreign = jwt.encode({"registration_time": 1, "aud": "probe_token"}, JWT_KEY)
        no_iat = jwt.encode({"aud": "probe_login"}, JWT_KEY)
        no_aud = jwt.encode({"iat": 1}, JWT_KEY)
        for username in (forged, foreign, no_iat, no_aud):
            response, body = await server.client.post("/api/v1/login", {"username": username})
            self.assertEqual((response.code, body), (401, {"error": "Invalid credentials"}))
        for data in (b"", b"{x", b"[1]"):
            response, body = await server.client.post("/api/v1/login", data=data)
            self.assertEqual((response.code, body), (400, {"error": "JSON expected"}))

    @deferred_test
    async def test_probe_token_files(self):
        """psiphon-config and tor-targets need a probe token and serve their files as is."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        psiphon = os.path.join(base, "psiphon.json")
        content = {"ClientPlatform": "android", "nested": {"list": [1, 2, 3]}}
        with open(psiphon, "w") as f:
            json.dump(content, f)
        server = await probe_server(self, geoip=False, test_lists=False, psiphon_config=psiphon)
        _, body = await server.client.post("/api/v1/login", {"username": "BOGUSBOGUS"})
        token = body["token"]
        _, body = await server.client.post("/api/v1/register", {})
        client_id = body["client_id"]
        tor = json.loads(DATA.child("tor_targets.json").getContent())
        for path, expected in (
            ("/api/v1/test-list/psiphon-config", content),
            ("/api/v1/test-list/tor-targets", tor),
        ):
            response, body = await server.client.get(
                path, headers={"Authorization": [f"Bearer {token}"]}
            )
            self.assertEqual((response.code, body), (200, expected))
            self.assertEqual(response.headers.getRawHeaders("cache-control"), NOCACHE)
            cases = [
                ({}, 400, None),
                ({"Authorization": [token]}, 400, "Invalid token format"),
                ({"Authorization": [f"Bearer {token[:-10]}"]}, 401, None),
                ({"Authorization": [f"Bearer {token[:40]}"]}, 401, "Invalid credentials"),
                ({"Authorization": [f"Bearer {client_id}"]}, 401, "Invalid credentials"),
                (
                    {
                        "Authorization": [
                            "Bearer "
                            + jwt.encode(
                                {"aud": "probe_token"}, "another-key-of-32-bytes-or-more!!"
                            )
                        ]
                    },
                    401,
                    "Invalid JWT signature",
                ),
            ]
            for headers, code, message in cases:
                response, body = await server.client.get(path, headers=headers)
                self.assertEqual(response.code, code, headers)
                self.assertIsInstance(body["error"], str)
                if message:
                    self.assertEqual(body["error"], message)
        # read once: later changes of the file are not read per request
        with open(psiphon, "w") as f:
            f.write("{}")
        _, body = await server.client.get(
            "/api/v1/test-list/psiphon-config", headers={"Authorization": [f"Bearer {token}"]}
        )
        self.assertEqual(body, content)

    @deferred_test
    async def test_unreadable_file(self):
        """A missing configured file is a 500 JSON error, not a crash."""
        server = await probe_server(
            self, geoip=False, test_lists=False, tor_targets="/nonexistent/tor.json"
        )
        _, body = await server.client.post("/api/v1/login", {})
        response, body = await server.client.get(
            "/api/v1/test-list/tor-targets", headers={"Authorization": [f"Bearer {body['token']}"]}
        )
        self.assertEqual(response.code, 500)
        self.assertIn("error", body)


class StaticRoutesTests(unittest.TestCase):
    @deferred_test
    async def test_collectors_helpers_invalidpath(self):
        """collectors, test-helpers and /invalidpath answer the reference's objects."""
        server = await probe_server(self, geoip=False, test_lists=False)
        response, body = await server.client.get("/api/v1/collectors")
        self.assertEqual(len(body), 6)
        self.assertEqual(body[0], {"address": "httpo://guegdifjy7bjpequ.onion", "type": "onion"})
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["max-age=3600"])
        response, body = await server.client.get(
            "/api/v1/test-helpers", headers=forwarded("1.2.3.4")
        )
        self.assertEqual(len(body), 6)
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["max-age=0"])
        # int(1.2.3.4) % 100 = 60 -> shift 1
        self.assertEqual(body["web-connectivity"][0]["address"], "https://1.th.ooni.org")
        self.assertEqual(body["web-connectivity"][4]["type"], "cloudfront")
        response, body = await server.client.get("/api/v1/test-helpers", headers=forwarded("x"))
        self.assertEqual(
            [h["address"][8] for h in body["web-connectivity"][:4]], ["1", "2", "3", "0"]
        )
        response, body = await server.client.get("/invalidpath")
        self.assertEqual((response.code, body), (404, {"error": 404}))
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-cache"])

    @deferred_test
    async def test_configured_collectors(self):
        """With collectors configured, each host is one https entry."""
        server = await probe_server(
            self, geoip=False, test_lists=False, collectors="a.example.org, b.example.org"
        )
        _, body = await server.client.get("/api/v1/collectors")
        self.assertEqual(
            body,
            [
                {"address": "https://a.example.org", "type": "https"},
                {"address": "https://b.example.org", "type": "https"},
            ],
        )

    @deferred_test
    async def test_bouncer(self):
        """The legacy bouncer echoes the first test's name and version; malformed is 400."""
        server = await probe_server(self, geoip=False, test_lists=False)
        request = {
            "net-tests": [
                {
                    "input-hashes": None,
                    "name": "web_connectivity",
                    "test-helpers": ["web-connectivity"],
                    "version": "0.0.1",
                }
            ]
        }
        response, body = await server.client.post("/bouncer/net-tests", request)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("cache-control"), NOCACHE)
        self.assertEqual(body, BOUNCER)
        for data in (b"", b"{}", b'{"net-tests": []}', b'{"net-tests": [{"name": "x"}]}', b"[1"):
            response, body = await server.client.post("/bouncer/net-tests", data=data)
            self.assertEqual((response.code, body), (400, {"error": "Malformed request"}))

    @deferred_test
    async def test_geolookup(self):
        """geolookup reports each address from the two databases independently."""
        server = await probe_server(self, test_lists=False)
        response, body = await server.client.post(
            "/api/v1/geolookup", {"addresses": ["::1", "1.2.3.4", "5.6.7.8", "not-an-ip"]}
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("cache-control"), NOCACHE)
        nothing = {"as_name": None, "asn": None, "cc": None}
        self.assertEqual(
            body,
            {
                "geolocation": {
                    "::1": nothing,
                    "1.2.3.4": {"as_name": None, "asn": None, "cc": "AU"},
                    "5.6.7.8": {
                        "as_name": "Telefonica Germany GmbH & Co.OHG",
                        "asn": 6805,
                        "cc": "DE",
                    },
                    "not-an-ip": nothing,
                },
                "v": 1,
            },
        )
        _, body = await server.client.post("/api/v1/geolookup", {})
        self.assertEqual(body, {"geolocation": {}, "v": 1})
        for data in (b"{x", b"[]", b'{"addresses": "1.2.3.4"}', b'{"addresses": [1]}'):
            response, body = await server.client.post("/api/v1/geolookup", data=data)
            self.assertEqual(response.code, 400, data)
            self.assertIn("error", body)


class ReportTests(unittest.TestCase):
    @deferred_test
    async def test_open_and_close(self):
        """Opening a report normalises cc/asn into a new report id; close is {}."""
        server = await probe_server(self, geoip=False, test_lists=False)
        response, body = await server.client.post(
            "/report",
            {
                "probe_asn": "AS65550",
                "probe_cc": "IE",
                "test_name": "web_connectivity",
                "format": "json",
            },
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("cache-control"), NOCACHE)
        self.assertEqual(body["backend_version"], "1.3.5")
        self.assertEqual(body["supported_formats"], ["yaml", "json"])
        self.assertIn("_webconnectivity_IE_65550_", body["report_id"])
        self.assertEqual(len(body["report_id"]), 61)
        _, body = await server.client.post("/report", data=b'{"test_name": "ndt"}')
        self.assertIn("_ndt_ZZ_0_n1_", body["report_id"])
        _, body = await server.client.post(
            "/report", {"probe_asn": "ASX", "probe_cc": "i_t", "test_name": "ndt"}
        )
        self.assertIn("_ndt_IT_0_n1_", body["report_id"])
        for data in (b"", b"{x", b"[]", b'{"probe_cc": 5}'):
            response, body = await server.client.post("/report", data=data)
            self.assertEqual(response.code, 400, data)
        response, body = await server.client.post("/report/anything/close", data=b"")
        self.assertEqual((response.code, body), (200, {}))
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["max-age=3600"])

    @deferred_test
    async def test_submit_plain_and_zstd(self):
        """Submissions are spooled byte for byte and acknowledged with their uid."""
        server = await probe_server(self, geoip=False, test_lists=False)
        _, opened = await server.client.post(
            "/report", {"probe_cc": "US", "probe_asn": "AS1234", "test_name": "web_connectivity"}
        )
        report_id = opened["report_id"]
        plain = json.dumps(MEASUREMENT).encode()
        response, body = await server.client.post(f"/report/{report_id}", data=plain)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("cache-control"), NOCACHE)
        uid = body["measurement_uid"]
        self.assertRegex(uid, r"^20\d{12}\.\d{6}_US_webconnectivity_[0-9a-f]{16}$")
        self.assertEqual(uid.split("_")[3], hashlib.sha512(plain).hexdigest()[:16])
        self.assertEqual(await server.context.spool.get(uid), plain)

        # zstd: the decompressed body is hashed and stored
        padded = dict(MEASUREMENT["content"], padding="zstd " * 2000)
        inner = json.dumps(dict(MEASUREMENT, content=padded)).encode()
        compressed = zstandard.ZstdCompressor().compress(inner)
        response, body = await server.client.post(
            f"/report/{report_id}",
            data=compressed,
            headers={"Content-Encoding": ["zstd"]},
        )
        self.assertEqual(response.code, 200)
        zuid = body["measurement_uid"]
        self.assertEqual(zuid.split("_")[3], hashlib.sha512(inner).hexdigest()[:16])
        self.assertEqual(await server.context.spool.get(zuid), inner)

        # a large body (past the inline threshold), not decoded without the header
        big = b'{"format": "json", "content": {"x": "' + b"a" * 600000 + b'"}}'
        response, body = await server.client.post(f"/report/{report_id}", data=big)
        self.assertEqual(await server.context.spool.get(body["measurement_uid"]), big)

        # peers read the spooled bytes verbatim
        response, _ = await server.client.get(f"/measurement_spool/{hourdir(uid)}/{uid}.post")
        self.assertEqual((response.code, response.body), (200, plain))
        response, _ = await server.client.get(f"/measurement_spool/{hourdir(zuid)}/{zuid}.post")
        self.assertEqual(response.body, inner)

    @deferred_test
    async def test_submit_errors(self):
        """Bad report ids, zstd garbage and a zstd bomb are 4xx; the server stays up."""
        server = await probe_server(
            self, geoip=False, test_lists=False, max_body_size="1000000"
        )
        good = "20230101T000000Z_webconnectivity_IT_30722_n1_abcdefghijklmnop"
        for report_id in (
            "bogus",
            "20230101T000000Z_webconnectivity_ITA_30722_n1_abc",
            "20230101T000000Z_web-connectivity_IT_30722_n1_abc",
            "20230101T000000Z_w_IT_30722_n1_abc",
            "20230101T000000Z_webconnectivity_IT_AS30722_n1_abc",
            "20230101T000000Z_webconnectivity_IT_30722_n1_abc_extra",
            "20230101T000000Z_webconnectivit%C3%A9_IT_30722_n1_abc",
        ):
            response, body = await server.client.post(f"/report/{report_id}", data=b"{}")
            self.assertEqual((response.code, body), (400, {"error": "Incorrect format"}))
        zstd_header = {"Content-Encoding": ["zstd"]}
        frame = zstandard.ZstdCompressor().compress(b"x" * 5000)
        for data in (b"not zstd at all", frame[:-4], b""):
            response, body = await server.client.post(
                f"/report/{good}", data=data, headers=zstd_header
            )
            self.assertEqual((response.code, body), (400, {"error": "Incorrect format"}))
        for data in (b"not json at all", b"[1, 2]", b'{"format": "json"}', b"\xff\xfe{}"):
            response, body = await server.client.post(f"/report/{good}", data=data)
            self.assertEqual((response.code, body), (400, {"error": "Incorrect format"}), data)
        frame = zstandard.ZstdCompressor().compress(b"definitely not json")
        response, body = await server.client.post(f"/report/{good}", data=frame, headers=zstd_header)
        self.assertEqual((response.code, body), (400, {"error": "Incorrect format"}))
        bomb = zstandard.ZstdCompressor().compress(b"\0" * (200 << 20))
        self.assertLess(len(bomb), 1000000)
        response, body = await server.client.post(
            f"/report/{good}", data=bomb, headers=zstd_header
        )
        self.assertEqual(response.code, 413)
        self.assertEqual(body, {"error": "Request body too large"})
        self.assertEqual(server.context.spool.core.pending_count(), 0)
        response, body = await server.client.post(f"/report/{good}", data=EMPTY_ENVELOPE)
        self.assertEqual(response.code, 200)
        self.assertIn("measurement_uid", body)
        response, _ = await server.client.get("/health")
        self.assertEqual(response.code, 200)

    @deferred_test
    async def test_discard_rules(self):
        """Reports of ASN 0 or country ZZ are acknowledged with {} and not stored."""
        server = await probe_server(self, geoip=False, test_lists=False)
        for report_id in (
            "20230101T000000Z_webconnectivity_IT_0_n1_abcdefghijklmnop",
            "20230101T000000Z_webconnectivity_ZZ_3269_n1_abcdefghijklmnop",
            "20230101T000000Z_webconnectivity_zz_3269_n1_abcdefghijklmnop",
        ):
            response, body = await server.client.post(
                f"/report/{report_id}", data=json.dumps(MEASUREMENT).encode()
            )
            self.assertEqual((response.code, body), (200, {}))
            self.assertEqual(response.headers.getRawHeaders("cache-control"), NOCACHE)
        self.assertEqual(server.context.spool.core.pending_count(), 0)

    @deferred_test
    async def test_spool_path_validation(self):
        """The peer path refuses malformed names and strangers, and 404s absent uids."""
        server = await probe_server(self, geoip=False, test_lists=False)
        uid = "20230101000000.123456_IT_webconnectivity_0123456789abcdef"
        for path in (
            f"/measurement_spool/{hourdir(uid)}/{uid}.post",  # absent
            f"/measurement_spool/2023010100_IT_ndt/{uid}.post",  # wrong hour dir
            f"/measurement_spool/{hourdir(uid)}/{uid}",  # no .post
            "/measurement_spool/..%2F..%2Fetc/passwd.post",
            "/measurement_spool/2023010100_IT_webconnectivity/..%2Fsegments.post",
        ):
            response, body = await server.client.get(path)
            self.assertEqual(response.code, 404, path)
            self.assertEqual(body, {"error": "Not found"})
        _, opened = await server.client.post(
            "/report", {"probe_cc": "IT", "probe_asn": "AS3269", "test_name": "ndt"}
        )
        _, body = await server.client.post(f"/report/{opened['report_id']}", data=EMPTY_ENVELOPE)
        uid = body["measurement_uid"]
        path = f"/measurement_spool/{hourdir(uid)}/{uid}.post"
        response, _ = await server.client.get(path, headers=forwarded("5.6.7.8"))
        self.assertEqual(response.code, 403)
        response, _ = await server.client.get(path)
        self.assertEqual((response.code, response.body), (200, EMPTY_ENVELOPE))

    @deferred_test
    async def test_spool_path_peers(self):
        """A configured peer address may read the spool through a trusted proxy."""
        server = await probe_server(
            self, geoip=False, test_lists=False, peers="http://5.6.7.8:8000"
        )
        _, opened = await server.client.post(
            "/report", {"probe_cc": "IT", "probe_asn": "AS3269", "test_name": "ndt"}
        )
        _, body = await server.client.post(f"/report/{opened['report_id']}", data=EMPTY_ENVELOPE)
        uid = body["measurement_uid"]
        path = f"/measurement_spool/{hourdir(uid)}/{uid}.post"
        response, _ = await server.client.get(path, headers=forwarded("5.6.7.8"))
        self.assertEqual(response.code, 200)
        response, _ = await server.client.get(path, headers=forwarded("5.6.7.9"))
        self.assertEqual(response.code, 403)

