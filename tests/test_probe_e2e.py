"""
Probe services end to end: every real measurement of tests/data travels over
HTTP through POST /report/<report_id> into fastpath, jsonl and the archive;
a server process killed with SIGKILL in the middle of a submission load
loses and duplicates nothing it acknowledged; malformed requests are 4xx
JSON and the server stays up.

chDB holds one data directory per process, so the crash test runs its server
as a twistd child process and reads that server's database from yet another
child (this module run as a script) once the server is gone.
"""

import hashlib
import json
import os
import signal
import socket
import sys
import time
from datetime import datetime, timezone

import zstandard
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from treq.client import HTTPClient

from ooni_twisted.measurements.fastpath_row import discard_reason
from ooni_twisted.measurements.ingestion import ENVELOPE_PREFIX_BYTES, load_fingerprints
from ooni_twisted.measurements.scoring import (
    flag_wrong_date,
    score_measurement,
    uid_reception_time,
)
from ooni_twisted.probes.ids import new_report_id, normalize_probe_asn, normalize_probe_cc
from ooni_twisted.storage.archive import read_member

from .support import DATA, HASH_KEY, JWT_KEY, deferred_test, make_config, start_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTOR_ID = "1"
#: How long ingestion may take to catch up before a test gives up.
INGEST_DEADLINE = 30.0


def measurement_lines():
    """The raw lines of all.jsonl (bytes, without the newline)."""
    with open(DATA.child("measurements").child("all.jsonl").path, "rb") as f:
        return [line for line in f.read().splitlines() if line.strip()]


def report_id_for(msm, now=None):
    """
    A new-format report_id for a measurement's test, country and network,
    as check-in or POST /report would hand out; ZZ/0 when it has none.
    """
    return new_report_id(
        msm.get("test_name") or "unknown",
        normalize_probe_cc(msm.get("probe_cc")),
        normalize_probe_asn(msm.get("probe_asn")),
        COLLECTOR_ID,
        now or datetime_utcnow(),
    )


def datetime_utcnow():
    return datetime.now(timezone.utc)


def expected_input(value):
    """The fastpath input column of a measurement's input (section 11.1)."""
    if value is None:
        return ""
    if isinstance(value, list):
        return "{" + ",".join(value) + "}"
    return value


def expected_flags(msm, uid, fingerprints):
    """
    (anomaly, confirmed, msm_failure) as 't'/'f' from the measurement's own
    scores, the way the reference fastpath derives them.
    """
    scores = score_measurement(msm, fingerprints)
    flag_wrong_date(scores, msm, uid_reception_time(uid))
    flags = (
        scores.get("blocking_general", 0.0) > 0.5,
        bool(scores.get("confirmed", False)),
        scores.get("accuracy", 1.0) < 0.5,
    )
    return tuple("t" if flag else "f" for flag in flags)


def body_variant(line):
    """
    0: zstd of the compact envelope; 1: the compact envelope; 2: a
    re-serialised envelope with the keys the other way round. Chosen from the
    line itself, so that identical lines give identical bodies.
    """
    return hashlib.sha256(line).digest()[0] % 3


def envelope_bytes(line, variant):
    if variant == 2:
        return json.dumps({"content": json.loads(line), "format": "json"}).encode("utf-8")
    return ENVELOPE_PREFIX_BYTES + line + b"}"


async def wait_until(predicate, deadline, what, interval=0.1):
    """Poll C{predicate} (maybe async) until true; fail after C{deadline} s."""
    give_up = time.monotonic() + deadline
    while True:
        value = predicate()
        if hasattr(value, "__await__"):
            value = await value
        if value:
            return value
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        await task.deferLater(reactor, interval, lambda: None)


