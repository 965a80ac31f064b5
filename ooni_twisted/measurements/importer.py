"""
ooni-api-admin import-measurements PATH... (CONTRACT.md "import-measurements
in detail").

Files hold bare measurements: one JSON object per .json (or .json.gz) file,
one per line in .jsonl and .jsonl.gz; directories are walked recursively,
so the public bucket's raw/YYYYMMDD/HH/CC/testname/*.jsonl.gz layout imports
as it is. Each measurement becomes the envelope bytes
C{{"format":"json","content":<the object exactly as in the file>}} received
now, with a submission-format measurement_uid, and goes through the spool and
the ingestion pass of L{ingestion} like a probe's submission. (An object
spread over several lines, or not in UTF-8, is stored re-encoded as one
compact JSON line instead: a JSONL archive line cannot hold it as it is.)

* no server holds the data directory: the command opens the backend itself
  and runs the pass in process (big batches, no reactor), after first
  finishing whatever an earlier run or a stopped server left in the spool.
  Big inputs are parsed and scored by worker processes, one per CPU;
* a server holds it: sealed segments are dropped into its spool and the
  command waits (with progress) while the server ingests them.

Duplicates are skipped by content: the uid's hash is the SHA-512 of the
envelope, so a line seen earlier in the run is skipped here, and one already
stored is skipped by the ingestion pass. A line that is not a JSON object, or
a file that cannot be read, is written to the quarantine folder with
C{file:line} and the reason; the import goes on.
"""

import collections
import gc
import gzip
import json
import os
import pickle
import queue
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from datetime import datetime, timezone

from twisted.internet.defer import ensureDeferred

from ..commands import CommandError
from ..control import read_control_file
from ..probes.ids import import_uid_parts, measurement_uid
from ..storage import schema
from ..storage.clickhouse import ClickHouse, directory_holder, open_backend
from ..storage.spool import SegmentSpool, Spool, write_sealed_segment
from .bodies import open_archive
from .ingestion import (
    ENVELOPE_PREFIX_BYTES,
    Ingestor,
    Inline,
    PassStats,
    Quarantine,
    encode_line,
    load_fingerprints,
    prepare,
    run_sync,
)

__all__ = [
    "BadLine",
    "ImportStats",
    "Importer",
    "WorkerFailed",
    "WorkerPool",
    "import_measurements",
    "iter_files",
    "iter_lines",
    "measurement_record",
    "prepare_lines",
]

#: File name endings read, and how.
LINE_SUFFIXES = (".jsonl.gz", ".jsonl")
OBJECT_SUFFIXES = (".json.gz", ".json")
YAML_SUFFIXES = (".yaml", ".yml", ".yaml.gz")

#: Records per spool segment / ingestion pass.
BATCH_RECORDS = 10000
BATCH_BYTES = 48 * 1024 * 1024

#: Lines per unit of work (in process or in a worker process).
CHUNK_LINES = 1000
#: Chunks handed to workers and not collected yet, at most.
MAX_INFLIGHT_CHUNKS = 16
#: Inputs at least this big (bytes on disk) are prepared by worker
#: processes, one per CPU; smaller ones do not repay starting them.
PARALLEL_MIN_BYTES = 8 * 1024 * 1024

#: Bodies kept in a quarantine entry at most (the source file stays).
MAX_QUARANTINED_BODY = 1024 * 1024

#: Seconds to wait for a running server to take the segments, when it
#: makes no visible progress.
SERVER_PATIENCE = 120.0


class BadLine(ValueError):
    """
    A line that is not a measurement object.
    """

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# -- finding and reading files ------------------------------------------------------


def _kind(path):
    name = path.lower()
    if name.endswith(LINE_SUFFIXES):
        return "lines"
    if name.endswith(OBJECT_SUFFIXES):
        return "object"
    if name.endswith(YAML_SUFFIXES):
        return "yaml"
    return None


