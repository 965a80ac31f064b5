"""
The legacy "Measurements API v1" file listing, GET /api/v1/files
(api-routes.md section 13.1): one result per report of the fastpath table,
pointing at the archive object that holds it; and the local archive's
download route, GET /files/download/<path> (section 13.2).
"""

import datetime
import math
import re
from dataclasses import dataclass
from urllib.parse import urlencode

from twisted.web.static import File

from ..web.errors import BadRequest, v1_error
from ..web.params import empty, parse_asn, parse_date, parse_int
from .search import paged_url, sql_datetime

#: order_by value -> SQL expression over the grouped reports.
FILES_ORDER = {
    "test_start_time": "first_start",
    "probe_cc": "cc",
    "report_id": "report_id",
    "probe_asn": "asn",
    "test_name": "tname",
    "index": "idx",
    "idx": "idx",
    "report_no": "idx",
}

_CC = re.compile(r"^[A-Za-z]{2}$")

_EPOCH = datetime.datetime(1970, 1, 1)

# The leading YYYYmmddHHMMSS.ffffff of a uid as microseconds since the epoch.
_UID_TIME = r"^[0-9]{14}[.][0-9]{6}_"
_INDEX_EXPR = (
    "coalesce(toUnixTimestamp64Micro(parseDateTime64BestEffortOrNull(concat("
    "substring(first_uid, 1, 8), 'T', substring(first_uid, 9, 6), '.', "
    "substring(first_uid, 16, 6)), 6, 'UTC')), "
    "toInt64(toUnixTimestamp(first_start)) * 1000000)"
)


@dataclass
class FilesQuery:
    probe_cc: object = None
    probe_asn: object = None
    test_name: object = None
    since: object = None
    until: object = None
    since_index: object = None
    order_by: str = "test_start_time"
    order: str = "desc"
    offset: int = 0
    limit: int = 100


def parse_files_query(args):
    """
    Validate the listing's parameters; errors are the v1 shape (E9).
    """
    try:
        return _parse(args)
    except BadRequest as e:
        raise v1_error(e.message)


def _parse(args):
    q = FilesQuery()
    cc = args.get("probe_cc")
    if not empty(cc):
        if not _CC.match(cc):
            raise BadRequest("Invalid probe_cc")
        q.probe_cc = cc.upper()
    q.probe_asn = parse_asn(args.get("probe_asn"))
    test_name = args.get("test_name")
    q.test_name = None if empty(test_name) else test_name
    q.since = parse_date(args.get("since"), "since")
    q.until = parse_date(args.get("until"), "until")
    q.since_index = parse_int(args.get("since_index"), "since_index")
    order_by = args.get("order_by")
    if not empty(order_by):
        if order_by not in FILES_ORDER:
            raise BadRequest(f"{order_by!r} is not one of {sorted(FILES_ORDER)}")
        q.order_by = order_by
    order = args.get("order")
    if not empty(order):
        if order.lower() not in ("asc", "desc"):
            raise BadRequest("Invalid order")
        q.order = order.lower()
    q.offset = parse_int(args.get("offset"), "offset", 0, minimum=0)
    q.limit = parse_int(args.get("limit"), "limit", 100, minimum=1)
    return q


def files_sql(q):
    """
    (grouped reports SQL without ORDER/LIMIT, params).
    """
    where = ["probe_cc != 'ZZ'", "probe_asn != 0"]
    params = {}
    if q.probe_cc:
        where.append("probe_cc = {probe_cc:String}")
        params["probe_cc"] = q.probe_cc
    if q.probe_asn is not None:
        where.append("probe_asn = {probe_asn:UInt32}")
        params["probe_asn"] = q.probe_asn
    if q.test_name:
        where.append("test_name = {test_name:String}")
        params["test_name"] = q.test_name
    having = []
    if q.since is not None:
        having.append("first_start > {since:DateTime}")
        params["since"] = sql_datetime(q.since)
    if q.until is not None:
        having.append("first_start <= {until:DateTime}")
        params["until"] = sql_datetime(q.until)
    if q.since_index is not None:
        having.append("idx > {since_index:Int64}")
        params["since_index"] = q.since_index
    sql = (
        "SELECT report_id, any(probe_cc) AS cc, any(probe_asn) AS asn, "
        "any(test_name) AS tname, min(test_start_time) AS first_start, "
        f"minIf(measurement_uid, match(measurement_uid, '{_UID_TIME}')) AS first_uid, "
        f"{_INDEX_EXPR} AS idx "
        "FROM fastpath WHERE " + " AND ".join(where) + " GROUP BY report_id"
    )
    if having:
        sql += " HAVING " + " AND ".join(having)
    return sql, params


