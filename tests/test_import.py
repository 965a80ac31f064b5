"""
ooni-api-admin import-measurements: files of every supported kind, messy
real-world data, duplicates, and imports into a running server.
"""

import gzip
import io
import json
import logging
import os
import secrets
from datetime import datetime, timezone
from urllib.parse import urlencode

from twisted.internet import task, threads
from twisted.trial import unittest

from ooni_twisted import admin
from ooni_twisted.measurements import importer
from ooni_twisted.measurements.importer import (
    BadLine,
    WorkerFailed,
    WorkerPool,
    iter_files,
    iter_lines,
    measurement_record,
)
from ooni_twisted.measurements.ingestion import Quarantine
from ooni_twisted.probes.ids import measurement_uid
from ooni_twisted.storage.archive import read_member
from ooni_twisted.storage.clickhouse import ChdbBackend
from ooni_twisted.storage.spool import validate_uid, write_sealed_segment

from .support import DATA, HASH_KEY, JWT_KEY, deferred_test, make_config, start_server

ALL = DATA.child("measurements").child("all.jsonl").path
UID_RE = r"^20\d{12}\.\d{6}_[A-Za-z0-9]{2}_[A-Za-z0-9]+_[0-9a-f]{16}$"


def lines():
    with open(ALL, "rb") as f:
        return [line.strip() for line in f]


def write_conf(base, extra=""):
    os.makedirs(base, exist_ok=True)
    path = os.path.join(base, "api.conf")
    with open(path, "w") as f:
        f.write(
            "[api]\nlisten = tcp:0:interface=127.0.0.1\ndata_dir = var\ncollector_id = 1\n"
            f"jwt_encryption_key = {JWT_KEY}\naccount_id_hashing_key = {HASH_KEY}\n" + extra
        )
    return path


