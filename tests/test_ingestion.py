"""
Ingestion: spooled envelopes become fastpath rows, archive lines and jsonl
rows; bad bodies go to the quarantine; a crash at any step loses nothing
and writes nothing twice.
"""

import base64
import csv
import json
import os
from datetime import datetime, timedelta, timezone

from twisted.internet import task
from twisted.internet.defer import ensureDeferred, fail
from twisted.trial import unittest

from ooni_twisted.measurements import ingestion
from ooni_twisted.measurements.ingestion import (
    DISCARDED,
    MEASUREMENT,
    QUARANTINED,
    Inline,
    Ingestor,
    Known,
    Malformed,
    Quarantine,
    load_fingerprints,
    plan_pass,
    prepare,
    run_sync,
    unwrap,
)
from ooni_twisted.probes.ids import import_uid_parts, measurement_uid
from ooni_twisted.storage import schema
from ooni_twisted.storage.archive import LocalArchive, line_at, read_member
from ooni_twisted.storage.clickhouse import ChdbBackend, ClickHouse, ClickHouseError
from ooni_twisted.storage.spool import SegmentSpool, Spool, write_sealed_segment

from .support import DATA, deferred_test, make_config, start_server

SEGMENT = "20240102030405000000-0badcafe"
FPS = load_fingerprints()


def sample_lines():
    """(file name, line bytes, object) of every line of all.jsonl."""
    with open(DATA.child("measurements").child("index.csv").path, newline="") as f:
        names = [row["file"] for row in csv.DictReader(f)]
    out = []
    with open(DATA.child("measurements").child("all.jsonl").path, "rb") as f:
        for name, line in zip(names, f):
            line = line.strip()
            out.append((name, line, json.loads(line)))
    return out


SAMPLES = sample_lines()


def envelope(line):
    return b'{"format":"json","content":' + line + b"}"


def uid_for(body, msm, received):
    cc, testname = import_uid_parts(msm.get("report_id"), msm)
    return measurement_uid(received, cc, testname, body)


def utcnow():
    return datetime.now(timezone.utc).replace(tzinfo=None)


def received_for(msm, n=0):
    """A reception time just after the measurement, so no date flag is set."""
    try:
        start = datetime.strptime(msm["measurement_start_time"], "%Y-%m-%d %H:%M:%S")
    except (KeyError, TypeError, ValueError):
        start = datetime(2024, 1, 2, 3, 4, 5)
    return start + timedelta(minutes=1, microseconds=n)


