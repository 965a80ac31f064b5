"""
One measurement by uid or report_id: GET /api/v1/measurement_meta,
/api/v1/raw_measurement and /api/v1/measurement/<uid>, against real
measurements seeded into fastpath and archived in the local archive.
"""

import datetime
import json
from urllib.parse import quote

from twisted.trial import unittest

from .support import deferred_test, start_server
from .test_measurement_fixtures import (
    archive_batch,
    fastpath_row_for,
    new_uid,
    quiet_config,
    seed_citizenlab,
    seed_fastpath,
    uid_parts,
    usable_measurements,
)

RECEIVED = datetime.datetime(2024, 1, 2, 10, 11, 12, 131415)

META_KEYS = {
    "anomaly", "category_code", "confirmed", "failure", "input", "measurement_start_time",
    "measurement_uid", "probe_asn", "probe_cc", "report_id", "scores", "test_name",
    "test_start_time",
}


class Seeded:
    """
    Real measurements with uids, fastpath rows and one archive object each.
    """

    def __init__(self):
        self.items = []  # (uid, line, measurement)
        for i, (line, m) in enumerate(usable_measurements()):
            cc, testname = uid_parts(m["report_id"])
            received = RECEIVED + datetime.timedelta(seconds=i)
            self.items.append((new_uid(received, cc, testname, line), line, m))

    def with_input(self):
        return next(item for item in self.items if item[2].get("input"))

    def without_input(self):
        return next(item for item in self.items if not item[2].get("input"))

    async def load(self, server, archive=True):
        await seed_fastpath(server, [fastpath_row_for(m, uid) for uid, _, m in self.items])
        if archive:
            for i, (uid, line, _) in enumerate(self.items):
                await archive_batch(server, server.context.archive, [(uid, line)], RECEIVED,
                                    batch=i)


