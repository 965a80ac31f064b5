"""Tests for ooni_twisted.storage.archive: gzip JSONL objects, local and S3 stores."""

import gzip
import json
import logging
import os
import secrets

from twisted.internet import defer, reactor
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from ooni_twisted.storage.archive import (
    IArchive,
    InvalidArchivePath,
    LocalArchive,
    S3Archive,
    archive_path,
    build_jsonl_gz,
    line_at,
    read_member,
)

MEASUREMENTS = os.path.join(os.path.dirname(__file__), "data", "measurements", "all.jsonl")


def sample_lines(n=5):
    """A few real measurements from tests/data, one JSON text per line."""
    lines = []
    with open(MEASUREMENTS, "rb") as f:
        for raw in f:
            raw = raw.strip()
            if raw:
                lines.append(raw)
            if len(lines) == n:
                break
    return lines


S3PATH = "raw/20210709/00/MY/webconnectivity/2021070900_MY_webconnectivity.n1.0.jsonl.gz"


class PureTests(unittest.SynchronousTestCase):
    def test_whole_object_gunzips_to_jsonl(self):
        """gunzip of the whole object is the JSONL text, one measurement per line."""
        lines = sample_lines()
        data, spans = build_jsonl_gz(lines)
        self.assertEqual(gzip.decompress(data), b"".join(line + b"\n" for line in lines))
        self.assertEqual(len(spans), len(lines))

    def test_spans_locate_members(self):
        """Each span is a gzip member that gunzips alone to its line, newline kept."""
        lines = sample_lines()
        data, spans = build_jsonl_gz(lines)
        pos = 0
        for line, (off, length) in zip(lines, spans):
            self.assertEqual(off, pos)
            member = read_member(data[off : off + length])
            self.assertEqual(member, line + b"\n")
            self.assertEqual(json.loads(member), json.loads(line))
            pos += length
        self.assertEqual(pos, len(data))

    def test_line_kept_with_existing_newline(self):
        """A line that already ends with a newline does not get a second one."""
        data, spans = build_jsonl_gz([b"{}\n", b'{"a":1}'])
        self.assertEqual(gzip.decompress(data), b'{}\n{"a":1}\n')

    def test_inner_newline_refused(self):
        """A line with an embedded newline raises ValueError."""
        self.assertRaises(ValueError, build_jsonl_gz, [b"{}\n{}"])
        self.assertRaises(TypeError, build_jsonl_gz, ["{}"])

    def test_empty(self):
        """No lines make an empty object."""
        self.assertEqual(build_jsonl_gz([]), (b"", []))

    def test_read_member_rejects_garbage(self):
        """read_member raises ValueError for non-gzip or truncated data."""
        data, spans = build_jsonl_gz([b"{}"])
        self.assertRaises(ValueError, read_member, b"not gzip")
        self.assertRaises(ValueError, read_member, data[:-3])

    def test_line_at(self):
        """line_at finds a line in a whole object, also one gzipped as a single member."""
        lines = sample_lines(3)
        data, _ = build_jsonl_gz(lines)
        self.assertEqual(line_at(data, 2), lines[2] + b"\n")
        self.assertIsNone(line_at(data, 3))
        single = gzip.compress(b"".join(line + b"\n" for line in lines))
        self.assertEqual(line_at(single, 1), lines[1] + b"\n")
        self.assertRaises(ValueError, line_at, b"junk", 0)

    def test_archive_path(self):
        """archive_path lays keys out like OONI's public bucket."""
        self.assertEqual(archive_path("2021070900", "MY", "webconnectivity", 1, 0), S3PATH)
        self.assertEqual(
            archive_path("2024010223", "IT", "ndt", "abc", 17),
            "raw/20240102/23/IT/ndt/2024010223_IT_ndt.nabc.17.jsonl.gz",
        )

    def test_archive_path_validation(self):
        """Parts that could break the key layout raise InvalidArchivePath."""
        bad = [
            ("202107090", "MY", "webconnectivity", 1, 0),
            ("2021070900", "M/", "webconnectivity", 1, 0),
            ("2021070900", "MY", "web_connectivity", 1, 0),
            ("2021070900", "MY", "..", 1, 0),
            ("2021070900", "MY", "webconnectivity", "1/..", 0),
            ("2021070900", "MY", "webconnectivity", 1, "-1"),
            ("2021070900", "MY", "webconnectivity", 1, True),
            (2021070900, "MY", "webconnectivity", 1, 0),
        ]
        for args in bad:
            self.assertRaises(InvalidArchivePath, archive_path, *args)


