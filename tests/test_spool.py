"""Tests for ooni_twisted.storage.spool: segments, recovery, group commit."""

import os
import signal
import subprocess
import sys
import threading

from twisted.internet import defer, reactor
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from ooni_twisted.storage.spool import (
    HEADER_SIZE,
    InvalidSegment,
    InvalidUID,
    SegmentSpool,
    Spool,
    SpoolClosed,
    encode_record,
    hourdir,
    uid_from_spool_path,
    validate_uid,
    write_sealed_segment,
)

UID = "20210709005529.664022_MY_webconnectivity_68e5bea1060d1874"


def make_uid(i, cc="IT", testname="webconnectivity"):
    return "20240102%06d.%06d_%s_%s_%016x" % (i // 1000000, i % 1000000, cc, testname, i)


def body_of(i, size=200):
    head = b'{"format":"json","content":{"n":%d,"pad":"' % i
    return head + b"x" * size + b'"}}'


class UidTests(unittest.SynchronousTestCase):
    def test_hourdir(self):
        """hourdir names the reception hour, cc and testname of a uid."""
        self.assertEqual(hourdir(UID), "2021070900_MY_webconnectivity")

    def test_validate_uid_parts(self):
        """validate_uid returns hour, cc and testname."""
        self.assertEqual(validate_uid(UID), ("2021070900", "MY", "webconnectivity"))

    def test_hourdir_rejects_bad_shapes(self):
        """Uids that are not of the §4.2 shape, or could name another path, raise InvalidUID."""
        bad = [
            "",
            "x",
            None,
            b"20210709005529.664022_MY_webconnectivity_68e5bea1060d1874",
            "19210709005529.664022_MY_webconnectivity_68e5bea1060d1874",
            "20210709005529.664022_../webconnectivity_68e5bea1060d1874",
            "20210709005529.664022_MY_web/connectivity_68e5bea1060d1874",
            "20210709005529.664022_MY_webconnectivity_68e5bea1060d187",
            "20210709005529.664022_MY_webconnectivity_68e5bea1060d1874/",
            "20210709005529.664022_MY_webconnectivity_68e5bea1060d1874\n",
            "20210709005529.664022_MY_x_y_68e5bea1060d1874",
            "20210709005529_MY_webconnectivity_68e5bea1060d1874",
        ]
        for uid in bad:
            self.assertRaises(InvalidUID, hourdir, uid)

    def test_uid_from_spool_path(self):
        """A §13.3 peer path yields its uid only when the directory matches the uid."""
        self.assertEqual(
            uid_from_spool_path("2021070900_MY_webconnectivity", UID + ".post"), UID
        )
        for d, f in [
            ("2021070901_MY_webconnectivity", UID + ".post"),
            ("2021070900_MY_webconnectivity", UID),
            ("..", UID + ".post"),
            ("2021070900_MY_webconnectivity", "../" + UID + ".post"),
            ("2021070900_MY_webconnectivity", ".post"),
        ]:
            self.assertRaises(InvalidUID, uid_from_spool_path, d, f)


class SegmentSpoolTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        self.core = SegmentSpool(self.dir).open()
        self.addCleanup(self.core.close)

    def segfiles(self, ext):
        d = os.path.join(self.dir, "segments")
        return sorted(n for n in os.listdir(d) if n.endswith(ext))

    def test_append_and_get(self):
        """Appended bodies are read back by uid; unknown uids give None."""
        recs = [(make_uid(i), body_of(i)) for i in range(10)]
        self.core.append_batch(recs)
        for uid, body in recs:
            self.assertEqual(self.core.get(uid), body)
        self.assertIsNone(self.core.get(make_uid(99)))
        self.assertEqual(self.core.batches, 1)
        self.assertEqual(self.core.appended, 10)

    def test_get_rejects_bad_uid(self):
        """get() raises InvalidUID for a malformed uid."""
        self.assertRaises(InvalidUID, self.core.get, "../../etc/passwd")

    def test_append_rejects_bad_record_before_writing(self):
        """A batch with one bad record writes nothing."""
        self.assertRaises(
            InvalidUID, self.core.append_batch, [(make_uid(1), b"a"), ("bad", b"b")]
        )
        self.assertRaises(TypeError, self.core.append_batch, [(make_uid(1), "text")])
        self.assertIsNone(self.core.get(make_uid(1)))
        self.assertEqual(self.core.batches, 0)

    def test_duplicate_uid_written_once(self):
        """A uid appended twice is stored once."""
        self.core.append_batch([(make_uid(1), b"one"), (make_uid(1), b"one")])
        self.core.append_batch([(make_uid(1), b"one")])
        self.core.seal()
        [seg] = self.core.sealed()
        self.assertEqual(list(self.core.records(seg)), [(make_uid(1), b"one")])

    def test_seal_rotates(self):
        """seal() turns the active segment into a sealed one that records() reads in order."""
        self.core.append_batch([(make_uid(1), b"a"), (make_uid(2), b"b")])
        self.assertEqual(self.core.sealed(), [])
        self.assertEqual(len(self.segfiles(".active")), 1)
        self.core.seal()
        [seg] = self.core.sealed()
        self.assertEqual(self.segfiles(".active"), [])
        self.assertEqual(
            list(self.core.records(seg)), [(make_uid(1), b"a"), (make_uid(2), b"b")]
        )
        self.assertEqual(self.core.get(make_uid(2)), b"b")
        self.core.append_batch([(make_uid(3), b"c")])
        self.core.seal()
        segs = self.core.sealed()
        self.assertEqual(len(segs), 2)
        self.assertEqual(segs[0], seg)
        self.assertEqual(list(self.core.records(segs[1])), [(make_uid(3), b"c")])

    def test_seal_without_data_creates_nothing(self):
        """Sealing with nothing appended leaves no segment behind."""
        self.core.seal()
        self.assertEqual(self.core.sealed(), [])
        self.assertEqual(os.listdir(os.path.join(self.dir, "segments")), [])

    def test_remove(self):
        """remove() deletes a sealed segment and forgets its uids, also after reopening."""
        self.core.append_batch([(make_uid(1), b"a")])
        self.core.seal()
        self.core.append_batch([(make_uid(2), b"b")])
        [seg] = self.core.sealed()
        self.core.remove(seg)
        self.assertIsNone(self.core.get(make_uid(1)))
        self.assertEqual(self.core.get(make_uid(2)), b"b")
        self.assertEqual(self.core.sealed(), [])
        self.core.close()
        reopened = SegmentSpool(self.dir).open()
        self.addCleanup(reopened.close)
        self.assertIsNone(reopened.get(make_uid(1)))
        self.assertEqual(reopened.get(make_uid(2)), b"b")

    def test_remove_and_records_refuse_bad_names(self):
        """Segment names that are malformed or unknown raise InvalidSegment."""
        for name in ["../x", "", "20240101000000000000-zzzzzzzz", None]:
            self.assertRaises(InvalidSegment, self.core.remove, name)
            self.assertRaises(InvalidSegment, self.core.records, name)
        self.assertRaises(InvalidSegment, self.core.records, "20240101000000000000-0123abcd")

    def test_reopen_keeps_everything(self):
        """Closing and reopening the spool keeps every acknowledged body."""
        recs = [(make_uid(i), body_of(i)) for i in range(5)]
        self.core.append_batch(recs[:3])
        self.core.append_batch(recs[3:])
        self.core.close()
        reopened = SegmentSpool(self.dir).open()
        self.addCleanup(reopened.close)
        for uid, body in recs:
            self.assertEqual(reopened.get(uid), body)
        [seg] = reopened.sealed()
        self.assertEqual(list(reopened.records(seg)), recs)

    def test_closed_refuses(self):
        """After close(), appends fail with SpoolClosed."""
        self.core.close()
        self.assertRaises(SpoolClosed, self.core.append_batch, [(make_uid(1), b"a")])

    def test_max_segment_bytes_rotates(self):
        """A segment past max_segment_bytes is sealed automatically."""
        core = SegmentSpool(self.mktemp(), max_segment_bytes=1000).open()
        self.addCleanup(core.close)
        for i in range(6):
            core.append_batch([(make_uid(i), b"z" * 400)])
        self.assertEqual(len(core.sealed()), 2)  # 3 records of ~470 bytes each
        for i in range(6):
            self.assertEqual(core.get(make_uid(i)), b"z" * 400)


class RecoveryTests(unittest.SynchronousTestCase):
    """A crashed writer leaves an .active segment; reopening must recover it."""

    def write_crashed(self, spool_dir, data, name="20240102030405000000-0badc0de"):
        segs = os.path.join(spool_dir, "segments")
        os.makedirs(segs, exist_ok=True)
        path = os.path.join(segs, name + ".active")
        with open(path, "wb") as f:
            f.write(data)
        return name, path

    def test_torn_tail_dropped(self):
        """A record cut mid-way is ignored, the complete ones survive and the file is trimmed."""
        d = self.mktemp()
        good = [encode_record(make_uid(i), body_of(i)) for i in range(3)]
        torn = encode_record(make_uid(3), body_of(3))
        for cut in (5, HEADER_SIZE + 3, len(torn) - 1):
            data = b"".join(good) + torn[:cut]
            name, path = self.write_crashed(d, data)
            core = SegmentSpool(d).open()
            try:
                for i in range(3):
                    self.assertEqual(core.get(make_uid(i)), body_of(i))
                self.assertIsNone(core.get(make_uid(3)))
                self.assertEqual(core.sealed(), [name])
                self.assertEqual(
                    [u for u, _ in core.records(name)], [make_uid(i) for i in range(3)]
                )
                sealed = os.path.join(d, "segments", name + ".seg")
                self.assertEqual(os.path.getsize(sealed), len(b"".join(good)))
                self.assertFalse(os.path.exists(path))
                core.remove(name)
            finally:
                core.close()

    def test_corrupt_tail_dropped(self):
        """A last record whose CRC does not match is ignored."""
        d = self.mktemp()
        good = encode_record(make_uid(1), b"good")
        bad = bytearray(encode_record(make_uid(2), b"flipped"))
        bad[-1] ^= 0xFF
        name, _ = self.write_crashed(d, good + bytes(bad))
        core = SegmentSpool(d).open()
        self.addCleanup(core.close)
        self.assertEqual(core.get(make_uid(1)), b"good")
        self.assertIsNone(core.get(make_uid(2)))
        self.assertEqual(list(core.records(name)), [(make_uid(1), b"good")])

    def test_empty_crashed_segment_removed(self):
        """An active segment without one complete record disappears on recovery."""
        d = self.mktemp()
        self.write_crashed(d, encode_record(make_uid(1), b"x")[:7])
        core = SegmentSpool(d).open()
        self.addCleanup(core.close)
        self.assertEqual(core.sealed(), [])
        self.assertEqual(os.listdir(os.path.join(d, "segments")), [])

    def test_live_writer_segment_left_alone(self):
        """A second spool on the same directory does not seal the first one's active segment."""
        d = self.mktemp()
        first = SegmentSpool(d).open()
        self.addCleanup(first.close)
        first.append_batch([(make_uid(1), b"a")])
        second = SegmentSpool(d).open()
        self.addCleanup(second.close)
        self.assertEqual(second.sealed(), [])
        first.append_batch([(make_uid(2), b"b")])
        self.assertEqual(first.get(make_uid(2)), b"b")
        first.seal()
        [seg] = second.sealed()
        self.assertEqual(second.get(make_uid(2)), b"b")
        self.assertEqual(len(list(second.records(seg))), 2)


    def test_killed_writer_loses_no_acknowledged_record(self):
        """After SIGKILL of a process appending to the spool, every batch it acked is there."""
        d = os.path.abspath(self.mktemp())
        child = (
            "import sys\n"
            "from ooni_twisted.storage.spool import SegmentSpool\n"
            "core = SegmentSpool(sys.argv[1]).open()\n"
            "i = 0\n"
            "while True:\n"
            "    batch = ['20240102%06d.%06d_IT_ndt_%016x' % (j // 1000000, j % 1000000, j)\n"
            "             for j in range(i, i + 7)]\n"
            "    core.append_batch([(u, u.encode() * 50) for u in batch])\n"
            "    sys.stdout.write(' '.join(batch) + '\\n')\n"
            "    sys.stdout.flush()\n"
            "    i += 7\n"
        )
        project = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=project)
        proc = subprocess.Popen([sys.executable, "-c", child, d], stdout=subprocess.PIPE, env=env)
        acked = []
        try:
            while len(acked) < 300:
                line = proc.stdout.readline()
                self.assertTrue(line, "writer died early")
                acked.extend(line.decode().split())
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        core = SegmentSpool(d).open()
        self.addCleanup(core.close)
        for uid in acked:
            self.assertEqual(core.get(uid), uid.encode() * 50)
        [seg] = core.sealed()
        uids = [u for u, _ in core.records(seg)]
        self.assertEqual(uids[: len(acked)], acked)
        self.assertEqual(len(uids), len(set(uids)))

    def test_recover_keeps_active_segment(self):
        """Calling recover() on an open spool keeps what it appended to its active segment."""
        core = SegmentSpool(self.mktemp()).open()
        self.addCleanup(core.close)
        core.append_batch([(make_uid(1), b"a")])
        core.recover()
        self.assertEqual(core.get(make_uid(1)), b"a")
        core.append_batch([(make_uid(2), b"b")])
        core.seal()
        [seg] = core.sealed()
        self.assertEqual([u for u, _ in core.records(seg)], [make_uid(1), make_uid(2)])