class SubmissionTests(unittest.TestCase):
    """All of all.jsonl through a running server."""

    @deferred_test
    async def test_every_measurement_is_ingested(self):
        """Each submitted measurement reaches fastpath with its fields and flags and the archive with its body; the spool ends empty."""
        base = os.path.abspath(self.mktemp())
        server = await start_server(self, make_config(base, ingest_interval="0.2"))
        fingerprints = load_fingerprints()
        lines = measurement_lines()
        self.assertEqual(len(lines), 43)

        submitted = []  # (uid, content, line) in acknowledgement order
        route_discarded = []
        variants = set()
        for line in lines:
            msm = json.loads(line)
            now = datetime_utcnow()
            cc = normalize_probe_cc(msm.get("probe_cc"))
            asn = normalize_probe_asn(msm.get("probe_asn"))
            report_id = report_id_for(msm, now)
            variant = body_variant(line)
            variants.add(variant)
            body = envelope_bytes(line, variant)
            headers = {}
            data = body
            if variant == 0:
                data = zstandard.ZstdCompressor().compress(body)
                headers["Content-Encoding"] = ["zstd"]
            response, answer = await server.client.post(
                f"/report/{report_id}", data=data, headers=headers
            )
            self.assertEqual(response.code, 200, response.body[:200])
            if cc == "ZZ" or asn == 0:
                # section 4.6: acknowledged, nothing stored
                self.assertEqual(answer, {})
                route_discarded.append(msm)
                continue
            uid = answer["measurement_uid"]
            testname = report_id.split("_")[1]
            self.assertRegex(uid, rf"^20\d{{12}}\.\d{{6}}_{cc}_{testname}_[0-9a-f]{{16}}$")
            self.assertEqual(uid[-16:], hashlib.sha512(body).hexdigest()[:16])
            submitted.append((uid, msm, line))
        self.assertEqual(variants, {0, 1, 2})
        # the legacy meek measurement has no probe_cc / probe_asn at all
        self.assertEqual(len(route_discarded), 1)
        self.assertIsNone(route_discarded[0].get("probe_cc"))

        # section 4.6 at ingestion: a body saying AS0, sent under a good report id
        base_line = lines[1]
        as0 = dict(json.loads(base_line), probe_asn="AS0")
        as0_line = json.dumps(as0, separators=(",", ":")).encode("utf-8")
        _, answer = await server.client.post(
            f"/report/{report_id_for(json.loads(base_line))}",
            data=envelope_bytes(as0_line, 1),
        )
        as0_uid = answer["measurement_uid"]

        spool = server.context.spool
        await wait_until(
            lambda: spool.core.pending_count() == 0, INGEST_DEADLINE, "the spool to drain"
        )
        self.assertEqual(await spool.sealed(), [])

        db = server.clickhouse
        fastpath = await db.query(
            "SELECT measurement_uid, report_id, probe_cc, probe_asn, test_name, input, "
            "anomaly, confirmed, msm_failure FROM fastpath"
        )
        jsonl = await db.query(
            "SELECT measurement_uid, report_id, input, s3path, byte_offset, byte_length FROM jsonl"
        )
        by_uid = {}
        for row in fastpath:
            self.assertNotIn(row["measurement_uid"], by_uid, "fastpath row twice")
            by_uid[row["measurement_uid"]] = row
        jsonl_by_uid = {}
        for row in jsonl:
            self.assertNotIn(row["measurement_uid"], jsonl_by_uid, "jsonl row twice")
            jsonl_by_uid[row["measurement_uid"]] = row

        # identical lines are one measurement: the first acknowledged uid
        first_of_body = {}
        for uid, msm, line in submitted:
            first_of_body.setdefault(line, uid)
        stored = set(first_of_body.values())
        self.assertEqual(len(stored), len(submitted) - 1)  # all.jsonl repeats one line
        self.assertEqual(set(jsonl_by_uid), stored | {as0_uid})
        # fastpath is a ReplacingMergeTree on (measurement_start_time,
        # report_id, input): of two measurements sharing it (all.jsonl has
        # such a pair) the one received last stays
        last_of_key = {}
        for uid, msm, line in submitted:
            if uid in stored:
                key = (msm["measurement_start_time"], msm["report_id"], expected_input(msm.get("input")))
                last_of_key[key] = uid
        replaced = stored - set(last_of_key.values())
        self.assertEqual(len(replaced), 1)
        self.assertLessEqual(set(last_of_key.values()), set(by_uid))
        self.assertLessEqual(set(by_uid), stored)
        final = await db.query("SELECT measurement_uid FROM fastpath FINAL")
        self.assertEqual(sorted(r["measurement_uid"] for r in final), sorted(last_of_key.values()))

        flags_seen = set()
        for uid, msm, line in submitted:
            if uid not in by_uid:
                continue
            self.assertIsNone(discard_reason(msm))
            row = by_uid[uid]
            self.assertEqual(
                (row["probe_cc"], row["probe_asn"], row["test_name"], row["input"], row["report_id"]),
                (
                    msm["probe_cc"],
                    int(msm["probe_asn"][2:]),
                    msm["test_name"],
                    expected_input(msm.get("input")),
                    msm["report_id"],
                ),
                uid,
            )
            flags = (row["anomaly"], row["confirmed"], row["msm_failure"])
            self.assertEqual(flags, expected_flags(msm, uid, fingerprints), uid)
            flags_seen.update(f"{name}={value}" for name, value in zip(("a", "c", "f"), flags))
        # the sample has anomalies, confirmed blocking and (all being old) failures
        self.assertLessEqual({"a=t", "a=f", "c=t", "c=f", "f=t"}, flags_seen)

        archive = server.context.archive
        contents = {uid: msm for uid, msm, _ in submitted}
        contents[as0_uid] = as0
        for uid, row in jsonl_by_uid.items():
            self.assertEqual(
                (row["report_id"], row["input"]),
                (contents[uid]["report_id"], expected_input(contents[uid].get("input"))),
            )
            member = await archive.read_range(row["s3path"], row["byte_offset"], row["byte_length"])
            self.assertEqual(json.loads(read_member(member)), contents[uid], uid)
        self.assertEqual(server.context.ingestor.totals.duplicates, 1)
        self.assertEqual(server.context.ingestor.totals.discarded, 1)


