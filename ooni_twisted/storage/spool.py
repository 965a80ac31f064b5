"""Durable submission spool: append-only segments with group commit.

A probe is told its measurement_uid only once the body is on disk and
fsynced.  One new file plus one fsync per submission caps acknowledgements
near the new-file fsync rate of the disk (DESIGN.md), so bodies are appended
to a segment file instead and every batch of concurrent submissions shares a
single fdatasync.

Layout under ``spool_dir``::

    segments/<name>.active   the segment this process appends to (flock held)
    segments/<name>.seg      sealed: complete, fsynced, ready for ingestion
    tmp/<name>.tmp           a sealed segment still being written by a writer
                             in another process (admin import); renamed into
                             segments/ when complete

``<name>`` is ``YYYYmmddHHMMSSffffff-<8 hex>`` (creation time UTC), so name
order is creation order.  A record is a fixed header (magic, uid length,
body length, CRC32 of uid+body) followed by the uid and the body.  Only
records whose batch was fsynced were ever acknowledged, so on recovery a
torn or corrupt tail is dropped: nothing acknowledged is lost.

A segment is removed only after ingestion committed its rows and archive
objects; ingestion must therefore tolerate seeing a segment again after a
crash between its commit and remove() (e.g. skip uids already present).
"""

import binascii
import fcntl
import os
import re
import secrets
import struct
import threading
import time

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

_MAGIC = b"OSP1"
_HEADER = struct.Struct(">4sHII")  # magic, uid length, body length, crc32
HEADER_SIZE = _HEADER.size

_ACTIVE = ".active"
_SEALED = ".seg"
_TMP = ".tmp"

# §4.2: reception time with microseconds, cc, testname, 16 hex of SHA-512.
# cc and testname are restricted to letters and digits so that the hour
# directory derived from a uid can never name another path.
_UID_RE = re.compile(
    r"\A(20\d{8})\d{4}\.\d{6}_([A-Za-z0-9]{2})_([A-Za-z0-9]{1,64})_[0-9a-f]{16}\Z"
)
_HOURDIR_RE = re.compile(r"\A20\d{8}_[A-Za-z0-9]{2}_[A-Za-z0-9]{1,64}\Z")
_SEGMENT_RE = re.compile(r"\A\d{20}-[0-9a-f]{8}\Z")

# A stale tmp segment (writer crashed) is deleted after this many seconds.
_STALE_TMP_SECONDS = 86400


class SpoolError(Exception):
    """The spool could not do what was asked (I/O failure, closed, ...)."""


class SpoolClosed(SpoolError):
    """The spool was closed; nothing more can be submitted."""


class InvalidUID(ValueError):
    """A string is not a measurement_uid of the shape of §4.2."""


class InvalidSegment(ValueError):
    """A segment name is malformed or names no sealed segment."""


def validate_uid(uid):
    """Return the (hour, cc, testname) parts of a uid or raise InvalidUID."""
    if not isinstance(uid, str):
        raise InvalidUID("measurement_uid must be a string")
    m = _UID_RE.match(uid)
    if m is None:
        raise InvalidUID("invalid measurement_uid: %r" % (uid[:100],))
    return m.groups()


def hourdir(uid):
    """The §4.4 hour directory ``YYYYmmddHH_<cc>_<testname>`` of a uid."""
    hour, cc, testname = validate_uid(uid)
    return "%s_%s_%s" % (hour, cc, testname)


def uid_from_spool_path(hour_dir, filename):
    """Validate the two segments of a §13.3 peer path; return the uid.

    Raises InvalidUID unless ``filename`` is ``<uid>.post`` and ``hour_dir``
    is exactly the hour directory of that uid (so no traversal can pass).
    """
    if not isinstance(hour_dir, str) or not isinstance(filename, str):
        raise InvalidUID("path segments must be strings")
    if not _HOURDIR_RE.match(hour_dir) or not filename.endswith(".post"):
        raise InvalidUID("invalid spool path")
    uid = filename[: -len(".post")]
    if hourdir(uid) != hour_dir:
        raise InvalidUID("uid does not belong to this hour directory")
    return uid


def encode_record(uid, body):
    """Serialise one (uid, body) record of a segment file."""
    validate_uid(uid)
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError("body must be bytes")
    body = bytes(body)
    uidb = uid.encode("ascii")
    crc = binascii.crc32(body, binascii.crc32(uidb))
    return _HEADER.pack(_MAGIC, len(uidb), len(body), crc) + uidb + body