class DroppedSegmentTests(unittest.SynchronousTestCase):
    def test_write_sealed_segment_picked_up(self):
        """A segment written by another process is found by get(), sealed() and records()."""
        d = self.mktemp()
        core = SegmentSpool(d).open()
        self.addCleanup(core.close)
        core.append_batch([(make_uid(1), b"mine")])
        recs = [(make_uid(i), body_of(i)) for i in range(10, 15)]
        name = write_sealed_segment(d, recs)
        self.assertEqual(os.listdir(os.path.join(d, "tmp")), [])
        self.assertEqual(core.get(make_uid(12)), body_of(12))
        self.assertEqual(core.sealed(), [name])
        self.assertEqual(list(core.records(name)), recs)
        core.remove(name)
        self.assertIsNone(core.get(make_uid(12)))
        self.assertEqual(core.get(make_uid(1)), b"mine")

    def test_write_sealed_segment_into_new_dir(self):
        """write_sealed_segment works before any server created the spool, which then reads it."""
        d = self.mktemp()
        name = write_sealed_segment(d, [(make_uid(1), b"x")])
        core = SegmentSpool(d).open()
        self.addCleanup(core.close)
        self.assertEqual(core.sealed(), [name])
        self.assertEqual(core.get(make_uid(1)), b"x")

    def test_write_sealed_segment_validates(self):
        """Bad uids are refused before anything lands in the spool."""
        d = self.mktemp()
        self.assertRaises(InvalidUID, write_sealed_segment, d, [("nope", b"x")])
        segs = os.path.join(d, "segments")
        self.assertEqual(os.listdir(segs) if os.path.isdir(segs) else [], [])