class RejectionTests(unittest.TestCase):
    """What the probe-route tests leave out of 'bad requests are 4xx JSON'."""

    @deferred_test
    async def test_bad_requests_are_json_4xx(self):
        """Oversized bodies, wrong content types and unparsable JSON are 4xx JSON, and submissions keep working."""
        base = os.path.abspath(self.mktemp())
        server = await start_server(
            self, make_config(base, max_body_size="100000", ingest_interval="3600")
        )
        good = "20230101T000000Z_webconnectivity_IT_30722_n1_abcdefghijklmnop"
        client = server.client

        response, body = await client.post(f"/report/{good}", data=b"x" * 100001)
        self.assertEqual((response.code, body), (413, {"error": "Request body too large"}))
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])

        for data in (b"{not json", b"[]", b"\xff\xfe", b""):
            response, body = await client.post("/report", data=data)
            self.assertEqual(response.code, 400, data)
            self.assertIsInstance(body["error"], str)
        response, body = await client.post(
            "/api/v1/register", data=b"{}", headers={"Content-Type": ["text/plain"]}
        )
        self.assertEqual((response.code, body), (400, {"error": "error: JSON expected!"}))

        # a submission that is not a JSON envelope is refused, not stored
        response, body = await client.post(f"/report/{good}", data=b"not json at all")
        self.assertEqual((response.code, body), (400, {"error": "Incorrect format"}))
        response, body = await client.get("/health")
        self.assertEqual(response.code, 200)


