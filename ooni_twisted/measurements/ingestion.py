"""
Ingestion: spooled submissions become fastpath rows, archive lines and jsonl
rows (api-routes.md sections 4.4, 4.6, 11.1, 11.2; DESIGN.md "Data flow"),
and leave the spool only once all of that is committed.

A pass works on whole sealed spool segments, oldest first:

1. prepare (file pool; CPU work): unwrap each envelope, score the
   measurement, build its fastpath row. What cannot be read is set aside
   for the quarantine with its reason, never dropped and never fatal;
2. look up (ClickHouse pool): which uids of the pass are already in jsonl
   or fastpath (a pass cut short by a crash), and which contents are already
   stored under another uid (a probe resending the same bytes, an import run
   twice): the uid's hash part is the SHA-512 of the body, so equal bodies
   have equal hashes;
3. plan (file pool): one archive object per (segment, hour, cc, testname),
   named after the segment, one gzip member per line. Re-running a segment
   rebuilds the same objects with the same bytes, so offsets recorded by an
   interrupted pass stay right;
4. commit: quarantine file, archive objects, jsonl rows, fastpath rows --
   each skipping what step 2 found -- then the response cache generation,
   and only then are the segments removed.

A crash anywhere leaves the segments in the spool; the next pass redoes them
and step 2 keeps anything from being written twice.

Choices made here:

* An envelope that is not JSON, a C{"format": "yaml"} envelope and content
  that is not a JSON object go to the quarantine with the raw bytes and
  nothing is archived (the reference archives a line C{{}} for them, which
  keeps nothing useful; the quarantine keeps the bytes).
* Measurements discarded by section 4.6 (no report_id, ZZ, AS0) get no
  fastpath row but are archived with their jsonl row, like the reference
  archives everything it spooled.
* The archive line is the envelope's C{content} exactly as sent when the
  envelope has the compact form C{{"format":"json","content":...}} (what
  probes and the importer send), else C{content} re-serialised compactly;
  either way it is JSON-equal to what was submitted.
* A body byte-equal to one already stored is stored once: the later copy
  (a probe retrying, an import run twice) is counted as a duplicate and its
  uid is not stored, the first uid stands.
* Objects are C{raw/YYYYMMDD/HH/CC/testname/<hour>_<cc>_<testname>.n<collector>.<segment>.jsonl.gz}
  (the hour, cc and test name of the uids, as section 4.4), gzip level
  L{ARCHIVE_COMPRESS_LEVEL} for every writer.

The same L{Ingestor} drives the server's timer and the admin import: the
latter gives it an inline reactor and pool (L{Inline}), so the very same
pass runs synchronously in a process without a reactor.
"""

import base64
import json
import operator
import os
import re
from collections import namedtuple

from twisted.application.internet import TimerService
from twisted.internet.defer import DeferredLock, gatherResults
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..storage.archive import archive_path, build_jsonl_gz
from ..storage.schema import FASTPATH_COLUMNS
from ..storage.spool import validate_uid
from .fastpath_row import discard_reason, fastpath_row
from .fingerprints import Fingerprints
from .scoring import flag_wrong_date, score_measurement, uid_reception_time

__all__ = [
    "Inline",
    "Ingestor",
    "IngestionService",
    "Malformed",
    "PassStats",
    "Prepared",
    "Quarantine",
    "JSONL_COLUMNS",
    "ENVELOPE_PREFIX",
    "find_known",
    "load_fingerprints",
    "plan_pass",
    "prepare",
    "run_sync",
    "start_ingestion",
    "unwrap",
]

log = Logger()

#: The compact envelope head, as probes and the importer write it.
ENVELOPE_PREFIX = '{"format":"json","content":'
ENVELOPE_PREFIX_BYTES = ENVELOPE_PREFIX.encode("ascii")

JSONL_COLUMNS = (
    "report_id",
    "input",
    "s3path",
    "linenum",
    "measurement_uid",
    "byte_offset",
    "byte_length",
)

MEASUREMENT = "measurement"
DISCARDED = "discarded"
QUARANTINED = "quarantined"