class ArchiveContract:
    """Behaviour both stores must share; subclasses provide self.archive."""

    def test_interface(self):
        """The store provides IArchive."""
        self.assertTrue(verifyObject(IArchive, self.archive))

    @defer.inlineCallbacks
    def test_put_then_read(self):
        """A stored object is read whole and one member is read by its span."""
        lines = sample_lines()
        data, spans = build_jsonl_gz(lines)
        yield self.archive.put(S3PATH, data)
        self.assertEqual((yield self.archive.read_all(S3PATH)), data)
        off, length = spans[3]
        member = yield self.archive.read_range(S3PATH, off, length)
        self.assertEqual(read_member(member), lines[3] + b"\n")

    @defer.inlineCallbacks
    def test_missing_and_short(self):
        """Missing objects and ranges past the end read as None."""
        self.assertIsNone((yield self.archive.read_all("raw/nothing/here.jsonl.gz")))
        self.assertIsNone((yield self.archive.read_range("raw/nothing/here.jsonl.gz", 0, 10)))
        yield self.archive.put(S3PATH, b"0123456789")
        self.assertIsNone((yield self.archive.read_range(S3PATH, 5, 10)))
        self.assertIsNone((yield self.archive.read_range(S3PATH, 20, 1)))
        self.assertEqual((yield self.archive.read_range(S3PATH, 5, 5)), b"56789")

    @defer.inlineCallbacks
    def test_overwrite(self):
        """A second put of the same key replaces the object."""
        yield self.archive.put(S3PATH, b"first")
        yield self.archive.put(S3PATH, b"second")
        self.assertEqual((yield self.archive.read_all(S3PATH)), b"second")

    @defer.inlineCallbacks
    def test_list(self):
        """list() returns the keys under a prefix, sorted."""
        keys = [
            archive_path("2021070900", "MY", "webconnectivity", 1, 0),
            archive_path("2021070900", "MY", "webconnectivity", 1, 1),
            archive_path("2021070901", "IT", "ndt", 1, 0),
            archive_path("2021080100", "IT", "ndt", 1, 0),
        ]
        for k in reversed(keys):
            yield self.archive.put(k, b"x")
        self.assertEqual((yield self.archive.list()), keys)
        self.assertEqual((yield self.archive.list("raw/202107")), keys[:3])
        self.assertEqual((yield self.archive.list("raw/20210709/00/")), keys[:2])
        self.assertEqual((yield self.archive.list("raw/1999")), [])

    def test_bad_paths(self):
        """Keys that try to leave the archive fail with InvalidArchivePath."""
        for key in ["../etc/passwd", "raw/../../x", "/abs", "raw//x", "", "raw/a\\b", None]:
            self.failureResultOf(self.archive.put(key, b"x"), InvalidArchivePath)
            self.failureResultOf(self.archive.read_all(key), InvalidArchivePath)
            self.failureResultOf(self.archive.read_range(key, 0, 1), InvalidArchivePath)
        self.failureResultOf(self.archive.list("raw/../"), InvalidArchivePath)
        self.failureResultOf(self.archive.read_range(S3PATH, -1, 1), ValueError)
        self.failureResultOf(self.archive.put(S3PATH, "text"), TypeError)


def start_pool(testcase):
    pool = ThreadPool(minthreads=1, maxthreads=4, name="archive-test")
    pool.start()
    testcase.addCleanup(pool.stop)
    return pool