# -- the crash test -------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(base):
    """A configuration file for a server process on a free port: (path, port)."""
    port = free_port()
    path = os.path.join(base, "api.conf")
    with open(path, "w", encoding="utf-8") as f:
        f.write(
            "[api]\n"
            f"listen = tcp:{port}:interface=127.0.0.1\n"
            "data_dir = var\n"
            f"jwt_encryption_key = {JWT_KEY}\n"
            f"account_id_hashing_key = {HASH_KEY}\n"
            f"collector_id = {COLLECTOR_ID}\n"
            "ingest_interval = 0.2\n"
            "clickhouse_threads = 4\n"
        )
    return path, port


def child_env():
    env = dict(os.environ)
    env["TZ"] = "UTC"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return env


class ChildProcess(protocol.ProcessProtocol):
    """A child whose output is kept (for failure messages) and whose end is awaited."""

    def __init__(self):
        self.output = bytearray()
        self.ended = defer.Deferred()
        self.status = None

    def outReceived(self, data):
        self.output += data[-65536:]

    errReceived = outReceived

    def processEnded(self, reason):
        self.status = reason.value
        self.ended.callback(None)


class TwistdServer:
    """`twistd -n ooni-api` on a loopback port, as a child of the test."""

    def __init__(self, testcase, config_path, port):
        self.testcase = testcase
        self.config_path = config_path
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.child = None

    async def start(self, http):
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.child = ChildProcess()
        reactor.spawnProcess(
            self.child,
            twistd,
            [twistd, "-n", "--pidfile=", "ooni-api", "--config", self.config_path],
            env=child_env(),
            path=os.path.dirname(self.config_path),
        )
        child = self.child
        self.testcase.addCleanup(self._reap, child)

        async def healthy():
            if child.ended.called:
                raise AssertionError(f"the server exited: {bytes(child.output)[-3000:]!r}")
            try:
                response = await http.get(self.url + "/health")
                await response.content()
                return response.code == 200
            except Exception:
                return False

        await wait_until(healthy, 60, "the server to answer /health", interval=0.2)

    def signal(self, name):
        self.child.transport.signalProcess(name)

    async def stop(self, name="TERM"):
        child = self.child
        if not child.ended.called:
            self.signal(name)
        await child.ended
        return child

    async def _reap(self, child):
        if not child.ended.called:
            child.transport.signalProcess("KILL")
            await child.ended


def load_templates(lines):
    """
    (report_id parts, envelope prefix, envelope suffix) for each line the
    route stores and ingestion keeps: a fresh report_id spliced in between
    makes every body -- and so every measurement -- distinct.
    """
    out = []
    for line in lines:
        if len(line) > 64 * 1024:
            continue  # keep the load quick
        msm = json.loads(line)
        cc = normalize_probe_cc(msm.get("probe_cc"))
        asn = normalize_probe_asn(msm.get("probe_asn"))
        if cc == "ZZ" or asn == 0:
            continue
        msm["report_id"] = "@RID@"
        text = json.dumps(msm, separators=(",", ":")).encode("utf-8")
        before, after = text.split(b'"@RID@"')
        out.append((msm["test_name"], cc, asn, ENVELOPE_PREFIX_BYTES + before + b'"', b'"' + after + b"}"))
    return out


def count_rows(config_path):
    """
    Print {table: {measurement_uid: rows}} for fastpath and jsonl (run in a
    process of its own, after the server is gone).
    """
    from ooni_twisted.config import load_config
    from ooni_twisted.storage.clickhouse import open_backend

    backend = open_backend(load_config(config_path))
    try:
        result = {}
        for table in ("fastpath", "jsonl"):
            rows = backend.query(
                f"SELECT measurement_uid, count(*) AS n FROM {table} GROUP BY measurement_uid"
            )
            result[table] = {r["measurement_uid"]: int(r["n"]) for r in rows}
    finally:
        backend.close()
    sys.stdout.write(json.dumps(result))