class PureTests(unittest.SynchronousTestCase):
    """Unwrapping, preparing and planning, without I/O."""

    def test_unwrap_compact_keeps_bytes(self):
        """A compact envelope's content is archived byte for byte."""
        line = b'{"a":"\\u00e9/\\/","n":1.50}'
        content, archived = unwrap(envelope(line))
        self.assertEqual(content, {"a": "\u00e9//", "n": 1.5})
        self.assertEqual(archived, line)

    def test_unwrap_other_shapes(self):
        """Spaced or reordered envelopes are re-serialised compactly, JSON-equal."""
        for body in (
            b'{"format": "json", "content": {"a": [1, 2]}}',
            b'{"content": {"a": [1, 2]}, "format": "json"}',
            b'{"format":"json","content":{"a":[1,2]},"extra":1}',
            b'{"format":"json","content":\n{"a":[1,2]}}',
            '{"format":"json","content":{"a":[1,2]}}'.encode("utf-16"),
        ):
            content, line = unwrap(body)
            self.assertEqual(content, {"a": [1, 2]}, body)
            self.assertEqual(line, b'{"a":[1,2]}', body)

    def test_unwrap_refuses(self):
        """Garbage, YAML, non-object content and non-envelopes raise Malformed with a reason."""
        cases = {
            b"not json": "invalid_json",
            b"\xff\xfe\x00garbage": "invalid_json",
            b"[1,2]": "not_an_envelope",
            b'{"format":"yaml","content":"---\\nfoo: 1\\n"}': "yaml_format",
            b'{"format":"json"}': "not_an_envelope",
            b'{"format":"json","content":[1]}': "content_not_an_object",
            b'{"format":"json","content":"text"}': "content_not_an_object",
            b"[" * 100000: "invalid_json",
        }
        for body, reason in cases.items():
            with self.assertRaises(Malformed) as caught:
                unwrap(body)
            self.assertEqual(caught.exception.reason, reason, body[:40])

    def test_prepare_kinds(self):
        """Measurements get a row, section 4.6 discards only a line, garbage a reason."""
        base = {"report_id": "r", "probe_cc": "IT", "probe_asn": "AS3269", "test_name": "ndt",
                "measurement_start_time": "2024-01-02 03:04:00", "input": None}
        uid = "20240102030405.000001_IT_ndt_0123456789abcdef"
        p = prepare(uid, envelope(json.dumps(base).encode()), FPS, SEGMENT)
        self.assertEqual((p.kind, p.row["probe_asn"], p.row["input"]), (MEASUREMENT, 3269, ""))
        for change, reason in (({"report_id": None}, "no_report_id"), ({"probe_cc": "zz"}, "probe_cc_zz"),
                               ({"probe_asn": "AS0"}, "probe_asn_0")):
            p = prepare(uid, envelope(json.dumps(dict(base, **change)).encode()), FPS, SEGMENT)
            self.assertEqual((p.kind, p.reason, p.row), (DISCARDED, reason, None))
            self.assertIsNotNone(p.line)
        p = prepare(uid, b"{{{", FPS, SEGMENT)
        self.assertEqual((p.kind, p.reason, p.body), (QUARANTINED, "invalid_json", b"{{{"))

    def test_prepare_lone_surrogate(self):
        """Text that cannot be UTF-8 is made safe for the insert; the archive keeps the escape."""
        line = b'{"report_id":"r\\ud800","probe_cc":"IT","probe_asn":"AS1","test_name":"x"}'
        p = prepare("20240102030405.000001_IT_x_0123456789abcdef", envelope(line), FPS, SEGMENT)
        p.row["report_id"].encode("utf-8")
        self.assertEqual(p.line, line)

    def _prepared(self, n, segment=SEGMENT, body=None):
        out = []
        for i in range(n):
            msm = {"report_id": f"r{i}", "probe_cc": "IT", "probe_asn": "AS1", "test_name": "ndt",
                   "measurement_start_time": "2024-01-02 03:04:00"}
            b = body or envelope(json.dumps(msm).encode())
            uid = measurement_uid(datetime(2024, 1, 2, 3, 4, 5, i), "IT", "ndt", b)
            out.append(prepare(uid, b, FPS, segment))
        return out

    def test_plan_duplicates_and_recovery(self):
        """Known uids write only what is missing; known or repeated contents are skipped."""
        same = self._prepared(3, body=envelope(b'{"report_id":"r","probe_cc":"IT","probe_asn":"AS1"}'))
        plan = plan_pass(same, Known(set(), set(), set()), "1")
        self.assertEqual((plan.stats.measurements, plan.stats.duplicates), (1, 2))
        items = self._prepared(3)
        first = plan_pass(items, Known(set(), set(), set()), "1")
        self.assertEqual(len(first.objects), 1)
        self.assertEqual(len(first.jsonl_rows), 3)
        known = Known({items[0].uid, items[1].uid}, {items[0].uid}, {items[0].hash, items[1].hash})
        again = plan_pass(items, known, "1")
        self.assertEqual(again.objects, first.objects)  # same bytes, same name
        self.assertEqual([r[4] for r in again.jsonl_rows], [items[2].uid])
        self.assertEqual([r[0] for r in again.fastpath_rows], [items[1].uid, items[2].uid])
        self.assertEqual(again.stats.recovered, 2)
        # a content stored under another uid is a duplicate
        other = Known(set(), set(), {items[2].hash})
        self.assertEqual(plan_pass(items, other, "1").stats.duplicates, 1)

    def test_plan_archive_layout(self):
        """Objects are named after hour, cc, test name, collector and segment."""
        plan = plan_pass(self._prepared(1), Known(set(), set(), set()), "bad.id")
        self.assertEqual(
            plan.objects[0][0],
            "raw/20240102/03/IT/ndt/2024010203_IT_ndt.nbadid.202401020304050000000badcafe.jsonl.gz",
        )