def iter_files(paths):
    """
    Yield C{(path, kind)} for the files to read, in a stable order: each
    argument in turn, directories walked recursively and sorted. C{kind} is
    C{"lines"}, C{"object"}, C{"yaml"} (reported, not read) or None (a file
    of another type: skipped and counted).
    """
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    if name.startswith(".") and name.endswith(".tmp"):
                        continue  # an archive object being written
                    full = os.path.join(root, name)
                    yield full, _kind(full)
        else:
            yield path, _kind(path)


def _open(path):
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def iter_lines(path, kind):
    """
    Yield C{(linenum, bytes)} of the measurements in one file (1-based
    line numbers; a .json file is one item numbered 1). Blank lines are
    skipped. Raises OSError / EOFError / zlib.error when the file cannot be
    read to its end; what was yielded before stays valid.
    """
    with _open(path) as f:
        if kind == "object":
            data = f.read().strip()
            if data.startswith(b"\xef\xbb\xbf"):
                data = data[3:].strip()
            if data:
                yield 1, data
            return
        first = True
        for number, line in enumerate(f, 1):
            if first:
                first = False
                if line.startswith(b"\xef\xbb\xbf"):
                    line = line[3:]
            line = line.strip()
            if line:
                yield number, line


def measurement_record(data, received):
    """
    The spool record of one measurement's bytes, received at C{received}.

    Returns C{(uid, envelope, content, line)}: the measurement_uid, the
    envelope bytes to spool, the parsed measurement and the line to
    archive. Raises L{BadLine} when C{data} is not a JSON object.
    """
    try:
        content = json.loads(data)
    except RecursionError:
        raise BadLine("invalid_json", "nested too deeply")
    except ValueError as e:
        raise BadLine("invalid_json", str(e)[:200])
    if not isinstance(content, dict):
        raise BadLine("not_an_object", f"a JSON {type(content).__name__}, not a measurement object")
    if b"\n" in data or b"\r" in data:
        # A pretty-printed object cannot be a JSONL line: store it compact
        # (JSON-equal), which also makes it a duplicate of the same object
        # met as a compact line elsewhere.
        data = encode_line(content)
    else:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            # not UTF-8 (JSON must be): store it re-encoded, JSON-equal
            data = encode_line(content)
    envelope = ENVELOPE_PREFIX_BYTES + data + b"}"
    report_id = content.get("report_id")
    cc, testname = import_uid_parts(report_id if isinstance(report_id, str) else None, content)
    if len(cc) != 2:
        cc = "ZZ"
    uid = measurement_uid(received, cc, testname[:64], envelope)
    return uid, envelope, content, data


# -- the import -----------------------------------------------------------------------


class ImportStats(PassStats):
    """
    Pass counters plus what only the importer sees.
    """

    FIELDS = PassStats.FIELDS + ("read", "run_duplicates", "bad_lines", "files", "skipped_files")

    @property
    def all_duplicates(self):
        return self.duplicates + self.run_duplicates

    @property
    def all_quarantined(self):
        return self.quarantined + self.bad_lines


class Progress:
    """
    A one-line counter on a terminal (nothing when C{stream} is None).
    """

    def __init__(self, stream, clock=time.monotonic, every=0.25):
        self._stream = stream
        self._clock = clock
        self._every = every
        self._started = clock()
        self._last = 0.0

    def show(self, stats, force=False, note=""):
        if self._stream is None:
            return
        now = self._clock()
        if not force and now - self._last < self._every:
            return
        self._last = now
        elapsed = max(now - self._started, 1e-6)
        self._stream.write(
            f"\rimport-measurements: {stats.read} read, {stats.stored} stored, "
            f"{stats.all_duplicates} duplicates, {stats.all_quarantined} quarantined, "
            f"{stats.read / elapsed:.0f}/s{note}   "
        )
        self._stream.flush()

    def done(self):
        if self._stream is not None:
            self._stream.write("\n")
            self._stream.flush()