class CrashTests(unittest.TestCase):
    """SIGKILL in the middle of a submission load."""

    WORKERS = 16
    #: Acknowledgements to collect before the kill.
    KILL_AFTER = 300
    #: Requests per worker at most (bounded load).
    MAX_PER_WORKER = 400

    def setUp(self):
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = self.WORKERS
        self.pool.retryAutomatically = False
        self.http = HTTPClient(Agent(reactor, pool=self.pool))

    def tearDown(self):
        return self.pool.closeCachedConnections()

    async def load(self, server, templates, acked, stop, number):
        """One client: submit until told to stop or the server goes away."""
        for i in range(self.MAX_PER_WORKER):
            if stop:
                return
            testname, cc, asn, before, after = templates[(number + i * 7) % len(templates)]
            report_id = new_report_id(testname, cc, asn, COLLECTOR_ID, datetime_utcnow())
            body = before + report_id.encode("ascii") + after
            try:
                response = await self.http.post(f"{server.url}/report/{report_id}", data=body)
                answer = json.loads(await response.content())
            except Exception:
                return  # killed under our feet
            if response.code != 200:
                raise AssertionError(f"submission answered {response.code}: {answer}")
            acked.append(answer["measurement_uid"])

    @deferred_test
    async def test_sigkill_loses_no_acknowledged_measurement(self):
        """After SIGKILL mid-load and a restart, every acknowledged uid is in fastpath and jsonl exactly once."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        config_path, port = write_config(base)
        server = TwistdServer(self, config_path, port)
        await server.start(self.http)
        templates = load_templates(measurement_lines())
        self.assertGreater(len(templates), 20)

        acked, stop = [], []
        workers = [
            defer.ensureDeferred(self.load(server, templates, acked, stop, n))
            for n in range(self.WORKERS)
        ]
        await wait_until(
            lambda: len(acked) >= self.KILL_AFTER, 30, f"{self.KILL_AFTER} acknowledgements", 0.02
        )
        server.signal("KILL")
        child = await server.stop()
        stop.append(True)
        await defer.gatherResults(workers, consumeErrors=True)
        self.assertEqual(child.status.signal, signal.SIGKILL)
        acknowledged = set(acked)
        self.assertEqual(len(acknowledged), len(acked))
        spool_dir = os.path.join(base, "var", "spool", "segments")
        left = os.listdir(spool_dir)

        await self.pool.closeCachedConnections()
        await server.start(self.http)
        # the restarted server recovers the killed one's segments and drains them
        await wait_until(
            lambda: not os.listdir(spool_dir), INGEST_DEADLINE, "the spool to drain", 0.2
        )
        await self.pool.closeCachedConnections()
        child = await server.stop("TERM")
        # twistd ends a clean SIGTERM shutdown by re-raising the signal
        self.assertIn(
            (child.status.exitCode, child.status.signal),
            {(0, None), (None, signal.SIGTERM)},
            bytes(child.output)[-3000:],
        )

        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "tests.test_probe_e2e", "count-rows", config_path],
            env=child_env(),
            path=ROOT,
        )
        self.assertEqual(code, 0, err[-3000:])
        counts = json.loads(out)
        fastpath, jsonl = counts["fastpath"], counts["jsonl"]
        missing = acknowledged - set(fastpath)
        self.assertEqual(missing, set(), f"{len(missing)} acknowledged but not ingested")
        self.assertEqual(acknowledged - set(jsonl), set())
        twice = {u: n for u, n in fastpath.items() if n != 1}
        self.assertEqual(twice, {}, "fastpath rows more than once")
        self.assertEqual({u: n for u, n in jsonl.items() if n != 1}, {})
        # in-flight submissions may or may not have made it; nothing else did
        self.assertLessEqual(len(fastpath) - len(acknowledged), self.WORKERS)
        # the kill left a segment for recovery to finish (else the test proves little)
        self.assertTrue(left)


if __name__ == "__main__" and sys.argv[1:2] == ["count-rows"]:
    count_rows(sys.argv[2])
