"""
End to end: a measurement submitted over HTTP becomes searchable, gets its
metadata and body, is served from the archive and listed with a working
download link, all within a few ingest intervals, even when the same query
was answered (and cached) without it just before.
"""

import gzip
import json
import time
from urllib.parse import quote

from twisted.internet import reactor, task
from twisted.trial import unittest

from .support import deferred_test, make_config, start_server
from .test_measurement_fixtures import envelope, usable_measurements

INTERVAL = 0.2


class EndToEndTests(unittest.TestCase):
    @deferred_test
    async def test_submitted_measurement_is_found(self):
        """Search, meta, raw, the archive route and the file listing all find a submission."""
        server = await start_server(
            self, make_config(self.mktemp(), ingest_interval=str(INTERVAL))
        )
        line, m = next((line, m) for line, m in usable_measurements() if m.get("input"))
        search = f"/api/v1/measurements?report_id={m['report_id']}"
        _, before = await server.client.get(search)
        self.assertEqual(before["results"], [])

        response, body = await server.client.post(
            f"/report/{m['report_id']}", data=envelope(line),
            headers={b"Content-Type": [b"application/json"]},
        )
        self.assertEqual(response.code, 200)
        uid = body["measurement_uid"]
        submitted = time.monotonic()

        found = None
        while time.monotonic() - submitted < 10:
            _, body = await server.client.get(search)
            if body["results"]:
                found = body["results"]
                break
            await task.deferLater(reactor, INTERVAL / 4, lambda: None)
        waited = time.monotonic() - submitted
        self.assertIsNotNone(found, "not searchable after 10 s")
        self.assertLess(waited, 10 * INTERVAL + 1.0)
        self.assertEqual([r["measurement_uid"] for r in found], [uid])
        self.assertEqual(found[0]["input"], m["input"])

        _, meta = await server.client.get(
            f"/api/v1/measurement_meta?measurement_uid={uid}&full=true"
        )
        self.assertEqual(meta["report_id"], m["report_id"])
        self.assertEqual(json.loads(meta["raw_measurement"]), m)
        _, meta = await server.client.get(
            f"/api/v1/measurement_meta?report_id={m['report_id']}&input={quote(m['input'])}"
        )
        self.assertEqual(meta["measurement_uid"], uid)
        _, raw = await server.client.get(f"/api/v1/raw_measurement?measurement_uid={uid}")
        self.assertEqual(raw, m)

        # archived within a few intervals as well (the archive-only route)
        archived = None
        while time.monotonic() - submitted < 10:
            response, archived = await server.client.get(f"/api/v1/measurement/{uid}")
            if response.code == 200:
                break
            await task.deferLater(reactor, INTERVAL / 4, lambda: None)
        self.assertEqual(archived, m)

        _, listing = await server.client.get(f"/api/v1/files?probe_cc={m['probe_cc']}")
        [entry] = listing["results"]
        self.assertEqual(entry["probe_asn"], m["probe_asn"])
        url = entry["download_url"]
        self.assertIn("/files/download/raw/", url)
        response, _ = await server.client.get(url.replace(server.config.base_url,
                                                          server.test_url))
        self.assertEqual(response.code, 200)
        lines = [json.loads(x) for x in gzip.decompress(response.body).splitlines()]
        self.assertIn(m, lines)