def prepare_lines(items, fingerprints, now, ingest=True):
    """
    The CPU work of the import for a chunk of C{(linenum, bytes)} lines
    (run in process or in a worker process).

    Returns a list with, per line, C{(linenum, None, reason, detail)} or
    C{(linenum, uid, line, prepared)}: the uid, the line to spool inside the
    envelope, and (with C{ingest}) its L{Prepared} with the archive member
    already built, else None.
    """
    out = []
    for number, data in items:
        try:
            uid, _envelope, content, line = measurement_record(data, now())
        except BadLine as e:
            out.append((number, None, e.reason, e.detail))
            continue
        except Exception as e:  # a bug must not end the import: keep the line aside
            out.append((number, None, "internal_error", repr(e)[:200]))
            continue
        prepared = None
        if ingest:
            prepared = prepare(uid, None, fingerprints, None, (content, line)).compress()
        out.append((number, uid, line, prepared))
    return out


#: The frame tag of spooled records sent to a worker (import lines are lists).
RECORDS = "records"


def prepare_records(records, fingerprints):
    """
    Step 1 of ingestion for spooled C{(uid, body, segment)} records, with
    the archive members built, in a worker process. Bodies are not sent
    back: the caller still has them.
    """
    out = []
    for uid, body, segment in records:
        p = prepare(uid, body, fingerprints, segment).compress()
        p.body = None
        out.append(p)
    return out


def _utcnow():
    return datetime.now(timezone.utc)


class WorkerFailed(Exception):
    """
    A worker process died or answered something unreadable.
    """


_FRAME = struct.Struct(">Q")


def _read_exactly(stream, n):
    data = stream.read(n)
    if data is None or len(data) != n:
        raise EOFError()
    return data


def _read_frame(stream):
    (size,) = _FRAME.unpack(_read_exactly(stream, _FRAME.size))
    return pickle.loads(_read_exactly(stream, size))


def _write_frame(stream, obj):
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(payload)) + payload)
    stream.flush()


class _Pending:
    def __init__(self, pool, index):
        self._pool = pool
        self._index = index

    def result(self):
        return self._pool._result(self._index)