class CountingSpool(SegmentSpool):
    """A real core that also records which threads ran its batches."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.batch_threads = set()
        self.batch_sizes = []

    def append_batch(self, records):
        self.batch_threads.add(threading.current_thread().name)
        self.batch_sizes.append(len(records))
        return super().append_batch(records)


class FailingSpool(SegmentSpool):
    """A real core whose disk 'fails' for uids marked bad."""

    def append_batch(self, records):
        if any(b == b"EIO" for _, b in records):
            from ooni_twisted.storage.spool import SpoolError

            raise SpoolError("simulated I/O error")
        return super().append_batch(records)


class SpoolTests(unittest.TestCase):
    def setUp(self):
        self.pool = ThreadPool(minthreads=1, maxthreads=4, name="spool-test")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.dir = self.mktemp()
        self.core = CountingSpool(self.dir).open()
        self.spool = Spool(self.core, reactor, self.pool)
        # Cleanups run last-in first-out: close the spool while the pool runs.
        self.addCleanup(self.spool.close)

    @defer.inlineCallbacks
    def test_group_commit(self):
        """Concurrent submits share fsync batches, off the reactor thread, and all are readable."""
        n = 200
        recs = [(make_uid(i), body_of(i)) for i in range(n)]
        results = yield defer.gatherResults([self.spool.submit(u, b) for u, b in recs])
        self.assertEqual(results, [u for u, _ in recs])
        # The first submit starts a flush alone; the other 199 queue behind it.
        self.assertEqual(self.core.batch_sizes, [1, n - 1])
        self.assertEqual(self.core.batches, 2)
        self.assertNotIn("MainThread", self.core.batch_threads)
        for u, b in recs[::37]:
            got = yield self.spool.get(u)
            self.assertEqual(got, b)

    @defer.inlineCallbacks
    def test_waves_of_submits(self):
        """Submits arriving while a flush runs go into the next flush, not one each."""
        ds = []
        for wave in range(5):
            for j in range(20):
                i = wave * 100 + j
                ds.append(self.spool.submit(make_uid(i), body_of(i)))
            d = defer.Deferred()
            reactor.callLater(0.001, d.callback, None)
            yield d
        yield defer.gatherResults(ds)
        self.assertEqual(sum(self.core.batch_sizes), 100)
        self.assertLess(self.core.batches, 100)

    @defer.inlineCallbacks
    def test_durable_before_callback(self):
        """When submit fires, the complete record is already in the segment file on disk."""
        yield self.spool.submit(UID, b"durable")
        segs = os.path.join(self.dir, "segments")
        [name] = [n for n in os.listdir(segs) if n.endswith(".active")]
        with open(os.path.join(segs, name), "rb") as f:
            self.assertEqual(f.read(), encode_record(UID, b"durable"))

    def test_submit_bad_input(self):
        """Bad uids and non-bytes bodies fail the Deferred with InvalidUID / TypeError."""
        self.failureResultOf(self.spool.submit("bad", b"x"), InvalidUID)
        self.failureResultOf(self.spool.submit(UID, "str"), TypeError)
        self.failureResultOf(self.spool.get("../x"), InvalidUID)

    @defer.inlineCallbacks
    def test_close_drains_then_refuses(self):
        """close() lets queued submits finish and then refuses new ones."""
        ds = [self.spool.submit(make_uid(i), b"q") for i in range(10)]
        yield self.spool.close()
        yield defer.gatherResults(ds)
        self.failureResultOf(self.spool.submit(make_uid(50), b"x"), SpoolClosed)
        reopened = SegmentSpool(self.dir).open()
        self.addCleanup(reopened.close)
        self.assertEqual(reopened.get(make_uid(9)), b"q")

    @defer.inlineCallbacks
    def test_failed_flush_errbacks_and_recovers(self):
        """A failed flush fails its submitters only; later submits still succeed."""
        core = FailingSpool(self.mktemp()).open()
        spool = Spool(core, reactor, self.pool)
        self.addCleanup(spool.close)
        yield spool.submit(make_uid(1), b"ok")
        from ooni_twisted.storage.spool import SpoolError

        with self.assertRaises(SpoolError):
            yield spool.submit(make_uid(2), b"EIO")
        self.assertEqual(len(self.flushLoggedErrors(SpoolError)), 1)
        yield spool.submit(make_uid(3), b"ok3")
        self.assertEqual((yield spool.get(make_uid(3))), b"ok3")
        self.assertIsNone((yield spool.get(make_uid(2))))

    @defer.inlineCallbacks
    def test_async_ingestion_helpers(self):
        """seal/sealed/records/remove work through the facade."""
        yield self.spool.submit(make_uid(1), b"a")
        yield self.spool.seal()
        [seg] = yield self.spool.sealed()
        self.assertEqual((yield self.spool.records(seg)), [(make_uid(1), b"a")])
        yield self.spool.remove(seg)
        self.assertEqual((yield self.spool.sealed()), [])
        self.assertIsNone((yield self.spool.get(make_uid(1))))
