"""Measurement archive: gzip JSONL objects in a local folder or an S3 bucket.

Objects use the key layout of OONI's public bucket (§4.4).  Every line is
its own gzip member: gunzip of the whole object still yields the JSONL, and
one measurement can be read back with a ranged read of its member (offset and
length kept next to its jsonl row) instead of downloading the whole object.
"""

import os
import re
import secrets
import threading
import zlib

from twisted.internet.defer import fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.filepath import FilePath, InsecurePath
from zope.interface import Interface, implementer

_HOUR_RE = re.compile(r"\A\d{10}\Z")
_CC_RE = re.compile(r"\A[A-Za-z0-9]{2}\Z")
_TESTNAME_RE = re.compile(r"\A[A-Za-z0-9]{1,64}\Z")
_CID_RE = re.compile(r"\A[A-Za-z0-9-]{1,64}\Z")
_BATCH_RE = re.compile(r"\A[A-Za-z0-9]{1,64}\Z")
_MAX_KEY = 1024


class ArchiveError(Exception):
    """The archive store failed or answered something unexpected."""


class InvalidArchivePath(ValueError):
    """An s3path or prefix is malformed or tries to leave the archive."""


# -- pure helpers -----------------------------------------------------------


def _gzip_member(data, level=6):
    # wbits 31 = gzip container; zlib leaves mtime 0, so output is stable.
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def build_jsonl_gz(lines, level=6):
    """Pack JSON lines into one gzip object, one gzip member per line.

    Returns ``(data, spans)``; ``spans[i] = (offset, length)`` locates the
    member of line ``i``.  A line gets a trailing newline when it has none;
    a line with an inner newline would break JSONL and raises ValueError.
    """
    parts = []
    spans = []
    offset = 0
    for line in lines:
        if not isinstance(line, (bytes, bytearray)):
            raise TypeError("lines must be bytes")
        line = bytes(line)
        if not line.endswith(b"\n"):
            line += b"\n"
        if b"\n" in line[:-1]:
            raise ValueError("a JSONL line cannot contain a newline")
        member = _gzip_member(line, level)
        parts.append(member)
        spans.append((offset, len(member)))
        offset += len(member)
    return b"".join(parts), spans


def read_member(data):
    """Gunzip the single gzip member at the start of ``data``.

    Returns the line as stored (with its trailing newline).  Raises
    ValueError when ``data`` does not start with a complete gzip member.
    """
    d = zlib.decompressobj(31)
    try:
        out = d.decompress(data)
    except zlib.error as e:
        raise ValueError("not a gzip member: %s" % (e,)) from None
    if not d.eof:
        raise ValueError("truncated gzip member")
    return out


def line_at(data, linenum):
    """Line ``linenum`` (0-based, newline kept) of a whole gzip JSONL object.

    Works for objects written by anyone (any member layout); None when the
    object is shorter.  Raises ValueError for data that is not gzip.
    """
    out = []
    rest = data
    while rest:
        d = zlib.decompressobj(31)
        try:
            out.append(d.decompress(rest))
        except zlib.error as e:
            raise ValueError("not gzip data: %s" % (e,)) from None
        if not d.eof:
            raise ValueError("truncated gzip data")
        rest = d.unused_data
    lines = b"".join(out).splitlines(keepends=True)
    if not isinstance(linenum, int) or linenum < 0 or linenum >= len(lines):
        return None
    return lines[linenum]


def archive_path(hour, cc, testname, collector_id, batch):
    """The §4.4 s3path of an archive batch.

    ``raw/YYYYMMDD/HH/CC/testname/YYYYmmddHH_CC_testname.n<cid>.<batch>.jsonl.gz``
    Raises InvalidArchivePath for parts that could not be a key segment.
    """
    checks = (
        (hour, _HOUR_RE, "hour"),
        (cc, _CC_RE, "cc"),
        (testname, _TESTNAME_RE, "testname"),
        (str(collector_id), _CID_RE, "collector_id"),
        (str(batch), _BATCH_RE, "batch"),
    )
    if isinstance(batch, bool) or isinstance(collector_id, bool):
        raise InvalidArchivePath("invalid batch or collector_id")
    for value, rx, what in checks:
        if not isinstance(value, str) or not rx.match(value):
            raise InvalidArchivePath("invalid %s: %r" % (what, value))
    return "raw/%s/%s/%s/%s/%s_%s_%s.n%s.%s.jsonl.gz" % (
        hour[:8], hour[8:], cc, testname, hour, cc, testname, collector_id, batch,
    )


def split_s3path(s3path):
    """Key segments of an s3path; raises InvalidArchivePath for unsafe keys."""
    if not isinstance(s3path, str) or not s3path or len(s3path) > _MAX_KEY:
        raise InvalidArchivePath("invalid s3path")
    segments = s3path.split("/")
    for seg in segments:
        if seg in ("", ".", "..") or "\\" in seg or "\x00" in seg:
            raise InvalidArchivePath("invalid s3path: %r" % (s3path[:200],))
    return segments


