"""
Finding a measurement's body (api-routes.md section 5): the local spool,
then the other API hosts in parallel, then the archive, in the order that
makes a hit likely for the measurement's age.

The archive is read by the measurement's own bytes only: a jsonl row that
knows its gzip member's offset and length costs one ranged read (a seek in a
local file, an HTTP Range request to S3); older rows without them fall back
to reading the whole object and counting lines.
"""

import datetime
import json

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from ..storage.archive import LocalArchive, S3Archive, line_at, read_member
from ..storage.spool import InvalidUID, hourdir

log = Logger()

#: Seconds a peer may take to answer before it counts as "not found".
PEER_TIMEOUT = 2.0

_JSONL_BY_REPORT = (
    "SELECT s3path, linenum, byte_offset, byte_length, measurement_uid FROM jsonl "
    "WHERE report_id = {report_id:String} AND input = {input:String} LIMIT 16"
)

_FASTPATH_BY_UID = (
    "SELECT report_id, input FROM fastpath WHERE measurement_uid = {uid:String} LIMIT 1"
)

#: "not looked up yet", as opposed to None, "looked up: no jsonl row".
UNKNOWN = object()


def archive_row(backend, report_id, input_, uid):
    """
    The jsonl row of (report_id, input), the one of C{uid} when there are
    several (legacy data is not unique), or None. Blocking.

    A few rows are fetched and chosen here rather than sorted in SQL: an
    ORDER BY makes ClickHouse read every match before the LIMIT.
    """
    rows = backend.query(_JSONL_BY_REPORT, {"report_id": report_id, "input": input_ or ""})
    for row in rows:
        if uid and row["measurement_uid"] == uid:
            return row
    return rows[0] if rows else None


def archived_row_by_uid(backend, uid):
    """
    The jsonl row of the fastpath row of C{uid} (section 5, "Archive, by
    uid"), or None. Blocking.
    """
    rows = backend.query(_FASTPATH_BY_UID, {"uid": uid})
    if not rows:
        return None
    return archive_row(backend, rows[0]["report_id"], rows[0]["input"], uid)


def open_archive(config, reactor, pool):
    """
    The archive the configuration names: an S3-compatible bucket when
    C{s3_bucket} is set, else C{data_dir/archive}. Ingestion writes through
    the same object (app.py puts it on the context).
    """
    if config.s3_bucket:
        return S3Archive(
            config.s3_bucket,
            config.s3_endpoint_url,
            config.s3_access_key,
            config.s3_secret_key,
            config.s3_region,
            reactor,
            pool,
        )
    return LocalArchive(config.archive_dir, reactor, pool)


# -- pure helpers ------------------------------------------------------------------


def is_new_format(report_id, uid):
    return bool(uid) and report_id.count("_") == 5


def is_fresh(uid, now):
    """
    Received within the last hour (uids sort by reception time).
    """
    return uid > (now - datetime.timedelta(hours=1)).strftime("%Y%m%d%H%M")


def lookup_order(report_id, uid, now):
    """
    The sources to try, in order, for a measurement (section 5).
    """
    if not is_new_format(report_id, uid):
        return ("archive",)
    if is_fresh(uid, now):
        return ("spool", "peers", "archive")
    return ("archive", "spool", "peers")


def unwrap_envelope(data):
    """
    The measurement inside a submission envelope (C{{"format": "json",
    "content": ...}}) as JSON bytes, or None for any other shape.
    """
    try:
        envelope = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(envelope, dict) or envelope.get("format") != "json":
        return None
    if "content" not in envelope:
        return None
    # ASCII escapes keep even lone surrogates of the probe's JSON encodable.
    return json.dumps(envelope["content"], separators=(",", ":")).encode("ascii")


def peer_path(uid):
    """
    The path under which a peer serves a spooled uid (section 13.3), or None
    when the uid cannot be in a spool.
    """
    try:
        return f"/measurement_spool/{hourdir(uid)}/{uid}.post"
    except InvalidUID:
        return None


def first_found(deferreds):
    """
    Fire with the first non-None result of C{deferreds} (which never fail),
    cancelling the others; with None when all gave None.
    """
    out = Deferred()
    pending = [len(deferreds)]
    if not deferreds:
        out.callback(None)
        return out

    def one(result, index):
        pending[0] -= 1
        if out.called:
            return None
        if result is not None:
            out.callback(result)
            for i, other in enumerate(deferreds):
                if i != index and not other.called:
                    other.cancel()
        elif pending[0] == 0:
            out.callback(None)
        return None

    for i, d in enumerate(deferreds):
        d.addBoth(one, i)
    return out


# -- the finder --------------------------------------------------------------------------