class PipelineFixture:
    """A data directory with chDB, a spool and a local archive, driven inline."""

    def setUp(self):
        self.base = os.path.abspath(self.mktemp())
        self.backend = ChdbBackend(os.path.join(self.base, "clickhouse"))
        self.addCleanup(self.backend.close)
        schema.migrate(self.backend)
        self.spool_dir = os.path.join(self.base, "spool")
        self.archive_dir = os.path.join(self.base, "archive")
        self.quarantine = Quarantine(os.path.join(self.base, "quarantine"))
        self.inline = Inline()
        self.fresh_process()

    def fresh_process(self, db=None, spool=None, archive=None):
        """What a restarted server would build; wrappers inject faults."""
        core = SegmentSpool(self.spool_dir).open()
        self.addCleanup(core.close)
        self.spool = Spool(core, self.inline, self.inline)
        self.db = ClickHouse(self.backend, self.inline, self.inline)
        self.archive = LocalArchive(self.archive_dir, self.inline, self.inline)
        self.ingestor = Ingestor(
            spool or self.spool, db or self.db, archive or self.archive, FPS, self.quarantine,
            self.inline, self.inline, collector_id="1",
        )
        return self.ingestor

    def drain(self):
        return run_sync(ensureDeferred(self.ingestor.drain()))

    def spool_records(self, records):
        return write_sealed_segment(self.spool_dir, records)

    def count(self, table, where="1"):
        return self.backend.query(f"SELECT count() AS n FROM {table} WHERE {where}")[0]["n"]

    def pending(self):
        return self.spool.core.pending_count() + len(self.spool.core.sealed())