class MetaTests(unittest.TestCase):
    async def start(self, archive=True):
        server = await start_server(self, quiet_config(self))
        self.seeded = Seeded()
        await self.seeded.load(server, archive)
        return server

    async def get(self, server, path, status=200):
        response, body = await server.client.get(path)
        self.assertEqual(response.code, status, (path, response.body))
        return response, body

    @deferred_test
    async def test_meta_by_uid(self):
        """measurement_meta by uid gives the 13-key object with typed values."""
        server = await self.start()
        uid, line, m = self.seeded.with_input()
        await seed_citizenlab(server, [(m["input"], "ZZ", "NEWS")])
        response, body = await self.get(server, f"/api/v1/measurement_meta?measurement_uid={uid}")
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["max-age=60"])
        self.assertEqual(set(body), META_KEYS)
        self.assertEqual(body["measurement_uid"], uid)
        self.assertEqual(body["probe_asn"], int(m["probe_asn"][2:]))
        self.assertEqual(body["category_code"], "NEWS")
        self.assertEqual(body["scores"], "{}")
        self.assertEqual(body["input"], m["input"])
        self.assertEqual(body["measurement_start_time"],
                         m["measurement_start_time"].replace(" ", "T") + "Z")
        self.assertEqual((body["anomaly"], body["confirmed"], body["failure"]),
                         (False, False, False))

    @deferred_test
    async def test_meta_by_report_id(self):
        """By report_id + input the same object; without input, input "" and category null."""
        server = await self.start()
        uid, _, m = self.seeded.with_input()
        _, by_uid = await self.get(server, f"/api/v1/measurement_meta?measurement_uid={uid}")
        _, by_rid = await self.get(
            server,
            f"/api/v1/measurement_meta?report_id={m['report_id']}&input={quote(m['input'])}",
        )
        self.assertEqual(by_rid, by_uid)
        self.assertEqual(by_rid["category_code"], "")
        uid2, _, m2 = self.seeded.without_input()
        _, body = await self.get(server, f"/api/v1/measurement_meta?report_id={m2['report_id']}")
        self.assertEqual((body["input"], body["category_code"], body["measurement_uid"]),
                         ("", None, uid2))

    @deferred_test
    async def test_meta_full(self):
        """full=true adds the body as a JSON string, JSON-equal to the measurement."""
        server = await self.start()
        uid, line, m = self.seeded.with_input()
        _, plain = await self.get(server, f"/api/v1/measurement_meta?measurement_uid={uid}")
        for value in ("true", "1", "YES"):
            _, body = await self.get(
                server, f"/api/v1/measurement_meta?measurement_uid={uid}&full={value}"
            )
            raw = body.pop("raw_measurement")
            self.assertEqual(body, plain)
            self.assertEqual(json.loads(raw), m)

    @deferred_test
    async def test_meta_not_found_and_errors(self):
        """Unknown measurements are 200 {} (or raw_measurement ""), bad parameters 400."""
        server = await self.start()
        uid, _, m = self.seeded.with_input()
        bogus = uid[:-4] + "0000"
        _, body = await self.get(server, f"/api/v1/measurement_meta?measurement_uid={bogus}")
        self.assertEqual(body, {})
        _, body = await self.get(
            server, f"/api/v1/measurement_meta?measurement_uid={bogus}&full=true"
        )
        self.assertEqual(body, {"raw_measurement": ""})
        unknown = "20210709T004340Z_webconnectivity_MY_4818_n1_YCM7J9mGcEHds2K3"
        _, body = await self.get(server, f"/api/v1/measurement_meta?report_id={unknown}")
        self.assertEqual(body, {})
        for query, message in (
            ("report_id=BOGUS", "Invalid report_id"),
            ("", "Invalid report_id"),
            ("measurement_uid=short", "Invalid report_id"),
            (f"report_id={m['report_id']}&input=a%3Bb", "Invalid characters in input field"),
            ("report_id=2021070900434_webconn*", "Invalid characters"),
        ):
            _, body = await self.get(server, f"/api/v1/measurement_meta?{query}", 400)
            self.assertIn(message, body["error"], query)

    @deferred_test
    async def test_asn_zero_is_not_found(self):
        """A fastpath row with probe_asn 0 is treated as missing by meta and raw."""
        server = await self.start()
        uid, line, m = self.seeded.with_input()
        row = fastpath_row_for(m, "20240102101112.000000_XX_test_0000000000000000")
        row.update(probe_asn=0, report_id="20240102T000000Z_test_XX_0_n1_abcdefghijklmnop")
        await seed_fastpath(server, [row])
        _, body = await self.get(
            server, f"/api/v1/measurement_meta?measurement_uid={row['measurement_uid']}"
        )
        self.assertEqual(body, {})
        _, body = await self.get(
            server, f"/api/v1/raw_measurement?measurement_uid={row['measurement_uid']}"
        )
        self.assertEqual(body, {})

    @deferred_test
    async def test_raw_measurement(self):
        """raw_measurement by uid and by report_id + input serves the archived body."""
        server = await self.start()
        for uid, line, m in self.seeded.items:
            response, body = await self.get(
                server, f"/api/v1/raw_measurement?measurement_uid={uid}"
            )
            self.assertEqual(body, m)
            self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
            self.assertEqual(response.headers.getRawHeaders("cache-control"), ["max-age=86400"])
        uid, line, m = self.seeded.with_input()
        _, body = await self.get(
            server,
            f"/api/v1/raw_measurement?report_id={m['report_id']}&input={quote(m['input'])}",
        )
        self.assertEqual(body, m)
        uid, line, m = self.seeded.without_input()
        _, body = await self.get(server, f"/api/v1/raw_measurement?report_id={m['report_id']}")
        self.assertEqual(body, m)
        response, body = await self.get(
            server, f"/api/v1/raw_measurement?measurement_uid={uid[:-4]}abcd"
        )
        self.assertEqual(body, {})
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["max-age=86400"])
        _, body = await self.get(server, "/api/v1/raw_measurement?report_id=BOGUS", 400)
        self.assertIn("Invalid report_id", body["error"])
        _, body = await self.get(server, "/api/v1/raw_measurement", 400)
        self.assertEqual(body, {"error": "Invalid report_id"})

    @deferred_test
    async def test_body_missing_everywhere(self):
        """A row whose body is nowhere is the spec's 500 Measurement not found, not a crash."""
        server = await self.start(archive=False)
        uid, _, m = self.seeded.with_input()
        response, body = await server.client.get(
            f"/api/v1/raw_measurement?measurement_uid={uid}"
        )
        self.assertEqual((response.code, body), (500, {"error": "Measurement not found"}))
        self.assertEqual(response.headers.getRawHeaders("access-control-allow-origin"), ["*"])
        _, body = await self.get(
            server, f"/api/v1/measurement_meta?measurement_uid={uid}&full=true"
        )
        self.assertEqual(body["raw_measurement"], "")
        self.assertEqual(body["measurement_uid"], uid)
        _, body = await self.get(server, f"/api/v1/measurement/{uid}", 400)
        self.assertEqual(body, {"error": "Incorrect or inexistent measurement_uid"})

    @deferred_test
    async def test_measurement_by_uid(self):
        """/api/v1/measurement/<uid> returns the archived line as stored, optionally as a file."""
        server = await self.start()
        uid, line, m = self.seeded.with_input()
        response, body = await self.get(server, f"/api/v1/measurement/{uid}")
        self.assertEqual(response.body, line + b"\n")
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["max-age=3600"])
        self.assertIsNone(response.headers.getRawHeaders("content-disposition"))
        response, body = await self.get(server, f"/api/v1/measurement/{uid}?download=True")
        self.assertEqual(body, m)
        self.assertEqual(response.headers.getRawHeaders("content-disposition"),
                         [f"attachment; filename=ooni_measurement-{uid}.json"])
        for bad in ("temp-id-999999999999999999", "x", uid[:-1]):
            _, body = await self.get(server, f"/api/v1/measurement/{bad}", 400)
            self.assertEqual(body, {"error": "Incorrect or inexistent measurement_uid"})

    @deferred_test
    async def test_legacy_rows_and_report_ids(self):
        """Archive rows without member offsets, and legacy report_ids, are still served."""
        server = await start_server(self, quiet_config(self))
        line, m = next((line, m) for line, m in usable_measurements() if m.get("input"))
        legacy = dict(m, report_id="20190720T201820Z_AS20115_" + "x" * 50)
        legacy_line = json.dumps(legacy).encode()
        uid = new_uid(RECEIVED, "US", "webconnectivity", legacy_line)
        await seed_fastpath(server, [fastpath_row_for(legacy, uid)])
        from ooni_twisted.storage.archive import build_jsonl_gz

        data, _ = build_jsonl_gz([b"{}", legacy_line])
        s3path = "raw/20240102/10/US/webconnectivity/2024010210_US_webconnectivity.n1.7.jsonl.gz"
        await server.context.archive.put(s3path, data)
        await server.clickhouse.insert(
            "jsonl", ("report_id", "input", "s3path", "linenum", "measurement_uid"),
            [(legacy["report_id"], legacy["input"], s3path, 1, "")],
        )
        _, body = await self.get(server, f"/api/v1/raw_measurement?measurement_uid={uid}")
        self.assertEqual(body, legacy)
        _, body = await self.get(server, f"/api/v1/measurement/{uid}")
        self.assertEqual(body, legacy)