class WorkerPool:
    """
    Worker processes for L{prepare_lines}: C{python -m} this module,
    started with fork+exec so that they inherit nothing (chDB must not be
    forked, and no caller's __main__ is run again). Chunks go round-robin as
    length-prefixed pickles on each worker's stdin; a thread per worker
    reads its answers, in order, so that neither side blocks on a full pipe.
    Results must be taken in submission order.
    """

    def __init__(self, workers):
        self._procs = []
        self._answers = []
        self._dead = []
        self._next = 0
        try:
            for index in range(workers):
                proc = subprocess.Popen(
                    [sys.executable, "-m", __name__, "--worker"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                self._procs.append(proc)
                self._answers.append(queue.SimpleQueue())
                self._dead.append(False)
                threading.Thread(
                    target=self._reader, args=(index,), name=f"import-worker-{index}", daemon=True
                ).start()
        except BaseException:
            self.close()
            raise

    def _reader(self, index):
        stream = self._procs[index].stdout
        try:
            while True:
                self._answers[index].put(_read_frame(stream))
        except Exception:
            self._dead[index] = True

    def submit(self, items, ingest):
        index = self._next
        self._next = (index + 1) % len(self._procs)
        try:
            _write_frame(self._procs[index].stdin, (items, ingest))
        except (OSError, ValueError) as e:
            raise WorkerFailed(f"worker {index} does not take work: {e}")
        return _Pending(self, index)

    def submit_records(self, records):
        """
        Send spooled C{(uid, body, segment)} records to be prepared (the
        server's ingestion); the result is their L{Prepared}, bodies left out.
        """
        index = self._next
        self._next = (index + 1) % len(self._procs)
        try:
            _write_frame(self._procs[index].stdin, (RECORDS, records))
        except (OSError, ValueError) as e:
            raise WorkerFailed(f"worker {index} does not take work: {e}")
        return _Pending(self, index)

    def _result(self, index):
        answers = self._answers[index]
        while True:
            try:
                return answers.get(timeout=0.5)
            except queue.Empty:
                if self._dead[index] and answers.empty():
                    code = self._procs[index].poll()
                    raise WorkerFailed(f"worker {index} ended (exit status {code})")

    def close(self):
        for proc in self._procs:
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()


def _worker_main():
    """
    A worker: prepare chunks read from stdin until it closes.
    """
    gc.disable()  # see import_measurements
    # Answers get their own descriptor; anything else printed goes to stderr.
    stdout = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    stdin = sys.stdin.buffer
    fingerprints = load_fingerprints()
    while True:
        try:
            first, second = _read_frame(stdin)
        except EOFError:
            return
        if first == RECORDS:
            _write_frame(stdout, prepare_records(second, fingerprints))
        else:
            _write_frame(stdout, prepare_lines(first, fingerprints, _utcnow, second))


class Importer:
    """
    One import run: reads files in chunks of lines, prepares them (in
    process, or in a pool of worker processes), and hands batches of spool
    records to the ingestion pass (in process) or to a running server.

    @param ingestor: an L{Ingestor} on an L{Inline} reactor (in process), or
        None to leave the segments to the server owning C{spool_dir}.
    @param pool: a C{concurrent.futures} executor for L{prepare_lines}, or None.
    """

    def __init__(
        self, spool_dir, quarantine, ingestor=None, progress=None, now=None,
        fingerprints=None, pool=None,
    ):
        self._spool_dir = spool_dir
        self._quarantine = quarantine
        self._ingestor = ingestor
        self._progress = progress or Progress(None)
        self._now = now or _utcnow
        self._fingerprints = fingerprints
        self._pool = pool
        self._inflight = collections.deque()
        self._tag = (
            f"import-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-"
            f"{os.getpid()}-{secrets.token_hex(3)}"
        )
        self._quarantine_files = 0
        self.stats = ImportStats()
        self.segments = []  # handed to a server
        self.skipped = []  # paths of other types
        self._records = []
        self._hints = []
        self._size = 0
        self._bad = []
        self._seen = set()

    # -- reading ---------------------------------------------------------------

    def run(self, paths):
        for path, kind in iter_files(paths):
            if kind is None:
                self.stats.skipped_files += 1
                self.skipped.append(path)
                continue
            self.stats.files += 1
            if kind == "yaml":
                self._bad_line(
                    path, None, "yaml_report",
                    "YAML reports are not imported; convert them to JSON measurements", b"",
                )
                continue
            self._read_file(path, kind)
        while self._inflight:
            self._collect()
        self._flush()
        self._write_bad()
        self._progress.show(self.stats, force=True)
        return self.stats

    def _read_file(self, path, kind):
        number = 0
        chunk = []
        try:
            for number, data in iter_lines(path, kind):
                self.stats.read += 1
                chunk.append((number, data))
                if len(chunk) >= CHUNK_LINES:
                    self._submit(path, chunk)
                    chunk = []
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            where = f"after line {number}" if number else "at its start"
            self._bad_line(path, None, "unreadable_file", f"read error {where}: {e}", b"")
        if chunk:
            self._submit(path, chunk)

    def _submit(self, path, chunk):
        ingest = self._ingestor is not None
        if self._pool is None:
            self._take(path, chunk, prepare_lines(chunk, self._fingerprints, self._now, ingest))
            return
        self._inflight.append((path, chunk, self._pool.submit(chunk, ingest)))
        while len(self._inflight) > MAX_INFLIGHT_CHUNKS:
            self._collect()

    def _collect(self):
        path, chunk, future = self._inflight.popleft()
        try:
            results = future.result()
        except WorkerFailed as e:
            raise CommandError(f"a worker process failed: {e}")
        self._take(path, chunk, results)

    def _take(self, path, chunk, results):
        data = dict(chunk)
        for number, uid, line, prepared in results:
            if uid is None:  # line and prepared are the reason and detail
                self._bad_line(path, number, line, prepared, data[number])
                continue
            digest = uid[-16:]
            if digest in self._seen:
                self.stats.run_duplicates += 1
                continue
            self._seen.add(digest)
            envelope = ENVELOPE_PREFIX_BYTES + line + b"}"
            self._records.append((uid, envelope))
            if prepared is not None:
                self._hints.append(prepared)
            self._size += len(envelope)
            if len(self._records) >= BATCH_RECORDS or self._size >= BATCH_BYTES:
                self._flush()
        self._progress.show(self.stats)

    def _bad_line(self, path, number, reason, detail, data):
        source = f"{path}:{number}" if number else path
        body = data[:MAX_QUARANTINED_BODY]
        entry = Quarantine.entry(reason, detail, source=source, body=body)
        if len(data) > len(body):
            entry["body_truncated"] = True
        self._bad.append(entry)
        self.stats.bad_lines += 1
        if len(self._bad) >= BATCH_RECORDS:
            self._write_bad()

    def _write_bad(self):
        if not self._bad:
            return
        self._quarantine_files += 1
        self._quarantine.write(f"{self._tag}-{self._quarantine_files}", self._bad)
        self._bad = []

    # -- handing over -------------------------------------------------------------

    def _flush(self):
        if not self._records:
            return
        records, hints = self._records, self._hints
        self._records, self._hints, self._size = [], [], 0
        segment = write_sealed_segment(self._spool_dir, records)
        if self._ingestor is None:
            self.segments.append(segment)
            return
        for prepared in hints:
            self._ingestor.hint(prepared)
        self.stats.add(run_sync(ensureDeferred(self._ingestor.ingest_written(segment, records))))
        self._progress.show(self.stats, force=True)

    def wait_for_server(self, patience=SERVER_PATIENCE, poll=0.2, sleep=time.sleep):
        """
        Wait until the server took every segment handed to it, or made no
        progress for C{patience} seconds. Returns how many are left.
        """
        segments_dir = os.path.join(self._spool_dir, "segments")
        pending = list(self.segments)
        last_change = time.monotonic()
        while pending:
            left = [s for s in pending if os.path.exists(os.path.join(segments_dir, s + ".seg"))]
            if len(left) != len(pending):
                last_change = time.monotonic()
            pending = left
            self._progress.show(self.stats, note=f", {len(pending)} batches at the server")
            if not pending or time.monotonic() - last_change > patience:
                break
            sleep(poll)
        return len(pending)


# -- the admin command ----------------------------------------------------------------


def _server_port_answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def _running_server(config):
    """
    The pid of the server that owns the data directory, or None when there
    is none (then the command may open it itself).

    @raise CommandError: when another process that is not a server holds it.
    """
    info = read_control_file(config.data_dir)
    if not config.clickhouse_url:
        holder = directory_holder(config.clickhouse_dir)
        if holder is None:
            return None
        if info is None:
            raise CommandError(
                f"the data directory {config.data_dir} is in use by {holder}, "
                "which is not a server taking imports; wait for it to end and retry"
            )
        return info[2]
    # A ClickHouse server is shared; the spool is this API server's.
    if info is not None and _server_port_answers(info[0]):
        return info[2]
    return None


def _summary(stats, elapsed):
    rate = stats.read / elapsed if elapsed > 0 else 0.0
    return (
        f"read {stats.read} measurements from {stats.files} files in {elapsed:.1f} s "
        f"({rate:.0f}/s): {stats.measurements} searchable, {stats.discarded} archived only "
        f"(no report_id, ZZ or AS0), {stats.all_duplicates} duplicates skipped, "
        f"{stats.all_quarantined} quarantined\n"
    )


def import_measurements(backend, config, args, out, progress_stream=None):
    """
    COMMANDS entry: C{import-measurements PATH...}. Runs in the admin
    process (C{runs_locally}); never opens the database while a server holds
    it.
    """
    if not args:
        raise CommandError("usage: import-measurements PATH...")
    missing = [p for p in args if not os.path.exists(p)]
    if missing:
        raise CommandError(f"no such file or directory: {missing[0]}")
    if progress_stream is None and sys.stderr.isatty():
        progress_stream = sys.stderr
    progress = Progress(progress_stream)
    quarantine = Quarantine(config.quarantine_dir)
    started = time.monotonic()
    server = _running_server(config)
    if server is not None:
        importer = Importer(config.spool_dir, quarantine, None, progress)
        stats = importer.run(args)
        left = importer.wait_for_server()
        progress.done()
        _report_skipped(importer, out)
        out.write(
            f"read {stats.read} measurements from {stats.files} files: "
            f"{len(importer.segments)} batches handed to the server (pid {server}), "
            f"{stats.run_duplicates} duplicates within this run skipped, "
            f"{stats.bad_lines} quarantined; the server skips measurements it already stores\n"
        )
        if left:
            out.write(f"{left} batches are still waiting in the spool; the server will ingest them\n")
        else:
            out.write("the server has ingested them\n")
        return 0
    workers = os.cpu_count() or 1
    pool = None
    if workers > 1 and _input_size(args) >= PARALLEL_MIN_BYTES:
        pool = WorkerPool(workers)
    # Parsed measurements hold no reference cycles; the cyclic collector
    # would only rescan the growing batches (a third of the time).
    collecting = gc.isenabled()
    gc.disable()
    try:
        ingestor, fingerprints, close = _open_locally(config, quarantine)
        try:
            leftover = run_sync(ensureDeferred(ingestor.drain()))
            if leftover.records:
                out.write(
                    f"finished {leftover.records} measurements left in the spool "
                    f"({leftover.measurements} searchable)\n"
                )
            importer = Importer(
                config.spool_dir, quarantine, ingestor, progress,
                fingerprints=fingerprints, pool=pool,
            )
            stats = importer.run(args)
        finally:
            close()
    finally:
        if collecting:
            gc.enable()
        if pool is not None:
            pool.close()
    progress.done()
    _report_skipped(importer, out)
    out.write(_summary(stats, time.monotonic() - started))
    return 0


import_measurements.runs_locally = True


def _report_skipped(importer, out):
    if importer.skipped:
        shown = ", ".join(importer.skipped[:5])
        more = f" and {len(importer.skipped) - 5} more" if len(importer.skipped) > 5 else ""
        out.write(f"skipped {len(importer.skipped)} files of other types: {shown}{more}\n")


def _input_size(paths):
    total = 0
    for path, kind in iter_files(paths):
        if kind in ("lines", "object"):
            try:
                total += os.path.getsize(path)
            except OSError:
                pass
    return total


def _open_locally(config, quarantine):
    """
    The backend, spool and archive of the data directory, opened by this
    process: returns an L{Ingestor} driving them synchronously, the
    fingerprints and a function that closes everything.
    """
    inline = Inline()
    for path in (config.data_dir, config.spool_dir, config.archive_dir):
        os.makedirs(path, exist_ok=True)
    backend = open_backend(config)
    core = None
    archive = None
    try:
        schema.migrate(backend)
        core = SegmentSpool(config.spool_dir).open()
        archive = open_archive(config, inline, inline)
        fingerprints = load_fingerprints()
        ingestor = Ingestor(
            Spool(core, inline, inline),
            ClickHouse(backend, inline, inline),
            archive,
            fingerprints,
            quarantine,
            inline,
            inline,
            collector_id=config.collector_id,
        )
    except BaseException:
        if core is not None:
            core.close()
        backend.close()
        raise

    def close():
        try:
            core.close()
        finally:
            try:
                archive.close()
            finally:
                backend.close()

    return ingestor, fingerprints, close


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker_main()