class LocalArchiveTests(ArchiveContract, unittest.TestCase):
    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        self.archive = LocalArchive(self.root, reactor, start_pool(self))

    @defer.inlineCallbacks
    def test_layout_on_disk(self):
        """Objects land at root/<s3path> with no temporary file left behind."""
        yield self.archive.put(S3PATH, b"data")
        path = os.path.join(self.root, *S3PATH.split("/"))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"data")
        self.assertEqual(os.listdir(os.path.dirname(path)), [os.path.basename(path)])

    @defer.inlineCallbacks
    def test_local_file(self):
        """local_file gives the FilePath of an existing object, None otherwise."""
        self.assertIsNone(self.archive.local_file(S3PATH))
        yield self.archive.put(S3PATH, b"data")
        fp = self.archive.local_file(S3PATH)
        self.assertEqual(fp.getContent(), b"data")
        self.assertIsNone(self.archive.local_file("../" + S3PATH))
        self.assertIsNone(self.archive.local_file("raw/20210709"))
        self.assertIsNone(self.archive.local_file("raw/x/../../../etc/passwd"))

    def test_public_url(self):
        """The local public URL goes through the /files/download route."""
        self.assertEqual(
            self.archive.public_url(S3PATH, "http://127.0.0.1:8000/"),
            "http://127.0.0.1:8000/files/download/" + S3PATH,
        )


class S3ArchiveTests(ArchiveContract, unittest.TestCase):
    """Against moto's S3 server on a free loopback port, started here."""

    def setUp(self):
        from moto.server import ThreadedMotoServer

        # werkzeug logs every request of the moto server to stderr.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        self.addCleanup(server.stop)
        host, port = server.get_host_and_port()
        self.endpoint = "http://%s:%d" % (host, port)
        self.bucket = "ooni-test-" + secrets.token_hex(4)
        pool = start_pool(self)
        self.archive = S3Archive(
            self.bucket, self.endpoint, "testing", "testing", "us-east-1", reactor, pool
        )
        self.addCleanup(self.archive.close)
        return self.archive._defer(lambda: self.archive._s3().create_bucket(Bucket=self.bucket))

    def test_public_url(self):
        """The S3 public URL is the bucket's amazonaws.com URL."""
        self.assertEqual(
            self.archive.public_url(S3PATH, "http://ignored"),
            "https://%s.s3.amazonaws.com/%s" % (self.bucket, S3PATH),
        )

    def test_no_local_file(self):
        """An S3 archive has no local files to stream."""
        self.assertIsNone(self.archive.local_file(S3PATH))

    @defer.inlineCallbacks
    def test_range_read_transfers_only_the_member(self):
        """A member read asks the server for its bytes only (HTTP Range), not the whole object."""
        lines = sample_lines(20)
        data, spans = build_jsonl_gz(lines)
        yield self.archive.put(S3PATH, data)
        seen = []
        real_got_range = self.archive._got_range

        def spy(response, *a):
            seen.append((response.code, response.headers.getRawHeaders(b"content-range")))
            return real_got_range(response, *a)

        self.archive._got_range = spy
        off, length = spans[7]
        member = yield self.archive.read_range(S3PATH, off, length)
        self.assertEqual(read_member(member), lines[7] + b"\n")
        rng = "bytes %d-%d/%d" % (off, off + length - 1, len(data))
        self.assertEqual(seen, [(206, [rng.encode()])])

    @defer.inlineCallbacks
    def test_missing_bucket_is_an_error(self):
        """Uploading to a bucket that does not exist fails with ArchiveError."""
        from ooni_twisted.storage.archive import ArchiveError

        other = S3Archive(
            "no-such-bucket-" + secrets.token_hex(4),
            self.endpoint, "testing", "testing", "", reactor, self.archive._pool,
        )
        self.addCleanup(other.close)
        with self.assertRaises(ArchiveError):
            yield other.put(S3PATH, b"x")