def _check_prefix(prefix):
    if not isinstance(prefix, str) or len(prefix) > _MAX_KEY:
        raise InvalidArchivePath("invalid prefix")
    if prefix.startswith("/") or "\\" in prefix or "\x00" in prefix:
        raise InvalidArchivePath("invalid prefix: %r" % (prefix[:200],))
    if any(seg in (".", "..") for seg in prefix.split("/")):
        raise InvalidArchivePath("invalid prefix: %r" % (prefix[:200],))


def _check_range(offset, length):
    for v in (offset, length):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError("offset and length must be integers >= 0")


# -- interface --------------------------------------------------------------


class IArchive(Interface):
    """Where archive objects live; the rest of the code never knows which."""

    def put(s3path, data):
        """Store ``data`` under ``s3path``; Deferred fires once durable."""

    def read_range(s3path, offset, length):
        """Deferred bytes of ``[offset, offset+length)``; None if missing/short."""

    def read_all(s3path):
        """Deferred whole object, or None if missing."""

    def list(prefix="raw/"):
        """Deferred sorted list of s3paths starting with ``prefix``."""

    def public_url(s3path, base_url):
        """URL under which clients can download the object."""

    def local_file(s3path):
        """FilePath of an existing local object, or None (remote/absent/unsafe)."""

    def close():
        """Release connections; Deferred."""


def _tmp_name(name):
    return ".%s.%s.tmp" % (name, secrets.token_hex(4))


def _is_tmp(name):
    return name.startswith(".") and name.endswith(".tmp")


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@implementer(IArchive)
class LocalArchive:
    """Objects as files under ``root`` (data_dir/archive), same key layout.

    File work runs in the thread pool; keys are mapped to paths through
    FilePath.child per segment, which refuses traversal.
    """

    def __init__(self, root, reactor, threadpool):
        self.root = root if isinstance(root, FilePath) else FilePath(os.path.abspath(root))
        self._reactor = reactor
        self._pool = threadpool

    def _defer(self, f, *args):
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def _path(self, s3path):
        p = self.root
        try:
            for seg in split_s3path(s3path):
                p = p.child(seg)
        except InsecurePath:
            raise InvalidArchivePath("invalid s3path: %r" % (s3path[:200],)) from None
        return p

    def put(self, s3path, data):
        try:
            target = self._path(s3path)
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError("data must be bytes")
        except (InvalidArchivePath, TypeError):
            return fail()
        return self._defer(self._put, target, bytes(data))

    def _put(self, target, data):
        parent = target.parent()
        self._makedirs(parent)
        tmp = parent.child(_tmp_name(target.basename()))
        fd = os.open(tmp.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp.path)
            raise
        os.close(fd)
        os.replace(tmp.path, target.path)
        _fsync_dir(parent.path)

    def _makedirs(self, directory):
        """Create missing directories below root, fsyncing each new entry."""
        if directory.isdir():
            return
        if directory == self.root:
            os.makedirs(directory.path, exist_ok=True)
            return
        self._makedirs(directory.parent())
        try:
            os.mkdir(directory.path, 0o755)
        except FileExistsError:
            return
        _fsync_dir(directory.parent().path)

    def read_range(self, s3path, offset, length):
        try:
            path = self._path(s3path)
            _check_range(offset, length)
        except (InvalidArchivePath, ValueError):
            return fail()
        return self._defer(self._read, path, offset, length)

    def read_all(self, s3path):
        try:
            path = self._path(s3path)
        except InvalidArchivePath:
            return fail()
        return self._defer(self._read, path, 0, None)

    @staticmethod
    def _read(path, offset, length):
        try:
            with open(path.path, "rb") as f:
                if length is None:
                    return f.read()
                f.seek(offset)
                data = f.read(length)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return data if len(data) == length else None

    def list(self, prefix="raw/"):
        try:
            _check_prefix(prefix)
        except InvalidArchivePath:
            return fail()
        return self._defer(self._list, prefix)

    def _list(self, prefix):
        # Walk only below the deepest directory named in full by the prefix.
        dirs = prefix.split("/")[:-1]
        start = self.root
        for seg in dirs:
            if seg:
                start = start.child(seg)
        found = []
        root_len = len(self.root.path) + 1
        for dirpath, _dirnames, filenames in os.walk(start.path):
            for name in filenames:
                if _is_tmp(name):
                    continue
                key = os.path.join(dirpath, name)[root_len:].replace(os.sep, "/")
                if key.startswith(prefix):
                    found.append(key)
        return sorted(found)

    def public_url(self, s3path, base_url):
        return "%s/files/download/%s" % (base_url.rstrip("/"), s3path)

    def local_file(self, s3path):
        """Existing regular file for the local download route, else None."""
        try:
            p = self._path(s3path)
        except InvalidArchivePath:
            return None
        if _is_tmp(p.basename()) or not p.isfile():
            return None
        return p

    def close(self):
        return succeed(None)


