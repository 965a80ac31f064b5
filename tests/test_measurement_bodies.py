"""
Where bodies come from (api-routes.md section 5): a measurement submitted
over HTTP is served from the local spool, from a peer (a second server on
another port), and from the archive, local or S3 (moto's server on
loopback), reading only the measurement's own bytes.
"""

import datetime
import json
import logging
import os
import socket
import subprocess
import sys
import time

from twisted.internet import reactor, task
from twisted.internet.defer import ensureDeferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from ooni_twisted.measurements.bodies import (
    BodyFinder,
    first_found,
    lookup_order,
    peer_path,
    unwrap_envelope,
)
from ooni_twisted.storage.archive import archive_path, build_jsonl_gz

from .support import TestClient, deferred_test, http_client, start_server
from .test_measurement_fixtures import (
    envelope,
    fastpath_row_for,
    IDLE_INGESTION,
    new_uid,
    quiet_config,
    seed_fastpath,
    uid_parts,
    usable_measurements,
)

RECEIVED = datetime.datetime(2024, 3, 4, 5, 6, 7, 89)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class PeerProcess:
    """
    A second API server in its own process (twistd, as operators run it): one
    process can hold only one embedded chDB directory.
    """

    def __init__(self, testcase):
        self.testcase = testcase
        self.folder = os.path.abspath(testcase.mktemp())
        os.makedirs(self.folder)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = os.path.join(self.folder, "api.conf")
        with open(conf, "w") as f:
            f.write(
                "[api]\n"
                f"listen = tcp:{self.port}:interface=127.0.0.1\n"
                f"base_url = {self.url}\n"
                "data_dir = var\n"
                "development = true\n"
                "collector_id = 2\n"
                "clickhouse_threads = 2\n"
                f"ingest_interval = {IDLE_INGESTION}\n"
            )
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.log = open(os.path.join(self.folder, "twistd.log"), "wb")
        self.proc = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "ooni-api", "--config", conf],
            cwd=self.folder, stdout=self.log, stderr=subprocess.STDOUT,
        )
        testcase.addCleanup(self.stop)

    async def ready(self):
        client = http_client(self.testcase)
        for _ in range(300):
            if self.proc.poll() is not None:
                raise RuntimeError("peer server exited; see " + self.log.name)
            try:
                response = await client.get(self.url + "/health")
                await response.content()
                if response.code == 200:
                    return self
            except Exception:
                pass
            await task.deferLater(reactor, 0.05, lambda: None)
        raise RuntimeError("peer server did not start")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Silent(Protocol):
    """
    Accepts a connection and never answers (a hung peer).
    """


def sample():
    return next((line, m) for line, m in usable_measurements() if m.get("input"))


async def submit(client, line, m):
    """
    POST the measurement as a probe does; its uid.
    """
    response, body = await client.post(
        f"/report/{m['report_id']}", data=envelope(line),
        headers={b"Content-Type": [b"application/json"]},
    )
    assert response.code == 200, response.body
    return body["measurement_uid"]


class PureTests(unittest.SynchronousTestCase):
    def test_lookup_order(self):
        """Fresh new-format uids try the spool first, older ones the archive, legacy only it."""
        now = datetime.datetime(2024, 3, 4, 12, 0)
        rid = "20240304T110000Z_webconnectivity_IT_3269_n1_abcdefghijklmnop"
        self.assertEqual(lookup_order(rid, "20240304113000.000000_IT_webconnectivity_x", now),
                         ("spool", "peers", "archive"))
        self.assertEqual(lookup_order(rid, "20240304105900.000000_IT_webconnectivity_x", now),
                         ("archive", "spool", "peers"))
        self.assertEqual(lookup_order("20190720T201820Z_AS20115_" + "x" * 50, "2019x", now),
                         ("archive",))
        self.assertEqual(lookup_order(rid, "", now), ("archive",))

    def test_unwrap(self):
        """Only JSON envelopes unwrap, to JSON-equal content."""
        content = {"a": [1, 2.5, None], "b": "é\u2028"}
        data = json.dumps({"format": "json", "content": content}).encode()
        self.assertEqual(json.loads(unwrap_envelope(data)), content)
        for bad in (b"", b"[]", b'{"format":"yaml","content":"a: 1"}', b"\xff", b'{"format":"json"}'):
            self.assertIsNone(unwrap_envelope(bad))
        lone = b'{"format":"json","content":{"x":"\\ud800"}}'
        self.assertEqual(json.loads(unwrap_envelope(lone)), {"x": "\ud800"})

    def test_peer_path(self):
        """The peer path is the section 13.3 spool path; bad uids have none."""
        uid = "20210709005529.664022_MY_webconnectivity_68e5bea1060d1874"
        self.assertEqual(peer_path(uid),
                         f"/measurement_spool/2021070900_MY_webconnectivity/{uid}.post")
        self.assertIsNone(peer_path("../../etc/passwd"))

    def test_first_found(self):
        """The first non-None answer wins and the others are cancelled."""
        from twisted.internet.defer import Deferred

        cancelled = []
        slow = Deferred(lambda d: cancelled.append(d))
        slow.addErrback(lambda f: None)
        none, hit = Deferred(), Deferred()
        out = first_found([slow, none, hit])
        none.callback(None)
        self.assertNoResult(out)
        hit.callback(b"x")
        self.assertEqual(self.successResultOf(out), b"x")
        self.assertEqual(cancelled, [slow])
        self.assertIsNone(self.successResultOf(first_found([])))