#: Per pass: at most this many bytes of segments (at least one segment).
MAX_PASS_BYTES = 64 * 1024 * 1024
#: Uids per look-up query.
LOOKUP_CHUNK = 5000
#: gzip level of archive members. One value for every writer: a segment
#: redone after a crash (maybe by another process) must give the same bytes.
#: Level 3 compresses measurements about twice as fast as 6, 8% bigger.
ARCHIVE_COMPRESS_LEVEL = 3

_DECODER = json.JSONDecoder()
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_ASCII_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
# Report ids that may go into a comma-separated parameter.
_PLAIN = re.compile(r"[A-Za-z0-9_.:\-]*\Z")
_CID_CHARS = re.compile(r"[^A-Za-z0-9-]")


def _fingerprint_paths():
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    return (
        os.path.join(here, "fingerprints_dns.json"),
        os.path.join(here, "fingerprints_http.json"),
    )


def load_fingerprints():
    """
    The blockpage fingerprints shipped with the package. Reads and compiles
    two files: call it from a thread.
    """
    return Fingerprints.from_files(*_fingerprint_paths())


# -- step 1: prepare (pure) ---------------------------------------------------------


class Malformed(ValueError):
    """
    A spooled body that cannot be ingested; C{reason} is a short identifier.
    """

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def encode_line(content):
    """
    Compact JSON bytes of C{content} for an archive line (no newline inside).
    """
    try:
        return _ENCODER.encode(content).encode("utf-8")
    except UnicodeEncodeError:
        # lone surrogates (from \\ud800 escapes): keep them as escapes
        return _ASCII_ENCODER.encode(content).encode("ascii")