class SampleTests(PipelineFixture, unittest.TestCase):
    """The real samples of tests/data through the whole pass."""

    def test_every_sample(self):
        """Each sample gets its row, flags and archive line; the identical pair is one row."""
        records, by_uid = [], {}
        for n, (name, line, msm) in enumerate(SAMPLES):
            body = envelope(line)
            uid = uid_for(body, msm, received_for(msm, n))
            records.append((uid, body))
            by_uid[uid] = (name, line, msm)
        self.spool_records(records[:20])
        self.spool_records(records[20:])
        stats = self.drain()
        self.assertEqual((stats.records, stats.measurements, stats.duplicates), (43, 42, 1))
        self.assertEqual(self.pending(), 0)
        rows = self.backend.query("SELECT * FROM fastpath")
        # report1.json and report1blocked.json share (measurement_start_time,
        # report_id, input): the engine keeps one row of the two (section 11.1)
        self.assertEqual(len(rows), 41)
        with open(DATA.child("measurements").child("index.csv").path, newline="") as f:
            index = {row["file"]: row for row in csv.DictReader(f)}
        flags = {}
        for row in rows:
            name, line, msm = by_uid[row["measurement_uid"]]
            expected = index[name]
            self.assertEqual(row["report_id"], expected["report_id"], name)
            self.assertEqual(row["test_name"], expected["test_name"], name)
            self.assertEqual(row["probe_cc"], expected["probe_cc"], name)
            asn = expected["probe_asn"]
            self.assertEqual(row["probe_asn"], int(asn[2:]) if asn else 0, name)
            if isinstance(msm.get("input"), list):
                self.assertEqual(row["input"], "{" + ",".join(msm["input"]) + "}")
            else:
                self.assertEqual(row["input"], msm.get("input") or "", name)
            self.assertEqual(json.loads(row["scores"]).get("confirmed", False), row["confirmed"] == "t")
            flags[name] = (row["anomaly"], row["confirmed"], row["msm_failure"])
        self.assertEqual(flags["bug_352.json"], ("t", "t", "f"))
        self.assertEqual(flags["bug_351.json"], ("t", "f", "t"))
        self.assertEqual(flags["web_connectivity_ir_fp.json"], ("t", "t", "f"))
        self.assertEqual(
            flags["20250527233111.802678_ID_webconnectivity_5a37ec909dbf14e3.json"][1], "t"
        )
        self.assertEqual(flags["test_keys_none.json"][2], "t")
        # every body reads back from its member, and from the whole object
        jsonl = self.backend.query("SELECT * FROM jsonl")
        self.assertEqual(len(jsonl), 42)
        for row in jsonl:
            name, line, msm = by_uid[row["measurement_uid"]]
            path = os.path.join(self.archive_dir, *row["s3path"].split("/"))
            with open(path, "rb") as f:
                data = f.read()
            member = data[row["byte_offset"] : row["byte_offset"] + row["byte_length"]]
            self.assertEqual(read_member(member), line + b"\n", name)
            self.assertEqual(line_at(data, row["linenum"]), line + b"\n", name)
            for fast in rows:
                if fast["measurement_uid"] == row["measurement_uid"]:
                    self.assertEqual((row["report_id"], row["input"]), (fast["report_id"], fast["input"]))

    def test_discarded_are_archived_only(self):
        """No report_id, ZZ or AS0: a jsonl row and an archive line, no fastpath row."""
        _, line, msm = SAMPLES[5]
        records = []
        for n, change in enumerate(({"probe_cc": "ZZ"}, {"probe_asn": "AS0"}, {"report_id": None})):
            m = dict(msm, **change)
            body = envelope(json.dumps(m).encode())
            records.append((uid_for(body, m, received_for(m, n)), body))
        self.spool_records(records)
        stats = self.drain()
        self.assertEqual((stats.measurements, stats.discarded), (0, 3))
        self.assertEqual(self.count("fastpath"), 0)
        self.assertEqual(self.count("jsonl"), 3)

    def test_counters_follow_inserts(self):
        """A recent web_connectivity of a listed URL shows in the prioritisation counters."""
        self.backend.insert(
            "citizenlab", ("domain", "url", "cc", "category_code"),
            [("www.example.org", "https://www.example.org/", "ZZ", "NEWS")],
        )
        _, _, msm = next(s for s in SAMPLES if s[2]["test_name"] == "web_connectivity")
        start = utcnow().replace(microsecond=0) - timedelta(hours=1)
        m = dict(msm, input="https://www.example.org/", probe_cc="IT", probe_asn="AS3269",
                 measurement_start_time=start.strftime("%Y-%m-%d %H:%M:%S"))
        body = envelope(json.dumps(m).encode())
        self.spool_records([(uid_for(body, m, utcnow()), body)])
        self.drain()
        rows = self.backend.query(
            "SELECT probe_cc, probe_asn, input, sum(msmt_cnt) AS n FROM counters_asn_test_list "
            "GROUP BY probe_cc, probe_asn, input"
        )
        self.assertEqual(rows, [{"probe_cc": "IT", "probe_asn": 3269,
                                 "input": "https://www.example.org/", "n": 1}])