@implementer(IArchive)
class S3Archive:
    """Objects in an S3-compatible bucket.

    Uploads and listings use boto3 in the thread pool.  Reads are HTTP GETs
    through treq (with a Range header for one member) of a URL presigned by
    boto3, so no thread is held while bytes travel.
    """

    def __init__(
        self,
        bucket,
        endpoint_url,
        access_key,
        secret_key,
        region,
        reactor,
        threadpool,
        http_client=None,
        timeout=60,
        presign_seconds=600,
    ):
        if not bucket:
            raise ValueError("S3Archive needs a bucket")
        self.bucket = bucket
        self._endpoint_url = endpoint_url or None
        self._access_key = access_key or None
        self._secret_key = secret_key or None
        self._region = region or "us-east-1"
        self._reactor = reactor
        self._pool = threadpool
        self._timeout = timeout
        self._presign_seconds = presign_seconds
        self._client = None
        self._client_lock = threading.Lock()
        self._http_pool = None
        if http_client is None:
            from treq.client import HTTPClient
            from twisted.web.client import Agent, HTTPConnectionPool

            self._http_pool = HTTPConnectionPool(reactor, persistent=True)
            http_client = HTTPClient(Agent(reactor, pool=self._http_pool))
        self._http = http_client

    def _defer(self, f, *args, **kw):
        return deferToThreadPool(self._reactor, self._pool, f, *args, **kw)

    def _s3(self):
        """The boto3 client, built on first use in a thread (it is slow)."""
        with self._client_lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                cfg = Config(
                    signature_version="s3v4",
                    # A custom endpoint (MinIO, moto, ...) is usually addressed
                    # by path; AWS itself by virtual host.
                    s3={"addressing_style": "path" if self._endpoint_url else "auto"},
                    max_pool_connections=max(10, getattr(self._pool, "max", 10)),
                    retries={"max_attempts": 3, "mode": "standard"},
                )
                session = boto3.session.Session()
                self._client = session.client(
                    "s3",
                    endpoint_url=self._endpoint_url,
                    aws_access_key_id=self._access_key,
                    aws_secret_access_key=self._secret_key,
                    region_name=self._region,
                    config=cfg,
                )
            return self._client

    def put(self, s3path, data):
        try:
            split_s3path(s3path)
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError("data must be bytes")
        except (InvalidArchivePath, TypeError):
            return fail()
        return self._defer(self._put, s3path, bytes(data))

    def _put(self, s3path, data):
        try:
            self._s3().put_object(
                Bucket=self.bucket, Key=s3path, Body=data, ContentType="application/gzip"
            )
        except Exception as e:
            raise ArchiveError("S3 upload of %s failed: %s" % (s3path, e)) from e

    def _presign(self, s3path):
        return self._s3().generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": s3path},
            ExpiresIn=self._presign_seconds,
        )

    def _get(self, s3path, headers):
        d = self._defer(self._presign, s3path)
        d.addCallback(
            lambda url: self._http.get(
                url, headers=headers, reactor=self._reactor, timeout=self._timeout
            )
        )
        return d

    def read_range(self, s3path, offset, length):
        try:
            split_s3path(s3path)
            _check_range(offset, length)
        except (InvalidArchivePath, ValueError):
            return fail()
        if length == 0:
            return self.read_all(s3path).addCallback(
                lambda data: None if data is None or offset > len(data) else b""
            )
        rng = "bytes=%d-%d" % (offset, offset + length - 1)
        d = self._get(s3path, {"Range": [rng]})
        d.addCallback(self._got_range, s3path, offset, length)
        return d

    def _got_range(self, response, s3path, offset, length):
        code = response.code
        if code in (404, 416):
            return response.content().addCallback(lambda _: None)
        if code not in (200, 206):
            return response.content().addCallback(self._http_error, s3path, code)

        def cut(body):
            if code == 200:  # the server ignored the Range header
                body = body[offset : offset + length]
            return body if len(body) == length else None

        return response.content().addCallback(cut)

    def read_all(self, s3path):
        try:
            split_s3path(s3path)
        except InvalidArchivePath:
            return fail()
        d = self._get(s3path, None)
        d.addCallback(self._got_all, s3path)
        return d

    def _got_all(self, response, s3path):
        if response.code == 404:
            return response.content().addCallback(lambda _: None)
        if response.code != 200:
            return response.content().addCallback(self._http_error, s3path, response.code)
        return response.content()

    @staticmethod
    def _http_error(body, s3path, code):
        raise ArchiveError("S3 GET %s: HTTP %d %r" % (s3path, code, body[:200]))

    def list(self, prefix="raw/"):
        try:
            _check_prefix(prefix)
        except InvalidArchivePath:
            return fail()
        return self._defer(self._list, prefix)

    def _list(self, prefix):
        keys = []
        try:
            pages = self._s3().get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(o["Key"] for o in page.get("Contents", ()))
        except Exception as e:
            raise ArchiveError("S3 listing of %s failed: %s" % (prefix, e)) from e
        return sorted(keys)

    def public_url(self, s3path, base_url=None):
        return "https://%s.s3.amazonaws.com/%s" % (self.bucket, s3path)

    def local_file(self, s3path):
        return None

    def close(self):
        if self._http_pool is not None:
            return self._http_pool.closeCachedConnections()
        return succeed(None)