def _read_records(f, file_size, with_body):
    """Yield (uid, body_offset, body_len, body|None, end) for valid records.

    Stops silently at the first torn or corrupt record: everything after it
    was never acknowledged (or cannot be trusted).
    """
    pos = 0
    while pos + HEADER_SIZE <= file_size:
        f.seek(pos)
        header = f.read(HEADER_SIZE)
        if len(header) < HEADER_SIZE:
            return
        magic, uid_len, body_len, crc = _HEADER.unpack(header)
        end = pos + HEADER_SIZE + uid_len + body_len
        if magic != _MAGIC or uid_len == 0 or end > file_size:
            return
        payload = f.read(uid_len + body_len)
        if len(payload) != uid_len + body_len:
            return
        if binascii.crc32(payload) != crc:
            return
        try:
            uid = payload[:uid_len].decode("ascii")
            validate_uid(uid)
        except (UnicodeDecodeError, InvalidUID):
            return
        body = payload[uid_len:] if with_body else None
        yield uid, pos + HEADER_SIZE + uid_len, body_len, body, end
        pos = end


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_durable(path):
    """Create ``path`` and missing parents, fsyncing each new entry's parent."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent != path:
        _makedirs_durable(parent)
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        return
    _fsync_dir(parent)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _new_segment_name(now):
    t = now()
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(t))
    micros = int(round((t - int(t)) * 1e6)) % 1000000
    return "%s%06d-%s" % (stamp, micros, secrets.token_hex(4))


def _check_segment_name(segment):
    if not isinstance(segment, str) or not _SEGMENT_RE.match(segment):
        raise InvalidSegment("invalid segment name: %r" % (segment,))


def write_sealed_segment(spool_dir, records, now=time.time):
    """Durably drop a complete sealed segment into a spool from any process.

    Writes ``tmp/<name>.tmp``, fsyncs it, renames it into ``segments/`` and
    fsyncs that directory, so a running spool either sees the whole segment
    (on its next rescan) or none of it.  Returns the segment name.
    """
    data = b"".join(encode_record(uid, body) for uid, body in records)
    segments = os.path.join(spool_dir, "segments")
    tmpdir = os.path.join(spool_dir, "tmp")
    _makedirs_durable(segments)
    _makedirs_durable(tmpdir)
    name = _new_segment_name(now)
    tmp = os.path.join(tmpdir, name + _TMP)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, os.path.join(segments, name + _SEALED))
    _fsync_dir(segments)
    return name


class SegmentSpool:
    """The synchronous spool core; call it from threads, never the reactor.

    Appends are serialised by a write lock (the async facade only runs one
    at a time anyway); the index has its own lock so reads never wait for
    an fsync.
    """

    log = Logger()

    def __init__(self, spool_dir, max_segment_bytes=64 * 1024 * 1024, now=time.time):
        self.spool_dir = os.path.abspath(spool_dir)
        self.segments_dir = os.path.join(self.spool_dir, "segments")
        self.tmp_dir = os.path.join(self.spool_dir, "tmp")
        self.max_segment_bytes = max_segment_bytes
        self._now = now
        self._write_lock = threading.Lock()  # active segment
        self._lock = threading.Lock()  # index and segment table
        self._scan_lock = threading.Lock()  # one directory rescan at a time
        self._index = {}  # uid -> (segment, body offset, body length)
        self._by_segment = {}  # segment -> list of uids indexed there
        self._sealed = set()
        self._active = None  # name of the active segment
        self._active_fd = None
        self._active_size = 0
        self._opened = False
        self._closed = False
        # Counters for tests and metrics: fsynced append batches, records.
        self.batches = 0
        self.appended = 0

    # -- opening and recovery -------------------------------------------

    def open(self):
        """Create the directories, recover and index every segment."""
        _makedirs_durable(self.segments_dir)
        _makedirs_durable(self.tmp_dir)
        self.recover()
        self._opened = True
        return self

    def recover(self):
        """Seal segments left active by a dead writer and rebuild the index.

        A leftover ``.active`` file is truncated to its last valid record
        (the torn tail was never acknowledged), then sealed.  Segments still
        locked by a live writer in another process are left alone.
        """
        with self._write_lock:
            self._recover_locked()

    def _recover_locked(self):
        for entry in sorted(os.listdir(self.segments_dir)):
            stem, ext = os.path.splitext(entry)
            if ext == _ACTIVE and _SEGMENT_RE.match(stem) and stem != self._active:
                self._recover_active(stem)
        self._clean_tmp()
        with self._scan_lock:
            with self._lock:
                # Keep what this process appended to its active segment.
                active = self._by_segment.get(self._active, [])
                kept = {uid: self._index[uid] for uid in active}
                self._index = kept
                self._by_segment = {self._active: active} if self._active else {}
                self._sealed = set()
            self._rescan_locked()

    def _recover_active(self, stem):
        path = os.path.join(self.segments_dir, stem + _ACTIVE)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # a live writer owns it
            st = os.fstat(fd)
            try:
                if os.stat(path).st_ino != st.st_ino:
                    return
            except FileNotFoundError:
                return  # its writer sealed it between our open and our lock
            size = st.st_size
            valid = 0
            with os.fdopen(os.dup(fd), "rb") as f:
                for _uid, _off, _len, _body, end in _read_records(f, size, False):
                    valid = end
            if valid == 0:
                os.unlink(path)
                _fsync_dir(self.segments_dir)
                return
            if valid < size:
                self.log.warn(
                    "spool segment {segment}: dropping {n} bytes of torn tail",
                    segment=stem,
                    n=size - valid,
                )
                os.ftruncate(fd, valid)
                os.fsync(fd)
            os.rename(path, os.path.join(self.segments_dir, stem + _SEALED))
            _fsync_dir(self.segments_dir)
        finally:
            os.close(fd)

    def _clean_tmp(self):
        try:
            names = os.listdir(self.tmp_dir)
        except FileNotFoundError:
            return
        limit = time.time() - _STALE_TMP_SECONDS
        for name in names:
            path = os.path.join(self.tmp_dir, name)
            try:
                if name.endswith(_TMP) and os.stat(path).st_mtime < limit:
                    os.unlink(path)
            except OSError:
                pass

    def _rescan(self):
        with self._scan_lock:
            self._rescan_locked()

    def _rescan_locked(self):
        """Index sealed segments that appeared, forget those that vanished."""
        # Snapshot before listing: a segment this process seals meanwhile is
        # then either in both or only listed, never wrongly forgotten.
        with self._lock:
            known = set(self._sealed)
        try:
            entries = os.listdir(self.segments_dir)
        except FileNotFoundError:
            entries = []
        present = set()
        for entry in entries:
            stem, ext = os.path.splitext(entry)
            if ext == _SEALED and _SEGMENT_RE.match(stem):
                present.add(stem)
        for stem in sorted(present - known):
            self._index_segment(stem)
        for stem in known - present:
            with self._lock:
                self._forget_locked(stem)

    def _index_segment(self, stem):
        path = os.path.join(self.segments_dir, stem + _SEALED)
        found = []
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                valid = 0
                for uid, off, length, _body, end in _read_records(f, size, False):
                    found.append((uid, off, length))
                    valid = end
        except FileNotFoundError:
            return
        if valid < size:
            self.log.warn(
                "spool segment {segment}: ignoring {n} corrupt bytes at its end",
                segment=stem,
                n=size - valid,
            )
        with self._lock:
            if stem in self._sealed:
                return  # sealed by this process while we were reading
            uids = []
            for uid, off, length in found:
                if uid not in self._index:
                    self._index[uid] = (stem, off, length)
                    uids.append(uid)
            self._by_segment[stem] = uids
            self._sealed.add(stem)

    def _forget_locked(self, stem):
        for uid in self._by_segment.pop(stem, ()):
            entry = self._index.get(uid)
            if entry is not None and entry[0] == stem:
                del self._index[uid]
        self._sealed.discard(stem)

    # -- writing ---------------------------------------------------------

    def _check_open(self):
        if self._closed:
            raise SpoolClosed("spool is closed")
        if not self._opened:
            raise SpoolError("spool is not open")

    def append_batch(self, records):
        """Append records and make them durable with one fdatasync.

        ``records`` is a list of (uid, body bytes).  A uid already in the
        spool is skipped (its body is already durable).  Raises InvalidUID /
        TypeError for bad records before writing anything, SpoolError when
        the disk fails (then nothing of the batch counts as written).
        """
        encoded = []
        seen = set()
        for uid, body in records:
            rec = encode_record(uid, body)
            if uid not in seen:
                seen.add(uid)
                encoded.append((uid, rec, len(body)))
        with self._write_lock:
            self._check_open()
            with self._lock:
                fresh = [e for e in encoded if e[0] not in self._index]
            if not fresh:
                return
            if self._active is None:
                self._start_segment()
            base = self._active_size
            buf = bytearray()
            entries = []
            for uid, rec, body_len in fresh:
                off = base + len(buf) + len(rec) - body_len
                entries.append((uid, (self._active, off, body_len)))
                buf += rec
            try:
                _write_all(self._active_fd, buf)
                os.fdatasync(self._active_fd)
            except OSError as e:
                self._abandon_active(base)
                raise SpoolError("spool write failed: %s" % (e,)) from e
            self._active_size = base + len(buf)
            with self._lock:
                uids = self._by_segment[self._active]
                for uid, entry in entries:
                    self._index[uid] = entry
                    uids.append(uid)
            self.batches += 1
            self.appended += len(entries)
            if self._active_size >= self.max_segment_bytes:
                self._seal_active()

    def _start_segment(self):
        name = _new_segment_name(self._now)
        path = os.path.join(self.segments_dir, name + _ACTIVE)
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _fsync_dir(self.segments_dir)
        except OSError:
            os.close(fd)
            os.unlink(path)
            raise
        self._active, self._active_fd, self._active_size = name, fd, 0
        with self._lock:
            self._by_segment[name] = []

    def _seal_active(self):
        """Rename the active segment to sealed, then release it."""
        name, fd = self._active, self._active_fd
        if name is None:
            return
        self._active, self._active_fd, self._active_size = None, None, 0
        src = os.path.join(self.segments_dir, name + _ACTIVE)
        with self._lock:
            empty = not self._by_segment.get(name)
        try:
            if empty:
                os.unlink(src)  # nothing acknowledged in it
                with self._lock:
                    self._by_segment.pop(name, None)
            else:
                # Renaming while the flock is held keeps recovery in another
                # process from sealing the same file at the same time.
                with self._lock:
                    os.rename(src, os.path.join(self.segments_dir, name + _SEALED))
                    self._sealed.add(name)
            _fsync_dir(self.segments_dir)
        finally:
            os.close(fd)

    def _abandon_active(self, good_size):
        """After a failed write/fsync: cut the segment back and stop using it."""
        try:
            os.ftruncate(self._active_fd, good_size)
            os.fsync(self._active_fd)
        except OSError:
            pass
        try:
            self._seal_active()
        except OSError as e:
            self.log.error("spool: could not seal a failed segment: {e}", e=e)

    def seal(self):
        """Rotate the active segment so that ingestion may take it."""
        with self._write_lock:
            self._check_open()
            self._seal_active()
        self._rescan()

    # -- reading ---------------------------------------------------------

    def sealed(self):
        """Names of sealed segments (ours and dropped-in ones), oldest first."""
        self._check_open()
        self._rescan()
        with self._lock:
            return sorted(self._sealed)

    def _open_body(self, uid):
        """Return (fd, offset, length) for a uid, or None."""
        with self._lock:
            entry = self._index.get(uid)
            if entry is None:
                return None
            stem, off, length = entry
            ext = _ACTIVE if stem == self._active else _SEALED
            try:
                fd = os.open(
                    os.path.join(self.segments_dir, stem + ext), os.O_RDONLY | os.O_CLOEXEC
                )
            except FileNotFoundError:
                return None
            return fd, off, length

    def get(self, uid):
        """The body spooled under ``uid``, or None.  Raises InvalidUID."""
        validate_uid(uid)
        self._check_open()
        opened = self._open_body(uid)
        if opened is None:
            self._rescan()  # maybe dropped in by another process
            opened = self._open_body(uid)
            if opened is None:
                return None
        fd, off, length = opened
        try:
            data = os.pread(fd, length, off)
        finally:
            os.close(fd)
        return data if len(data) == length else None

    def __contains__(self, uid):
        with self._lock:
            return uid in self._index

    def records(self, segment):
        """Iterate (uid, body) over the valid records of a sealed segment."""
        _check_segment_name(segment)
        self._check_open()
        path = os.path.join(self.segments_dir, segment + _SEALED)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise InvalidSegment("no sealed segment %s" % (segment,)) from None
        return self._iter_records(f)

    @staticmethod
    def _iter_records(f):
        with f:
            size = os.fstat(f.fileno()).st_size
            seen = set()
            for uid, _off, _len, body, _end in _read_records(f, size, True):
                if uid not in seen:
                    seen.add(uid)
                    yield uid, body

    def remove(self, segment):
        """Delete a sealed segment once ingestion committed all of it."""
        _check_segment_name(segment)
        self._check_open()
        if segment == self._active:
            raise InvalidSegment("cannot remove the active segment")
        with self._lock:
            self._forget_locked(segment)
        try:
            os.unlink(os.path.join(self.segments_dir, segment + _SEALED))
        except FileNotFoundError:
            return
        _fsync_dir(self.segments_dir)

    def pending_count(self):
        """Number of spooled (not yet removed) measurements."""
        with self._lock:
            return len(self._index)

    def close(self):
        """Seal the active segment; further calls fail with SpoolClosed."""
        with self._write_lock:
            if self._closed:
                return
            try:
                if self._opened:
                    self._seal_active()
            finally:
                self._closed = True


class Spool:
    """Asynchronous facade with group commit over a SegmentSpool.

    At most one flush runs at a time, in the thread pool.  Submissions that
    arrive meanwhile queue up and are all written and fsynced by the next
    flush, so the fsync rate no longer bounds the submission rate.
    """

    log = Logger()

    def __init__(self, core, reactor, threadpool, max_batch_bytes=32 * 1024 * 1024):
        self.core = core
        self._reactor = reactor
        self._pool = threadpool
        self._max_batch_bytes = max_batch_bytes
        self._queue = []  # (uid, body, Deferred)
        self._flushing = False
        self._closing = False
        self._idle_waiters = []

    def _defer(self, f, *args):
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def submit(self, uid, body):
        """Spool a body; the Deferred fires with ``uid`` once it is durable.

        Fails with InvalidUID / TypeError for bad input, SpoolClosed after
        close(), SpoolError when the disk write failed.
        """
        if self._closing:
            return fail(SpoolClosed("spool is closed"))
        try:
            validate_uid(uid)
            if not isinstance(body, (bytes, bytearray, memoryview)):
                raise TypeError("body must be bytes")
        except (InvalidUID, TypeError):
            return fail()
        d = Deferred()
        self._queue.append((uid, bytes(body), d))
        self._maybe_flush()
        return d

    def _take_batch(self):
        size = 0
        n = 0
        for uid, body, _d in self._queue:
            if n and size + len(body) > self._max_batch_bytes:
                break
            size += len(body)
            n += 1
        batch, self._queue = self._queue[:n], self._queue[n:]
        return batch

    def _maybe_flush(self):
        if self._flushing:
            return
        if not self._queue:
            waiters, self._idle_waiters = self._idle_waiters, []
            for w in waiters:
                w.callback(None)
            return
        batch = self._take_batch()
        self._flushing = True
        d = self._defer(self.core.append_batch, [(u, b) for u, b, _ in batch])
        d.addBoth(self._flushed, batch)

    def _flushed(self, result, batch):
        self._flushing = False
        # Start the next batch (everything queued during this fsync) before
        # running callbacks, which may submit more.
        self._maybe_flush()
        failed = isinstance(result, Failure)
        if failed:
            self.log.failure("spool flush failed", result)
        for uid, _body, d in batch:
            if failed:
                d.errback(result)
            else:
                d.callback(uid)

    def get(self, uid):
        """Deferred body spooled under ``uid`` (or None), read in a thread."""
        try:
            validate_uid(uid)
        except InvalidUID:
            return fail()
        return self._defer(self.core.get, uid)

    def seal(self):
        """Rotate the active segment (in a thread)."""
        return self._defer(self.core.seal)

    def sealed(self):
        """Deferred list of sealed segment names, oldest first."""
        return self._defer(self.core.sealed)

    def records(self, segment):
        """Deferred list of (uid, body) of a sealed segment."""
        return self._defer(lambda: list(self.core.records(segment)))

    def remove(self, segment):
        """Delete a sealed segment (in a thread) after ingestion committed it."""
        return self._defer(self.core.remove, segment)

    def close(self):
        """Refuse new submissions, finish queued ones, then close the core."""
        self._closing = True
        if self._flushing or self._queue:
            d = Deferred()
            self._idle_waiters.append(d)
        else:
            d = succeed(None)
        d.addCallback(lambda _: self._defer(self.core.close))
        return d