class QuarantineTests(PipelineFixture, unittest.TestCase):
    """Bodies that cannot be ingested are kept aside with their reason."""

    def test_garbage_is_quarantined(self):
        """Each bad body lands in the quarantine with its reason; good neighbours are ingested."""
        _, line, msm = SAMPLES[1]
        good = envelope(line)
        bad = {
            b"garbage": "invalid_json",
            b"\xff\xfe\xfa binary": "invalid_json",
            b'{"format":"yaml","content":"foo: 1"}': "yaml_format",
            b'{"format":"json","content":[1,2,3]}': "content_not_an_object",
        }
        records = [(uid_for(good, msm, received_for(msm)), good)]
        for n, body in enumerate(bad):
            records.append((measurement_uid(datetime(2024, 1, 1, 0, 0, 0, n), "IT", "ndt", body), body))
        segment = self.spool_records(records)
        stats = self.drain()
        self.assertEqual((stats.measurements, stats.quarantined), (1, 4))
        self.assertEqual(self.pending(), 0)
        self.assertEqual(self.quarantine.names(), [segment])
        entries = self.quarantine.read(segment)
        got = {}
        for e in entries:
            body = e["body"].encode() if "body" in e else base64.b64decode(e["body_base64"])
            got[body] = e["reason"]
            self.assertEqual(e["source"], f"spool:{segment}")
            self.assertTrue(e["uid"].endswith(measurement_uid(datetime(2024, 1, 1), "IT", "ndt", body)[-16:]))
        self.assertEqual(got, bad)
        self.assertEqual(self.count("fastpath"), 1)

    def test_preparation_bug_is_quarantined(self):
        """An unexpected error while preparing one record quarantines it and the loop goes on."""
        _, line, msm = SAMPLES[1]
        body = envelope(line)
        uid = uid_for(body, msm, received_for(msm))
        self.patch(ingestion, "score_measurement", lambda m, f: 1 / 0)
        self.spool_records([(uid, body)])
        stats = self.drain()
        self.assertEqual(stats.quarantined, 1)
        entry = self.quarantine.read(self.quarantine.names()[0])[0]
        self.assertEqual((entry["reason"], entry["body"].encode()), ("internal_error", body))
        self.flushLoggedErrors(ZeroDivisionError)


class _FailingDB:
    """The real facade, with one simulated crash at an insert into C{table}."""

    def __init__(self, real, table):
        self._real = real
        self._table = table

    def insert(self, table, columns, rows):
        if table == self._table:
            return fail(ClickHouseError("simulated crash"))
        return self._real.insert(table, columns, rows)

    def run(self, *args):
        return self._real.run(*args)


class _FailingSpool:
    """The real spool, crashing at the remove() after C{allowed} ones."""

    def __init__(self, real, allowed=1):
        self._real = real
        self.core = real.core
        self.removes = 0
        self._allowed = allowed

    def remove(self, segment):
        self.removes += 1
        if self.removes > self._allowed:
            return fail(OSError("simulated crash before remove"))
        return self._real.remove(segment)

    def __getattr__(self, name):
        return getattr(self._real, name)


class _FailingArchive:
    def __init__(self, real):
        self._real = real
        self.puts = 0

    def put(self, s3path, data):
        self.puts += 1
        if self.puts > 1:
            return fail(OSError("simulated crash during upload"))
        return self._real.put(s3path, data)