def page_sql(q):
    grouped, params = files_sql(q)
    column = FILES_ORDER[q.order_by]
    direction = "DESC" if q.order == "desc" else "ASC"
    tiebreak = "report_id" if column == "idx" else "idx"
    sql = (
        f"{grouped} ORDER BY {column} {direction}, {tiebreak} {direction} "
        "LIMIT {limit:UInt64} OFFSET {offset:UInt64}"
    )
    return sql, dict(params, limit=q.limit, offset=q.offset)


def count_sql(q):
    grouped, params = files_sql(q)
    return f"SELECT count() AS n FROM ({grouped})", params


def fetch_listing(backend, q):
    """
    (total count, page rows, {report_id: s3path}); blocking, for the pool.
    """
    count = backend.query(*count_sql(q))[0]["n"]
    rows = backend.query(*page_sql(q)) if q.offset < count else []
    paths = {}
    if rows:
        found = backend.query(
            "SELECT report_id, min(s3path) AS s3path FROM jsonl "
            "WHERE report_id IN {rids:Array(String)} GROUP BY report_id",
            {"rids": [r["report_id"] for r in rows]},
        )
        paths = {r["report_id"]: r["s3path"] for r in found}
    return count, rows, paths


def download_url(report_id, s3path, archive, base_url):
    if s3path:
        return archive.public_url(s3path, base_url)
    return f"{base_url}/api/v1/raw_measurement?" + urlencode({"report_id": report_id})


def listing(q, count, rows, paths, archive, base_url, raw_pairs):
    """
    The response body of the listing.
    """
    results = []
    for row in rows:
        rid = row["report_id"]
        results.append(
            {
                "download_url": download_url(rid, paths.get(rid), archive, base_url),
                "index": row["idx"],
                "probe_asn": f"AS{row['asn']}",
                "probe_cc": row["cc"],
                "test_name": row["tname"],
                "test_start_time": row["first_start"],
            }
        )
    next_url = None
    if q.offset + q.limit < count:
        replace = {b"offset": str(q.offset + q.limit).encode(), b"limit": str(q.limit).encode()}
        next_url = paged_url(base_url, "/api/v1/files", raw_pairs, replace)
    metadata = {
        "count": count,
        "current_page": math.ceil(q.offset / q.limit) + 1,
        "limit": q.limit,
        "next_url": next_url,
        "offset": q.offset,
        "pages": math.ceil(count / q.limit),
    }
    return {"metadata": metadata, "results": results}


def uid_index(uid, test_start_time):
    """
    The v1 C{index} of a report computed in Python (the SQL above does the
    same): reception time of C{uid} in microseconds, else C{test_start_time}.
    """
    if re.match(_UID_TIME, uid or ""):
        moment = datetime.datetime.strptime(uid[:21], "%Y%m%d%H%M%S.%f")
    else:
        moment = test_start_time.replace(microsecond=0)
    return (moment - _EPOCH) // datetime.timedelta(microseconds=1)


class ArchiveFile(File):
    """
    One archive object served as it is stored: C{.gz} is the object's own
    type (application/gzip), not a transfer encoding to undo.
    """

    # A leaf: the route already consumed the object's path.
    isLeaf = True
    contentEncodings = {}
    contentTypes = dict(File.contentTypes, **{".gz": "application/gzip"})

    def directoryListing(self):
        return self.childNotFound


def download_resource(archive, path):
    """
    A resource streaming the local archive object at C{path}, or None when
    the archive is not local, the object is absent or the path is unsafe.
    """
    found = archive.local_file(path)
    if found is None:
        return None
    return ArchiveFile(found.path, defaultType="application/octet-stream")