class SpoolAndPeerTests(unittest.TestCase):
    @deferred_test
    async def test_from_spool(self):
        """A body submitted over HTTP is served from the local spool, JSON-equal."""
        server = await start_server(self, quiet_config(self))
        line, m = sample()
        uid = await submit(server.client, line, m)
        await seed_fastpath(server, [fastpath_row_for(m, uid)])
        response, body = await server.client.get(f"/api/v1/raw_measurement?measurement_uid={uid}")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, m)
        self.assertEqual(json.loads(await _finder(server).from_spool(uid)), m)
        self.assertIsNone(await _finder(server).from_archive(m["report_id"], m["input"], uid))
        _, meta = await server.client.get(
            f"/api/v1/measurement_meta?measurement_uid={uid}&full=true"
        )
        self.assertEqual(json.loads(meta["raw_measurement"]), m)

    @deferred_test
    async def test_from_peer(self):
        """A body spooled on another server is fetched from it over HTTP."""
        other = await PeerProcess(self).ready()
        dead = f"http://127.0.0.1:{free_port()}"
        server = await start_server(self, quiet_config(self, peers=f"{dead},{other.url}"))
        line, m = sample()
        uid = await submit(TestClient(self, other.url), line, m)
        await seed_fastpath(server, [fastpath_row_for(m, uid)])
        self.assertIsNone(await server.context.spool.get(uid))
        response, body = await server.client.get(f"/api/v1/raw_measurement?measurement_uid={uid}")
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(body, m)
        # a uid nobody has: every peer says 404, the answer is the spec's error
        missing = uid[:-4] + "0000"
        await seed_fastpath(server, [fastpath_row_for(m, missing)])
        response, body = await server.client.get(
            f"/api/v1/raw_measurement?measurement_uid={missing}"
        )
        self.assertEqual((response.code, body), (500, {"error": "Measurement not found"}))

    @deferred_test
    async def test_hung_peer_times_out(self):
        """A peer that never answers costs at most the peer timeout; a good peer still wins."""
        other = await start_server(self, quiet_config(self))
        port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        hung = f"http://127.0.0.1:{port.getHost().port}"
        line, m = sample()
        uid = await submit(other.client, line, m)

        def finder(peers):
            return BodyFinder(other.clickhouse, other.context.archive, lambda: None, peers,
                              http_client(self), reactor, peer_timeout=0.5)

        started = time.monotonic()
        self.assertEqual(json.loads(await finder([hung, other.test_url]).from_peers(uid)), m)
        self.assertLess(time.monotonic() - started, 0.4)
        started = time.monotonic()
        self.assertIsNone(await finder([hung]).from_peers(uid))
        self.assertLess(time.monotonic() - started, 1.5)
        await task.deferLater(reactor, 0.05, lambda: None)


def _finder(server):
    return BodyFinder(
        server.clickhouse, server.context.archive, lambda: server.context.spool, (),
        None, reactor,
    )


class ArchiveTests(unittest.TestCase):
    async def seed_archive(self, server):
        """
        Three measurements in one object whose middle member is garbage:
        reading the object whole would fail, ranged reads of the others work.
        """
        items = []
        for i, (line, m) in enumerate(usable_measurements()[:3]):
            cc, testname = uid_parts(m["report_id"])
            uid = new_uid(RECEIVED + datetime.timedelta(seconds=i), cc, testname, line)
            items.append((uid, line, m))
        data, spans = build_jsonl_gz([line for _, line, _ in items])
        start, length = spans[1]
        data = data[:start] + b"\x00garbage" * (length // 8 + 1) + data[start + length:]
        shift = len(b"\x00garbage" * (length // 8 + 1)) - length
        spans[2] = (spans[2][0] + shift, spans[2][1])
        s3path = archive_path("2024030405", "XX", "mixed", "1", "0")
        await server.context.archive.put(s3path, data)
        await seed_fastpath(server, [fastpath_row_for(m, uid) for uid, _, m in items])
        await server.clickhouse.insert(
            "jsonl",
            ("report_id", "input", "s3path", "linenum", "measurement_uid", "byte_offset",
             "byte_length"),
            [(m["report_id"], m.get("input") or "", s3path, n, uid, spans[n][0], spans[n][1])
             for n, (uid, _, m) in enumerate(items)],
        )
        return items

    async def check(self, server):
        items = await self.seed_archive(server)
        for n in (0, 2):
            uid, line, m = items[n]
            response, body = await server.client.get(f"/api/v1/measurement/{uid}")
            self.assertEqual(response.code, 200, response.body)
            self.assertEqual(response.body, line + b"\n")
            response, body = await server.client.get(
                f"/api/v1/raw_measurement?measurement_uid={uid}"
            )
            self.assertEqual(body, m)
        # the garbage member is simply not found
        response, body = await server.client.get(f"/api/v1/measurement/{items[1][0]}")
        self.assertEqual(response.code, 400)

    @deferred_test
    async def test_local_archive(self):
        """Bodies come from a local archive file by a seek to their own member."""
        server = await start_server(self, quiet_config(self))
        await self.check(server)

    @deferred_test
    async def test_s3_archive(self):
        """Bodies come from S3 (moto on loopback) by an HTTP Range request for their member."""
        import boto3
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        port = free_port()
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        moto.start()
        self.addCleanup(moto.stop)
        endpoint = f"http://127.0.0.1:{port}"

        def make_bucket():
            boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                         aws_secret_access_key="test",
                         region_name="us-east-1").create_bucket(Bucket="ooni-test")

        await deferToThread(make_bucket)
        server = await start_server(
            self,
            quiet_config(self, s3_bucket="ooni-test", s3_endpoint_url=endpoint,
                        s3_access_key="test", s3_secret_key="test", s3_region="us-east-1"),
        )

        async def close_archive():
            await server.context.archive.close()
            await task.deferLater(reactor, 0.05, lambda: None)

        self.addCleanup(lambda: ensureDeferred(close_archive()))
        self.assertEqual(type(server.context.archive).__name__, "S3Archive")
        await self.check(server)