class CrashTests(PipelineFixture, unittest.TestCase):
    """A pass cut short at any step is redone by the next process without duplicates."""

    def spool_samples(self):
        records = []
        for n, (_, line, msm) in enumerate(SAMPLES[:12]):
            body = envelope(line)
            records.append((uid_for(body, msm, received_for(msm, n)), body))
        self.spool_records(records[:6])
        self.spool_records(records[6:])
        return [uid for uid, _ in records]

    def crash_then_recover(self, **faults):
        uids = self.spool_samples()
        self.fresh_process(**faults)
        self.assertRaises(Exception, self.drain)
        self.fresh_process()  # "restart"
        self.drain()
        self.assertEqual(self.pending(), 0)
        fast = [r["measurement_uid"] for r in self.backend.query("SELECT measurement_uid FROM fastpath")]
        jsonl = [r["measurement_uid"] for r in self.backend.query("SELECT measurement_uid FROM jsonl")]
        self.assertEqual(sorted(fast), sorted(uids))
        self.assertEqual(sorted(jsonl), sorted(uids))
        for row in self.backend.query("SELECT * FROM jsonl"):
            path = os.path.join(self.archive_dir, *row["s3path"].split("/"))
            with open(path, "rb") as f:
                f.seek(row["byte_offset"])
                member = f.read(row["byte_length"])
            self.assertTrue(json.loads(read_member(member)))
        return uids

    def test_crash_before_fastpath_insert(self):
        """Archive and jsonl committed, fastpath not: the rerun adds only the fastpath rows."""
        self.crash_then_recover(db=_FailingDB(ClickHouse(self.backend, Inline(), Inline()), "fastpath"))
        totals = self.ingestor.totals
        self.assertEqual((totals.recovered, totals.measurements), (12, 12))

    def test_crash_before_jsonl_insert(self):
        """Archive written, no rows: the rerun writes the same objects and every row once."""
        self.crash_then_recover(db=_FailingDB(ClickHouse(self.backend, Inline(), Inline()), "jsonl"))

    def test_crash_during_upload(self):
        """Some objects uploaded, then a failure: nothing is lost."""
        self.crash_then_recover(archive=_FailingArchive(LocalArchive(self.archive_dir, Inline(), Inline())))

    def test_crash_between_removes(self):
        """Everything committed, one segment removed, then a crash: nothing is written twice."""
        self.crash_then_recover(spool=_FailingSpool(self.spool))
        totals = self.ingestor.totals
        self.assertEqual((totals.segments, totals.recovered, totals.measurements), (1, 6, 0))

    def test_replaced_row_stays_replaced(self):
        """Rows that replaced each other at insert are not brought back by a redone pass."""
        records = []
        for n, (_, line, msm) in enumerate(SAMPLES[14:18]):  # openvpn, report1*, report2
            body = envelope(line)
            records.append((uid_for(body, msm, received_for(msm, n)), body))
        self.spool_records(records)
        self.fresh_process(spool=_FailingSpool(self.spool, allowed=0))
        self.assertRaises(OSError, self.drain)
        self.assertEqual((self.count("fastpath"), self.count("jsonl")), (3, 4))
        self.fresh_process()
        self.drain()
        self.assertEqual((self.count("fastpath"), self.count("jsonl")), (3, 4))
        self.assertEqual(self.pending(), 0)

    def test_resubmitted_bytes_are_one_measurement(self):
        """The same body spooled again under a new uid is skipped as a duplicate."""
        _, line, msm = SAMPLES[3]
        body = envelope(line)
        self.spool_records([(uid_for(body, msm, received_for(msm, 1)), body)])
        self.drain()
        self.spool_records([(uid_for(body, msm, received_for(msm, 2)), body)])
        stats = self.drain()
        self.assertEqual((stats.duplicates, stats.measurements), (1, 0))
        self.assertEqual(self.count("fastpath"), 1)
        self.assertEqual(self.count("jsonl"), 1)


    def test_odd_report_id_duplicate(self):
        """Archived-only bodies whose report ids hold commas or quotes are found again."""
        _, _, msm = SAMPLES[3]
        m = dict(msm, report_id="a,b 'c'\\d", probe_cc="ZZ")  # no fastpath row
        body = envelope(json.dumps(m).encode())
        self.spool_records([(uid_for(body, m, received_for(m, 1)), body)])
        self.drain()
        self.spool_records([(uid_for(body, m, received_for(m, 2)), body)])
        self.assertEqual(self.drain().duplicates, 1)
        self.assertEqual(self.count("jsonl"), 1)


class TimerTests(PipelineFixture, unittest.TestCase):
    """The timer keeps running through failures."""

    def test_failures_do_not_stop_the_timer(self):
        """A failing pass is logged and retried on the next tick, which then succeeds."""
        _, line, msm = SAMPLES[1]
        body = envelope(line)
        self.spool_records([(uid_for(body, msm, received_for(msm)), body)])
        broken = _FailingDB(ClickHouse(self.backend, Inline(), Inline()), "fastpath")
        ingestor = self.fresh_process(db=broken)
        clock = task.Clock()
        service = ingestor.service(2.0, clock)
        service.startService()
        self.addCleanup(service.stopService)
        clock.advance(2)
        self.assertEqual(ingestor.failures, 2)
        self.assertEqual(len(self.flushLoggedErrors(ClickHouseError)), 2)
        ingestor._db = self.db  # the database is back
        clock.advance(2)
        self.assertEqual(ingestor.failures, 2)
        self.assertEqual(self.count("fastpath"), 1)
        self.assertEqual(self.pending(), 0)