def unwrap(body):
    """
    C{(content, line)} of a submission envelope: the measurement and the
    bytes to archive for it.

    @raise Malformed: when C{body} is not a JSON envelope of format json.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.startswith(ENVELOPE_PREFIX):
        try:
            content, end = _DECODER.raw_decode(text, len(ENVELOPE_PREFIX))
        except (ValueError, RecursionError):
            pass
        else:
            rest = text[end:]
            if rest.strip(" \t\r\n") == "}" and isinstance(content, dict):
                line = body[len(ENVELOPE_PREFIX_BYTES) : len(body) - len(rest)]
                if b"\n" in line or b"\r" in line:
                    line = encode_line(content)
                return content, line
    try:
        envelope = json.loads(body)
    except RecursionError:
        raise Malformed("invalid_json", "nested too deeply")
    except ValueError as e:
        raise Malformed("invalid_json", str(e)[:200])
    if not isinstance(envelope, dict):
        raise Malformed("not_an_envelope", "the body is not a JSON object")
    fmt = envelope.get("format")
    if fmt == "yaml":
        raise Malformed("yaml_format", "YAML submissions are not ingested")
    if fmt != "json" or "content" not in envelope:
        raise Malformed("not_an_envelope", "expected format json and a content")
    content = envelope["content"]
    if not isinstance(content, dict):
        raise Malformed("content_not_an_object", type(content).__name__)
    return content, encode_line(content)


def _clean_text(row):
    """
    Make every text value encodable as UTF-8 (JSON escapes can carry lone
    surrogates), so that one odd measurement cannot make an insert fail.
    """
    for key, value in row.items():
        if type(value) is str and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                row[key] = value.encode("utf-8", "replace").decode("utf-8")


class Prepared:
    """
    One spooled record after step 1.

    C{kind} is L{MEASUREMENT} (fastpath row and archive line),
    L{DISCARDED} (archive line only; C{reason} says why) or L{QUARANTINED}
    (C{reason} and C{detail} say why).
    """

    __slots__ = (
        "uid",
        "hash",
        "segment",
        "body",
        "kind",
        "reason",
        "detail",
        "line",
        "member",
        "row",
        "report_id",
        "input",
    )

    def __init__(self, uid, segment, body):
        self.uid = uid
        self.hash = uid[-16:]
        self.segment = segment
        self.body = body
        self.kind = QUARANTINED
        self.reason = self.detail = ""
        self.line = self.member = self.row = None
        self.report_id = self.input = ""

    def compress(self):
        """
        Build the archive member now (where CPU is cheap, e.g. a worker).
        """
        if self.line is not None and self.member is None:
            self.member = gzip_member(self.line)
        return self

    @property
    def group(self):
        """
        (hour, cc, testname) of the uid: the archive object it belongs to.
        """
        return validate_uid(self.uid)


def prepare(uid, body, fingerprints, segment, parsed=None):
    """
    Step 1 for one record: never raises.

    @param parsed: C{(content, line)} when the caller already unwrapped the
        body (the importer), else None.
    """
    p = Prepared(uid, segment, body)
    try:
        content, line = parsed if parsed is not None else unwrap(body)
        if not isinstance(content, dict):
            raise Malformed("content_not_an_object", type(content).__name__)
        received = uid_reception_time(uid)
        reason = discard_reason(content)
        if reason is None:
            scores = score_measurement(content, fingerprints)
            flag_wrong_date(scores, content, received)
            row = fastpath_row(content, uid, scores, received)
        else:
            # only for the report_id and input of the jsonl row
            row = fastpath_row(content, uid, {}, received)
        if b"\\ud" in line or b"\\uD" in line:
            # only \\uDxxx escapes can carry lone surrogates
            _clean_text(row)
        p.line = line
        p.report_id = row["report_id"]
        p.input = row["input"]
        if reason is None:
            p.kind = MEASUREMENT
            p.row = row
        else:
            p.kind = DISCARDED
            p.reason = reason
    except Malformed as e:
        p.kind, p.reason, p.detail = QUARANTINED, e.reason, e.detail
    except Exception as e:  # a bug must not stop ingestion: keep the bytes aside
        log.failure("preparing {uid} failed", uid=uid)
        p.kind, p.reason, p.detail = QUARANTINED, "internal_error", repr(e)[:200]
        p.line = p.row = None
    return p


# -- step 2: look up (blocking, ClickHouse pool) ------------------------------------

Known = namedtuple("Known", ["jsonl_uids", "fastpath_uids", "hashes"])
Known.__doc__ = """
Uids of a pass already in jsonl / fastpath, and the hash parts of every
stored uid found with a hash of the pass (so also other uids' contents).
"""

# Sets travel as one comma-separated text parameter (encoding big arrays
# costs more than the query); none of their values can hold a comma.
_FASTPATH_KNOWN = (
    "SELECT measurement_uid FROM fastpath "
    "WHERE measurement_start_time IN splitByChar(',', {times:String}) "
    "AND right(measurement_uid, 16) IN splitByChar(',', {hashes:String})"
)
_JSONL_KNOWN = (
    "SELECT measurement_uid FROM jsonl "
    "WHERE report_id IN splitByChar(',', {report_ids:String}) "
    "AND right(measurement_uid, 16) IN splitByChar(',', {hashes:String})"
)
_JSONL_KNOWN_ANY = (
    "SELECT measurement_uid FROM jsonl "
    "WHERE right(measurement_uid, 16) IN splitByChar(',', {hashes:String})"
)


def find_known(backend, prepared):
    """
    Step 2 (blocking): which uids and contents of C{prepared} are stored.

    The queries are narrowed by the primary keys (fastpath by
    measurement_start_time, jsonl by report_id) so that they stay cheap on
    big tables: equal bodies have equal values there too.
    """
    jsonl_uids, fastpath_uids = set(), set()
    stored = [p for p in prepared if p.kind != QUARANTINED]
    for start in range(0, len(stored), LOOKUP_CHUNK):
        chunk = stored[start : start + LOOKUP_CHUNK]
        measured = [p for p in chunk if p.kind == MEASUREMENT]
        if measured:
            times = ",".join(
                {p.row["measurement_start_time"].strftime("%Y-%m-%d %H:%M:%S") for p in measured}
            )
            hashes = ",".join({p.hash for p in measured})
            for row in backend.query(_FASTPATH_KNOWN, {"times": times, "hashes": hashes}):
                fastpath_uids.add(row["measurement_uid"])
        plain = [p for p in chunk if _PLAIN.match(p.report_id)]
        odd = [p for p in chunk if not _PLAIN.match(p.report_id)]
        if plain:
            params = {
                "report_ids": ",".join({p.report_id for p in plain}),
                "hashes": ",".join({p.hash for p in plain}),
            }
            for row in backend.query(_JSONL_KNOWN, params):
                jsonl_uids.add(row["measurement_uid"])
        if odd:  # rare: report ids that cannot travel in the list
            params = {"hashes": ",".join({p.hash for p in odd})}
            for row in backend.query(_JSONL_KNOWN_ANY, params):
                jsonl_uids.add(row["measurement_uid"])
    hashes = {u[-16:] for u in jsonl_uids | fastpath_uids}
    return Known(jsonl_uids, fastpath_uids, hashes)


# -- step 3: plan (pure) ---------------------------------------------------------------


class PassStats:
    """
    What passes did, for logs, the admin command and tests.
    """

    FIELDS = (
        "segments",
        "records",
        "measurements",
        "discarded",
        "duplicates",
        "quarantined",
        "recovered",
        "objects",
    )

    def __init__(self, **counts):
        for name in self.FIELDS:
            setattr(self, name, counts.get(name, 0))

    def add(self, other):
        for name in other.FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def as_dict(self):
        return {name: getattr(self, name) for name in self.FIELDS}

    @property
    def stored(self):
        """
        Measurements newly archived (with or without a fastpath row).
        """
        return self.measurements + self.discarded

    def __repr__(self):
        inner = ", ".join(f"{k}={v}" for k, v in self.as_dict().items())
        return f"PassStats({inner})"


Plan = namedtuple(
    "Plan", ["objects", "jsonl_rows", "fastpath_rows", "quarantine", "stats"]
)
Plan.__doc__ = """
What a pass writes: archive C{objects} [(s3path, bytes)], rows for the two
tables (tuples in L{JSONL_COLUMNS} / FASTPATH_COLUMNS order), C{quarantine}
{segment: [Prepared]} and the L{PassStats}.
"""


def batch_name(segment):
    """
    The archive batch part of a segment's objects (letters and digits).
    """
    return segment.replace("-", "")


def safe_collector_id(collector_id):
    """
    The collector id as it may appear in an archive key (else C{0}).
    """
    cid = _CID_CHARS.sub("", str(collector_id))[:64]
    return cid or "0"


_row_values = operator.itemgetter(*FASTPATH_COLUMNS)


def _fastpath_key(p):
    """
    The fastpath sorting key: rows sharing it replace each other.
    """
    return (p.row["measurement_start_time"], p.report_id, p.input)


def gzip_member(line):
    """
    The archive member of one line: what build_jsonl_gz makes for it.
    """
    data, _ = build_jsonl_gz([line], ARCHIVE_COMPRESS_LEVEL)
    return data


def plan_pass(prepared, known, collector_id):
    """
    Step 3: decide what to write for C{prepared} (in spool order) given
    what L{find_known} found.

    A record whose uid is already stored somewhere is finished (only the
    missing rows are written); otherwise a record whose hash is stored, or
    seen earlier in this pass, is a duplicate and skipped. Archive objects
    hold every record of their segment and group that is not a duplicate,
    so they come out the same when a segment is redone.
    """
    cid = safe_collector_id(collector_id)
    stats = PassStats(records=len(prepared))
    stats.segments = len({p.segment for p in prepared})
    groups = {}
    quarantine = {}
    seen = set()
    stored_keys = {
        _fastpath_key(p)
        for p in prepared
        if p.kind == MEASUREMENT and p.uid in known.fastpath_uids
    }
    for p in prepared:
        if p.kind == QUARANTINED:
            quarantine.setdefault(p.segment, []).append(p)
            stats.quarantined += 1
            continue
        in_jsonl = p.uid in known.jsonl_uids
        in_fastpath = p.uid in known.fastpath_uids
        if not (in_jsonl or in_fastpath) and (p.hash in known.hashes or p.hash in seen):
            stats.duplicates += 1
            continue
        if in_jsonl and not in_fastpath and p.kind == MEASUREMENT:
            # Two rows with the same sorting key inserted together are
            # collapsed by the engine at once; a redone pass must not bring
            # back the one that was replaced.
            in_fastpath = _fastpath_key(p) in stored_keys
        seen.add(p.hash)
        hour, cc, testname = p.group
        groups.setdefault((p.segment, hour, cc, testname), []).append(
            (p, in_jsonl, in_fastpath)
        )
    objects, jsonl_rows, fastpath_rows = [], [], []
    for (segment, hour, cc, testname), items in groups.items():
        # one gzip member per line, concatenated: build_jsonl_gz's layout
        members = [p.member or gzip_member(p.line) for p, _, _ in items]
        s3path = archive_path(hour, cc, testname, cid, batch_name(segment))
        objects.append((s3path, b"".join(members)))
        offset = 0
        for linenum, ((p, in_jsonl, in_fastpath), member) in enumerate(zip(items, members)):
            length = len(member)
            if in_jsonl or in_fastpath:
                stats.recovered += 1
            if not in_jsonl:
                jsonl_rows.append((p.report_id, p.input, s3path, linenum, p.uid, offset, length))
            if p.kind == MEASUREMENT:
                if not in_fastpath:
                    fastpath_rows.append(_row_values(p.row))
                    stats.measurements += 1
            elif not in_jsonl:
                stats.discarded += 1
            offset += length
    stats.objects = len(objects)
    return Plan(objects, jsonl_rows, fastpath_rows, quarantine, stats)


# -- the quarantine folder ------------------------------------------------------------


class Quarantine:
    """
    Bodies that cannot be ingested, kept with their reason under
    C{directory} (data_dir/quarantine): one JSON-lines file per spool
    segment or import batch, each line C{{uid, source, reason, detail}}
    plus the body as C{body} (UTF-8 text) or C{body_base64}. Writing the
    same name again replaces the file, so a redone segment leaves one copy.
    Blocking: call from a thread.
    """

    def __init__(self, directory):
        self.directory = directory

    @staticmethod
    def entry(reason, detail="", uid=None, source=None, body=b""):
        """
        One quarantine line (a dict) for C{body}.
        """
        item = {"uid": uid, "source": source, "reason": reason, "detail": detail}
        try:
            item["body"] = body.decode("utf-8")
        except UnicodeDecodeError:
            item["body_base64"] = base64.b64encode(body).decode("ascii")
        return item

    def write(self, name, entries):
        """
        Durably write C{entries} (dicts) as C{<name>.jsonl}; return its path.
        """
        if not re.match(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\Z", name):
            raise ValueError(f"bad quarantine file name {name!r}")
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, name + ".jsonl")
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            for item in entries:
                f.write(_ASCII_ENCODER.encode(item).encode("ascii") + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def write_prepared(self, quarantine):
        """
        Write the quarantined records of a plan, one file per segment.
        """
        for segment, items in quarantine.items():
            self.write(
                segment,
                [
                    self.entry(p.reason, p.detail, uid=p.uid, source=f"spool:{segment}", body=p.body)
                    for p in items
                ],
            )

    def read(self, name):
        """
        The entries of one file (for operators and tests).
        """
        with open(os.path.join(self.directory, name + ".jsonl"), "rb") as f:
            return [json.loads(line) for line in f if line.strip()]

    def names(self):
        try:
            return sorted(n[: -len(".jsonl")] for n in os.listdir(self.directory) if n.endswith(".jsonl"))
        except FileNotFoundError:
            return []


# -- running without a reactor --------------------------------------------------------


class Inline:
    """
    A stand-in for both the reactor and a thread pool that runs "thread"
    work at once in the calling thread, so blocking code (the admin import)
    can drive the asynchronous pass and the archive classes to completion
    synchronously. Only C{callFromThread} and C{callInThreadWithCallback}
    are provided: nothing on the pass needs timers.
    """

    max = 1

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        try:
            result = f(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


def run_sync(d):
    """
    The result of a Deferred that has already fired (raise its failure).
    """
    out = []
    d.addBoth(out.append)
    if not out:
        raise RuntimeError("the work did not complete synchronously")
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


# -- the pass ----------------------------------------------------------------------------


#: Records per message to an ingestion worker process.
WORKER_CHUNK = 256


class Ingestor:
    """
    Drains a L{Spool} into the archive, jsonl and fastpath: L{ingest_once}
    and L{drain} for the spool as it is, L{ingest_written} for a segment the
    caller has just written, L{service} for the timer. Passes never overlap.

    @param spool: the L{ooni_twisted.storage.spool.Spool} (its C{core} is
        read in C{pool} threads).
    @param clickhouse: the asynchronous L{ClickHouse} facade.
    @param archive: an C{IArchive}.
    @param quarantine: a L{Quarantine}.
    @param cache: the response cache (C{invalidate_measurements}) or None.
    """

    def __init__(
        self,
        spool,
        clickhouse,
        archive,
        fingerprints,
        quarantine,
        reactor,
        pool,
        collector_id="0",
        cache=None,
        max_pass_bytes=MAX_PASS_BYTES,
        workers=None,
    ):
        self._spool = spool
        self._db = clickhouse
        self._archive = archive
        self._fingerprints = fingerprints
        self._quarantine = quarantine
        self._reactor = reactor
        self._pool = pool
        self._collector_id = collector_id
        self._cache = cache
        self._max_pass_bytes = max_pass_bytes
        self._workers = workers
        self._lock = DeferredLock()
        self._hints = {}
        self.stopping = False
        self.totals = PassStats()
        self.failures = 0

    def _defer(self, f, *args):
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def hint(self, prepared):
        """
        Offer the L{Prepared} of a uid about to be spooled, so that the pass
        in this process does not redo step 1 for it (the importer).
        """
        self._hints[prepared.uid] = prepared

    # -- steps ------------------------------------------------------------------------

    def _pick(self, segments):
        """
        The oldest segments up to the byte limit (at least one). Blocking.
        """
        core = self._spool.core
        chosen, size = [], 0
        for segment in segments:
            try:
                n = os.path.getsize(os.path.join(core.segments_dir, segment + ".seg"))
            except OSError:
                continue
            if chosen and size + n > self._max_pass_bytes:
                break
            chosen.append(segment)
            size += n
        return chosen

    def _prepare(self, segments, records=None):
        """
        Step 1 for whole segments. Blocking (file reads and CPU work).
        """
        core = self._spool.core
        fingerprints = self._fingerprints
        hints = self._hints
        prepared = []
        todo = []
        for segment in segments:
            found = records[segment] if records is not None else core.records(segment)
            for uid, body in found:
                p = hints.pop(uid, None)
                if p is None:
                    todo.append(len(prepared))
                    p = (uid, body, segment)
                else:
                    p.segment, p.body = segment, body
                prepared.append(p)
        if not todo:
            return prepared
        if self._workers is not None:
            try:
                return self._prepare_in_workers(prepared, todo)
            except Exception:
                # A dead worker process: carry on in this one from now on.
                log.failure("ingestion worker failed; preparing in process")
                self._workers = None
        for index in todo:
            uid, body, segment = prepared[index]
            prepared[index] = prepare(uid, body, fingerprints, segment)
        return prepared

    def _prepare_in_workers(self, prepared, todo):
        """
        Step 1 in the worker processes, so that scoring and compression use
        another core than the reactor's. Blocking (waits for the workers).
        """
        chunks = [todo[i : i + WORKER_CHUNK] for i in range(0, len(todo), WORKER_CHUNK)]
        pending = [
            (chunk, self._workers.submit_records([prepared[i] for i in chunk])) for chunk in chunks
        ]
        out = list(prepared)
        for chunk, answer in pending:
            for index, p in zip(chunk, answer.result()):
                p.body = prepared[index][1]
                out[index] = p
        return out

    def _plan(self, prepared, known):
        return plan_pass(prepared, known, self._collector_id)

    async def _commit(self, plan):
        if plan.quarantine:
            await self._defer(self._quarantine.write_prepared, plan.quarantine)
        if plan.objects:
            await gatherResults(
                [self._archive.put(s3path, data) for s3path, data in plan.objects],
                consumeErrors=True,
            )
        if plan.jsonl_rows:
            await self._db.insert("jsonl", JSONL_COLUMNS, plan.jsonl_rows)
        if plan.fastpath_rows:
            await self._db.insert("fastpath", FASTPATH_COLUMNS, plan.fastpath_rows)
        if (plan.jsonl_rows or plan.fastpath_rows) and self._cache is not None:
            await self._cache.invalidate_measurements()

    async def _process(self, segments, records=None):
        """
        One pass over the given sealed segments; they are removed from the
        spool once everything of them is committed. Returns L{PassStats}.

        @param records: {segment: [(uid, body)]} when the caller has just
            written those segments itself (spares reading them back).
        """
        prepared = await self._defer(self._prepare, segments, records)
        known = await self._db.run(find_known, prepared)
        plan = await self._defer(self._plan, prepared, known)
        await self._commit(plan)
        for segment in segments:
            await self._spool.remove(segment)
        plan.stats.segments = len(segments)
        self.totals.add(plan.stats)
        return plan.stats

    async def ingest_once(self):
        """
        Seal what was submitted so far and run one pass over the oldest
        sealed segments. Returns its L{PassStats} (None: nothing to do).
        """
        async with self._lock:
            await self._spool.seal()
            segments = await self._spool.sealed()
            chosen = await self._defer(self._pick, segments)
            if not chosen:
                return None
            return await self._process(chosen)

    async def ingest_written(self, segment, records):
        """
        Ingest a segment this process has just written with
        C{write_sealed_segment(spool_dir, records)} (the importer), without
        reading it back. Returns L{PassStats}.
        """
        async with self._lock:
            return await self._process([segment], {segment: records})

    async def drain(self):
        """
        Pass after pass until the spool is empty (or the service stops).
        Returns the summed L{PassStats}.
        """
        total = PassStats()
        while not self.stopping:
            stats = await self.ingest_once()
            if stats is None:
                break
            total.add(stats)
            if stats.stored or stats.quarantined:
                log.info(
                    "ingested {n} measurements ({d} discarded, {q} quarantined, "
                    "{dup} duplicates) from {s} segments",
                    n=stats.measurements,
                    d=stats.discarded,
                    q=stats.quarantined,
                    dup=stats.duplicates,
                    s=stats.segments,
                )
        return total

    async def tick(self):
        """
        The timer body: drain, log any error, never stop the timer.
        """
        try:
            await self.drain()
        except Exception:
            self.failures += 1
            log.failure("ingestion pass failed; retrying next tick")

    def service(self, interval, clock=None):
        """
        A service running L{tick} every C{interval} seconds.
        """
        return IngestionService(self, interval, clock)


class IngestionService(TimerService):
    """
    The ingestion timer; stopping it lets the running pass finish and
    starts no new one.
    """

    def __init__(self, ingestor, interval, clock=None):
        self.ingestor = ingestor
        TimerService.__init__(self, interval, self._run)
        self.clock = clock

    def _run(self):
        from twisted.internet.defer import ensureDeferred

        return ensureDeferred(self.ingestor.tick())

    def startService(self):
        self.ingestor.stopping = False
        TimerService.startService(self)

    def stopService(self):
        self.ingestor.stopping = True
        return TimerService.stopService(self)


async def start_ingestion(context):
    """
    Build the server's L{Ingestor} from the context (its spool, database,
    archive and cache) and add its timer to C{context.timers}.
    """
    fingerprints = await deferToThreadPool(context.reactor, context.file_pool, load_fingerprints)
    config = context.config
    workers = None
    if config.ingest_workers:
        from .importer import WorkerPool

        workers = WorkerPool(config.ingest_workers)
        context.on_close(workers.close)
    ingestor = Ingestor(
        context.spool,
        context.clickhouse,
        context.archive,
        fingerprints,
        Quarantine(config.quarantine_dir),
        context.reactor,
        context.file_pool,
        collector_id=config.collector_id,
        cache=getattr(context, "cache", None),
        workers=workers,
    )
    ingestor.service(config.ingest_interval, context.reactor).setServiceParent(context.timers)
    return ingestor