def run_admin(conf, *argv):
    out, err = io.StringIO(), io.StringIO()
    code = admin.run(["--config", conf] + list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


class Database:
    """Open the data directory after the command ended, to look at it."""

    def __init__(self, testcase, base):
        self.base = base
        self.backend = ChdbBackend(os.path.join(base, "var", "clickhouse"))
        testcase.addCleanup(self.backend.close)

    def count(self, table, where="1"):
        return self.backend.query(f"SELECT count() AS n FROM {table} WHERE {where}")[0]["n"]

    def query(self, sql):
        return self.backend.query(sql)

    def archived(self, row):
        path = os.path.join(self.base, "var", "archive", *row["s3path"].split("/"))
        with open(path, "rb") as f:
            f.seek(row["byte_offset"])
            return read_member(f.read(row["byte_length"]))


class PureTests(unittest.SynchronousTestCase):
    """Reading files and making records, without the database."""

    def test_record(self):
        """A line becomes the envelope of its exact bytes with a submission-format uid."""
        when = datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
        line = lines()[3]  # bug_351.json, a legacy report id
        uid, envelope, content, archived = measurement_record(line, when)
        self.assertEqual(envelope, b'{"format":"json","content":' + line + b"}")
        self.assertEqual(archived, line)
        self.assertEqual(content["probe_cc"], "NL")
        self.assertRegex(uid, UID_RE)
        self.assertTrue(uid.startswith("20240102030405.000006_NL_webconnectivity_"))
        new_format = measurement_record(lines()[0], when)[0]
        self.assertTrue(new_format.startswith("20240102030405.000006_ID_webconnectivity_"))

    def test_record_odd_fields(self):
        """Odd country codes, long or missing test names still give a valid uid."""
        when = datetime(2024, 1, 2, tzinfo=timezone.utc)
        for obj in ({"probe_cc": "USA"}, {"probe_cc": 7, "test_name": "x" * 200}, {}, {"report_id": 5}):
            uid = measurement_record(json.dumps(obj).encode(), when)[0]
            validate_uid(uid)

    def test_pretty_object_is_stored_compact(self):
        """A pretty-printed object is stored as compact JSON (a JSONL line needs one line)."""
        uid, envelope, content, archived = measurement_record(b'{\n  "a": [1,\n 2]\n}', datetime(2024, 1, 1))
        self.assertEqual(archived, b'{"a":[1,2]}')
        self.assertEqual(envelope, b'{"format":"json","content":{"a":[1,2]}}')

    def test_bad_lines(self):
        """Lines that are not JSON objects raise BadLine with a reason."""
        for data, reason in ((b"{nope", "invalid_json"), (b"[1]", "not_an_object"), (b"3", "not_an_object")):
            with self.assertRaises(BadLine) as caught:
                measurement_record(data, datetime(2024, 1, 1))
            self.assertEqual(caught.exception.reason, reason)

    def test_progress_line(self):
        """The progress counter rewrites one line, at most every quarter second unless forced."""
        now = [100.0]
        stream = io.StringIO()
        progress = importer.Progress(stream, clock=lambda: now[0])
        stats = importer.ImportStats(read=10, measurements=7, run_duplicates=2, bad_lines=1)
        now[0] += 2
        progress.show(stats)
        progress.show(stats)  # too soon: nothing
        progress.show(stats, force=True)
        progress.done()
        lines_written = stream.getvalue().split("\r")[1:]
        self.assertEqual(len(lines_written), 2)
        self.assertTrue(lines_written[0].startswith(
            "import-measurements: 10 read, 7 stored, 2 duplicates, 1 quarantined, 5/s"
        ))
        self.assertTrue(stream.getvalue().endswith("\n"))
        importer.Progress(None).show(stats, force=True)  # no terminal: silent

    def test_walk_and_read(self):
        """Directories are walked in order; .json is one item, .jsonl one per non-blank line."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(base, "b"))
        with open(os.path.join(base, "b", "x.jsonl"), "wb") as f:
            f.write(b'\xef\xbb\xbf{"a":1}\n\n  {"a":2}  \r\n')
        with open(os.path.join(base, "a.json"), "wb") as f:
            f.write(b'\n{\n"a": 3\n}\n')
        with open(os.path.join(base, "notes.txt"), "w") as f:
            f.write("x")
        found = list(iter_files([base]))
        self.assertEqual(
            [(os.path.relpath(p, base), k) for p, k in found],
            [("a.json", "object"), ("notes.txt", None), ("b/x.jsonl", "lines")],
        )
        self.assertEqual(list(iter_lines(found[2][0], "lines")), [(1, b'{"a":1}'), (3, b'{"a":2}')])
        self.assertEqual(list(iter_lines(found[0][0], "object")), [(1, b'{\n"a": 3\n}')])


class WorkerPoolTests(unittest.SynchronousTestCase):
    """Worker processes answer in order and fail loudly."""

    def test_order_and_death(self):
        """Chunks come back in submission order; a dead worker raises WorkerFailed."""
        pool = WorkerPool(2)
        self.addCleanup(pool.close)
        chunks = [[(i, line)] for i, line in enumerate(lines()[:6], 1)]
        pending = [pool.submit(chunk, True) for chunk in chunks]
        for chunk, p in zip(chunks, pending):
            (number, uid, line, prepared), = p.result()
            self.assertEqual((number, line), chunk[0])
            self.assertEqual(prepared.uid, uid)
            self.assertIsNotNone(prepared.member)
        pool._procs[0].kill()
        pool._procs[0].wait()
        with self.assertRaises(WorkerFailed):
            pool.submit(chunks[0], True).result()


class DirectImportTests(unittest.TestCase):
    """Without a server the command ingests in process."""

    def setUp(self):
        self.base = os.path.abspath(self.mktemp())
        self.conf = write_conf(self.base)

    def test_all_samples_and_duplicates(self):
        """The samples import with exact bodies; a second import skips every one of them."""
        code, out, err = run_admin(self.conf, "import-measurements", ALL)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("read 43 measurements from 1 files", out)
        self.assertIn("42 searchable", out)
        self.assertIn("1 duplicates skipped", out)
        code, out, err = run_admin(self.conf, "import-measurements", ALL)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("0 searchable, 0 archived only (no report_id, ZZ or AS0), 43 duplicates skipped", out)
        db = Database(self, self.base)
        self.assertEqual(db.count("jsonl"), 42)
        self.assertEqual(db.count("fastpath"), 41)  # report1 / report1blocked share a key
        originals = set(lines())
        for row in db.query("SELECT * FROM jsonl"):
            self.assertRegex(row["measurement_uid"], UID_RE)
            self.assertIn(db.archived(row)[:-1], originals)
        legacy = db.query(
            "SELECT measurement_uid, msm_failure FROM fastpath WHERE report_id LIKE '20200229T014316Z_AS5390_%'"
        )
        self.assertEqual(len(legacy), 1)
        self.assertRegex(legacy[0]["measurement_uid"], r"_NL_webconnectivity_")
        self.assertEqual(legacy[0]["msm_failure"], "t")  # received today, started in 2020

    def test_messy_files(self):
        """Bucket layout, gzip, null parts, list inputs and garbage: all ingested or quarantined."""
        src = os.path.join(self.base, "src")
        hour = os.path.join(src, "raw", "20190720", "20", "US", "webconnectivity")
        os.makedirs(hour)
        sample = json.loads(lines()[3])  # a web_connectivity measurement
        good = [
            dict(sample, report_id="20190720T201820Z_AS20115_" + "x" * 50, probe_cc="US",
                 probe_asn="AS20115"),
            dict(sample, report_id="20190720T201820Z_AS20115_" + "y" * 50, probe_cc="US",
                 probe_asn="AS20115", test_keys=None),
            dict(sample, report_id="r3", probe_cc="US", probe_asn="AS1",
                 test_keys={"requests": None, "queries": [None], "blocking": None}),
            dict(json.loads(lines()[11]), report_id="r4"),  # meek: input is a list
        ]
        body = b"\n".join(json.dumps(m).encode() for m in good)
        body += b"\nnot json at all\n[1, 2, 3]\n" + json.dumps(dict(sample, report_id=None)).encode()
        with gzip.open(os.path.join(hour, "2019072020_US_webconnectivity.n0.0.jsonl.gz"), "wb") as f:
            f.write(body + b"\n")
        with gzip.open(os.path.join(hour, "broken.jsonl.gz"), "wb") as f:
            f.write(json.dumps(dict(sample, report_id="r5")).encode() + b"\n" + b"x" * 5000)
        path = os.path.join(hour, "broken.jsonl.gz")
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) - 30])  # truncated in the middle of the stream
        with open(os.path.join(src, "pretty.json"), "w") as f:
            json.dump(dict(sample, report_id="r6"), f, indent=2)
        with open(os.path.join(src, "old.yaml"), "w") as f:
            f.write("---\nfoo: bar\n")
        with open(os.path.join(src, "index.csv"), "w") as f:
            f.write("a,b\n")
        code, out, err = run_admin(self.conf, "import-measurements", src)
        self.assertEqual((code, err), (0, ""), out)
        self.assertIn("skipped 1 files of other types", out)
        self.assertIn("6 searchable, 1 archived only", out)
        self.assertIn("4 quarantined", out)
        db = Database(self, self.base)
        rows = {r["report_id"]: r for r in db.query("SELECT * FROM fastpath")}
        self.assertEqual(sorted(rows), sorted([m["report_id"] for m in good] + ["r5", "r6"]))
        legacy = rows[good[0]["report_id"]]
        self.assertRegex(legacy["measurement_uid"], r"^20\d{12}\.\d{6}_US_webconnectivity_[0-9a-f]{16}$")
        self.assertEqual(rows[good[1]["report_id"]]["msm_failure"], "t")
        self.assertEqual(rows["r4"]["input"], "{" + ",".join(good[3]["input"]) + "}")
        # bodies come back JSON-equal (the pretty one compacted)
        for row in db.query("SELECT * FROM jsonl WHERE report_id = 'r6'"):
            self.assertEqual(json.loads(db.archived(row)), dict(sample, report_id="r6"))
        q = Quarantine(os.path.join(self.base, "var", "quarantine"))
        entries = [e for name in q.names() for e in q.read(name)]
        reasons = sorted((os.path.basename(e["source"]), e["reason"]) for e in entries)
        self.assertEqual(
            reasons,
            [
                ("2019072020_US_webconnectivity.n0.0.jsonl.gz:5", "invalid_json"),
                ("2019072020_US_webconnectivity.n0.0.jsonl.gz:6", "not_an_object"),
                ("broken.jsonl.gz", "unreadable_file"),
                ("old.yaml", "yaml_report"),
            ],
        )
        bad = [e for e in entries if e["reason"] == "invalid_json"][0]
        self.assertEqual(bad["body"], "not json at all")

    def test_worker_processes(self):
        """With worker processes the result is the same as in process."""
        self.patch(importer, "PARALLEL_MIN_BYTES", 0)
        self.patch(importer, "CHUNK_LINES", 5)
        code, out, err = run_admin(self.conf, "import-measurements", ALL)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("42 searchable", out)
        self.assertIn("1 duplicates skipped", out)
        db = Database(self, self.base)
        self.assertEqual((db.count("jsonl"), db.count("fastpath")), (42, 41))
        originals = set(lines())
        for row in db.query("SELECT * FROM jsonl"):
            self.assertIn(db.archived(row)[:-1], originals)

    def test_not_utf8(self):
        """A raw surrogate is stored re-encoded; other bytes that are not UTF-8 are quarantined."""
        src = os.path.join(self.base, "odd.jsonl")
        sample = lines()[1]
        with open(src, "wb") as f:
            f.write(sample.replace(b'"Bell Canada"', b'"Bell \xed\xa0\x80"') + b"\n")
            f.write(sample.replace(b'"Bell Canada"', b'"Bell \xff"') + b"\n")
        code, out, err = run_admin(self.conf, "import-measurements", src)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("1 searchable", out)
        self.assertIn("1 quarantined", out)
        db = Database(self, self.base)
        row = db.query("SELECT * FROM jsonl")[0]
        self.assertEqual(json.loads(db.archived(row))["probe_network_name"], "Bell \ud800")

    def test_leftover_segments_first(self):
        """Segments left in the spool by a stopped server are ingested before the files."""
        line = lines()[1]
        envelope = b'{"format":"json","content":' + line + b"}"
        uid = measurement_uid(datetime(2023, 3, 20, 18, 28), "CA", "browserweb", envelope)
        write_sealed_segment(os.path.join(self.base, "var", "spool"), [(uid, envelope)])
        code, out, err = run_admin(self.conf, "import-measurements", ALL)
        self.assertEqual(code, 0, err)
        self.assertIn("finished 1 measurements left in the spool (1 searchable)", out)
        # the same bytes from the file are then a duplicate
        self.assertIn("41 searchable", out)
        self.assertIn("2 duplicates skipped", out)

    def test_errors(self):
        """A missing path or a directory held by another process is one clear line."""
        code, out, err = run_admin(self.conf, "import-measurements", os.path.join(self.base, "nope"))
        self.assertEqual(code, 1)
        self.assertIn("no such file or directory", err)
        holder = ChdbBackend(os.path.join(self.base, "var", "clickhouse"))
        self.addCleanup(holder.close)
        code, out, err = run_admin(self.conf, "import-measurements", ALL)
        self.assertEqual(code, 1)
        self.assertIn("which is not a server taking imports", err)


class S3ImportTests(unittest.TestCase):
    """With s3_bucket set, bodies are archived in the bucket."""

    def test_import_to_s3(self):
        """Imported bodies land in the bucket; one member reads back by its span."""
        import boto3
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        self.addCleanup(server.stop)
        endpoint = "http://%s:%d" % server.get_host_and_port()
        bucket = "ooni-import-" + secrets.token_hex(4)
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
        s3.create_bucket(Bucket=bucket)
        base = os.path.abspath(self.mktemp())
        conf = write_conf(
            base,
            f"s3_bucket = {bucket}\ns3_endpoint_url = {endpoint}\n"
            "s3_access_key = testing\ns3_secret_key = testing\ns3_region = us-east-1\n",
        )
        code, out, err = run_admin(conf, "import-measurements", ALL)
        self.assertEqual((code, err), (0, ""))
        self.assertFalse(os.path.exists(os.path.join(base, "var", "archive", "raw")))
        db = Database(self, base)
        row = db.query("SELECT * FROM jsonl ORDER BY measurement_uid LIMIT 1")[0]
        end = row["byte_offset"] + row["byte_length"] - 1
        got = s3.get_object(Bucket=bucket, Key=row["s3path"], Range=f"bytes={row['byte_offset']}-{end}")
        self.assertIn(read_member(got["Body"].read())[:-1], set(lines()))


class ServerImportTests(unittest.TestCase):
    """While a server holds the data directory, it ingests what the command spools."""

    @deferred_test
    async def test_import_through_server(self):
        """The command hands batches to the server, which ingests them and skips duplicates."""
        from twisted.internet import reactor

        base = os.path.abspath(self.mktemp())
        conf = write_conf(base)
        server = await start_server(self, make_config(base))
        code, out, err = await threads.deferToThread(run_admin, conf, "import-measurements", ALL)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("batches handed to the server", out)
        self.assertIn("1 duplicates within this run skipped", out)
        self.assertIn("the server has ingested them", out)
        rows = await server.clickhouse.query("SELECT count() AS n FROM jsonl")
        self.assertEqual(rows[0]["n"], 42)
        # readable through the API at once
        sample = json.loads(lines()[4])
        query = urlencode({"report_id": sample["report_id"], "input": sample["input"]})
        response, body = await server.client.get(f"/api/v1/raw_measurement?{query}")
        self.assertEqual((response.code, body), (200, sample))
        before = server.context.ingestor.totals.duplicates
        code, out, err = await threads.deferToThread(run_admin, conf, "import-measurements", ALL)
        self.assertEqual(code, 0, err)
        for _ in range(300):  # up to 30 s on a loaded machine
            if server.context.ingestor.totals.duplicates - before >= 42:
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(server.context.ingestor.totals.duplicates - before, 42)
        rows = await server.clickhouse.query("SELECT count() AS n FROM jsonl")
        self.assertEqual(rows[0]["n"], 42)