class ServerTests(unittest.TestCase):
    """A running server ingests what probes submit."""

    @deferred_test
    async def test_submission_becomes_searchable(self):
        """A submitted measurement is searchable and served from the archive within seconds."""
        from twisted.internet import reactor

        server = await start_server(self, make_config(self.mktemp()))
        _, opened = await server.client.post(
            "/report", {"probe_cc": "IT", "probe_asn": "AS3269", "test_name": "web_connectivity"}
        )
        report_id = opened["report_id"]
        _, _, msm = next(s for s in SAMPLES if s[2]["test_name"] == "web_connectivity")
        now = utcnow().replace(microsecond=0)
        m = dict(msm, report_id=report_id, probe_cc="IT", probe_asn="AS3269",
                 measurement_start_time=now.strftime("%Y-%m-%d %H:%M:%S"))
        response, answer = await server.client.post(f"/report/{report_id}", {"format": "json", "content": m})
        uid = answer["measurement_uid"]
        found = []
        for _ in range(300):  # up to 30 s on a loaded machine
            _, page = await server.client.get(f"/api/v1/measurements?report_id={report_id}")
            found = page["results"]
            if found:
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual([r["measurement_uid"] for r in found], [uid])
        response, body = await server.client.get(f"/api/v1/measurement/{uid}")
        self.assertEqual((response.code, body), (200, m))
        self.assertEqual(server.context.spool.core.pending_count(), 0)
        self.assertGreaterEqual(server.context.ingestor.totals.measurements, 1)


class WorkerProcessTests(PipelineFixture, unittest.TestCase):
    """Step 1 in worker processes gives what it gives in process."""

    def setUp(self):
        PipelineFixture.setUp(self)
        from ooni_twisted.measurements.importer import WorkerPool

        self.workers = WorkerPool(1)
        self.addCleanup(self.workers.close)

    def records(self):
        return [
            (measurement_uid(utcnow(), "IT", "webconnectivity", line), line, "seg")
            for line in (
                json.dumps({"format": "json", "content": msm}, separators=(",", ":")).encode()
                for _, _, msm in SAMPLES[:8]
            )
        ] + [("20240101000000.000000_IT_webconnectivity_0123456789abcdef", b"garbage", "seg")]

    def test_same_as_in_process(self):
        """Rows, lines, members and quarantine reasons equal those prepared in process."""
        records = self.records()
        self.ingestor._workers = self.workers
        from_workers = self.ingestor._prepare_in_workers(list(records), list(range(len(records))))
        for (uid, body, segment), p in zip(records, from_workers):
            here = ingestion.prepare(uid, body, FPS, segment).compress()
            self.assertEqual(
                (p.uid, p.kind, p.reason, p.line, p.member, p.row, p.body),
                (here.uid, here.kind, here.reason, here.line, here.member, here.row, body),
            )

    def test_dead_worker_falls_back(self):
        """When the worker process dies, the pass is prepared in process and nothing is lost."""
        uid, body, _ = self.records()[0]
        self.spool_records([(uid, body)])
        self.ingestor._workers = self.workers
        for proc in self.workers._procs:
            proc.kill()
            proc.wait()
        stats = self.drain()
        self.assertEqual(stats.measurements, 1)
        self.assertIsNone(self.ingestor._workers)
        self.assertEqual(self.count("fastpath", f"measurement_uid = '{uid}'"), 1)
        from ooni_twisted.measurements.importer import WorkerFailed

        self.assertEqual(len(self.flushLoggedErrors(WorkerFailed)), 1)