class BodyFinder:
    """
    Looks bodies up for the read routes.

    @param spool: a callable returning the server's L{Spool} or None (the
        probe routes create it; it may not exist in a read-only setup).
    @param peers: base URLs of the other API hosts.
    @param http: a treq HTTPClient for the peers.
    """

    def __init__(
        self,
        clickhouse,
        archive,
        spool,
        peers,
        http,
        clock,
        own_url=None,
        peer_timeout=PEER_TIMEOUT,
    ):
        self._db = clickhouse
        self._archive = archive
        self._spool = spool
        self._peers = tuple(p.rstrip("/") for p in peers if p.rstrip("/") != own_url)
        self._http = http
        self._clock = clock
        self._peer_timeout = peer_timeout

    def archive_first(self, report_id, uid):
        """
        Whether the archive is the first source to try for this measurement.
        """
        return lookup_order(report_id, uid, self._now())[0] == "archive"

    def prefetch(self, backend, row):
        """
        In the pool thread that found the fastpath C{row}: look its jsonl row
        up too when the archive comes first, saving a round trip. Stored in
        C{row["archive_row"]} for L{find}.
        """
        if row and self.archive_first(row["report_id"], row["measurement_uid"]):
            row["archive_row"] = archive_row(
                backend, row["report_id"], row["input"], row["measurement_uid"]
            )
        return row

    def _now(self):
        return datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.timezone.utc).replace(
            tzinfo=None
        )

    async def find(self, report_id, input_, uid, archived=UNKNOWN):
        """
        The body of the measurement whose fastpath row has these values, or
        None when no source has it.

        @param archived: its jsonl row (or None) when already looked up.
        """
        for source in lookup_order(report_id, uid, self._now()):
            if source == "spool":
                body = await self.from_spool(uid)
            elif source == "peers":
                body = await self.from_peers(uid)
            elif archived is not UNKNOWN:
                body = await self.read_archived(archived)
            else:
                body = await self.from_archive(report_id, input_, uid)
            if body is not None:
                return body
        return None

    async def from_spool(self, uid):
        spool = self._spool()
        if spool is None:
            return None
        try:
            data = await spool.get(uid)
        except InvalidUID:
            return None
        except Exception:
            log.failure("reading {uid} from the spool failed", uid=uid)
            return None
        if data is None:
            return None
        body = unwrap_envelope(data)
        if body is None:
            log.warn("spooled body of {uid} is not a JSON envelope", uid=uid)
        return body

    def from_peers(self, uid):
        """
        Ask every peer at once; the first that has the uid wins.
        """
        path = peer_path(uid)
        if path is None or not self._peers:
            return _succeed(None)
        attempts = []
        for peer in self._peers:
            d = ensureDeferred(self._from_peer(peer + path))
            d.addTimeout(self._peer_timeout, self._clock)
            d.addErrback(self._peer_failed, peer)
            attempts.append(d)
        return first_found(attempts)

    async def _from_peer(self, url):
        response = await self._http.get(url)
        if response.code == 404:
            await response.content()
            return None
        if response.code != 200:
            await response.content()
            log.warn("peer {url} answered {code}", url=url, code=response.code)
            return None
        data = await response.content()
        body = unwrap_envelope(data)
        if body is None:
            log.warn("peer {url} sent something that is not a JSON envelope", url=url)
        return body

    @staticmethod
    def _peer_failed(failure, peer):
        from twisted.internet.defer import CancelledError

        if not failure.check(CancelledError):
            log.info("peer {peer} did not help: {e}", peer=peer, e=failure.getErrorMessage())
        return None

    async def from_archive(self, report_id, input_, uid):
        """
        By the jsonl row of (report_id, input), preferring the row of this uid.
        """
        row = await self._db.run(archive_row, report_id, input_, uid)
        return await self.read_archived(row)

    async def archived_by_uid(self, uid):
        """
        Archive only, through the fastpath row of C{uid}
        (GET /api/v1/measurement/<uid>).
        """
        return await self.read_archived(await self._db.run(archived_row_by_uid, uid))

    async def read_archived(self, row):
        """
        The line a jsonl row points at: its own gzip member when the row
        knows where it is, else counted out of the whole object.
        """
        if not row:
            return None
        s3path = row["s3path"]
        try:
            if row["byte_length"] > 0:
                member = await self._archive.read_range(
                    s3path, row["byte_offset"], row["byte_length"]
                )
                if member is not None:
                    try:
                        return read_member(member)
                    except ValueError:
                        log.warn("archive {p}: bad member offsets, reading it whole", p=s3path)
            data = await self._archive.read_all(s3path)
            if data is None:
                return None
            return line_at(data, row["linenum"])
        except ValueError as e:
            log.warn("archive object {p} is damaged: {e}", p=s3path, e=e)
            return None
        except Exception:
            log.failure("reading {p} from the archive failed", p=s3path)
            return None


def _succeed(value):
    d = Deferred()
    d.callback(value)
    return d
