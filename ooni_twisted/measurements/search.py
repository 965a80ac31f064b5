"""
Measurement search over the fastpath table (api-routes.md section 12.2,
GET /api/v1/measurements, measurement_meta, torsf_stats): parameters, SQL,
row shaping and paging. Pure functions except L{guarded}, which bounds how
long a route waits for the database.

Besides the reference's offset paging, a keyset cursor lets clients walk
deep pages without an OFFSET scan: every page that has a successor carries
an opaque C{next_cursor} in its metadata, accepted back as C{cursor=}. Both
kinds of paging see one stable order: by measurement_start_time it is the
table's sorting key (measurement_start_time, report_id, input), which lets
ClickHouse read in key order and stop after the page instead of sorting the
whole window; by any other column, that column then measurement_uid.
"""

import base64
import datetime
import json
import math
from dataclasses import dataclass
from urllib.parse import urlencode

from twisted.internet.defer import CancelledError, TimeoutError as DeferredTimeout

from ..storage.clickhouse import QueryTimeout
from ..web.errors import ApiError, BadRequest, jerror
from ..web.params import (
    empty,
    parse_asn,
    parse_bool,
    parse_comma_list,
    parse_date,
    parse_int,
    parse_report_id,
)

#: order_by value -> (SQL column, ClickHouse type of a cursor value).
ORDERABLE = {
    "test_start_time": ("test_start_time", "DateTime"),
    "measurement_start_time": ("measurement_start_time", "DateTime"),
    "input": ("input", "String"),
    "probe_cc": ("probe_cc", "String"),
    "probe_asn": ("probe_asn", "UInt32"),
    "test_name": ("test_name", "String"),
}

DEFAULT_LIMIT = 100

#: The implicit search window before C{until}.
_WINDOW = datetime.timedelta(days=30)

TIMEOUT_MESSAGE = "The database query timed out. Try changing the query parameters."

#: The fixed answer to OONI Probe's okhttp clients (probe issue 1034).
OKHTTP_ANSWER = {
    "metadata": {
        "count": 1,
        "current_page": 1,
        "limit": 100,
        "next_url": None,
        "offset": 0,
        "pages": 1,
        "query_time": 0.001,
    },
    "results": [{"measurement_url": ""}],
}

_RESULT_COLUMNS = (
    "measurement_uid, report_id, probe_cc, probe_asn, test_name, "
    "measurement_start_time, test_start_time, input, anomaly, confirmed, "
    "msm_failure, scores"
)


#: What a ClickHouse DateTime can hold.
_DATETIME_MIN = datetime.datetime(1970, 1, 1)
_DATETIME_MAX = datetime.datetime(2106, 2, 7, 6, 28, 15)


def sql_datetime(value):
    """
    C{value} as a C{{name:DateTime}} parameter: whole seconds (the columns
    have no fraction, so for C{>} and C{<=} dropping it changes nothing) and
    within the type's range (ClickHouse rejects or clamps the rest).
    """
    if value is None:
        return None
    return min(max(value.replace(microsecond=0), _DATETIME_MIN), _DATETIME_MAX)


class Forbidden(ApiError):
    """
    403 for the searches the reference refuses (ZZ, AS0).
    """

    def __init__(self):
        super().__init__(403, {"error": "Forbidden"})


def timeout_error():
    return jerror(TIMEOUT_MESSAGE, 504)


async def guarded(d, clock, seconds):
    """
    Wait for the database Deferred C{d}; a query that hits ClickHouse's
    time limit, or a pool so busy that the answer takes longer than
    C{seconds}, becomes the 504 of section 12.2 instead of a hung client.
    """
    d.addTimeout(seconds, clock)
    try:
        return await d
    except (QueryTimeout, DeferredTimeout, CancelledError):
        raise timeout_error()


# -- cursor ---------------------------------------------------------------------


def sort_key(order_by):
    """
    The (column, ClickHouse type) list a result order sorts by, ending in a
    tie-breaker so that pages never overlap.
    """
    if order_by == "measurement_start_time":
        return (
            ("measurement_start_time", "DateTime"),
            ("report_id", "String"),
            ("input", "String"),
        )
    return (ORDERABLE[order_by], ("measurement_uid", "String"))


def _check_value(value, kind):
    if kind == "DateTime":
        return datetime.datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
    if kind == "UInt32":
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
            raise ValueError("bad value")
        return value
    if not isinstance(value, str):
        raise ValueError("bad value")
    return value


@dataclass(frozen=True)
class Cursor:
    """
    Where the previous page stopped: its order, the sort key values of its
    last row (L{sort_key}), and the logical offset of the next row.
    """

    order_by: str
    order: str
    offset: int
    values: tuple

    @classmethod
    def after(cls, order_by, order, offset, row):
        """
        The cursor that continues after C{row}.
        """
        values = tuple(row[column] for column, _ in sort_key(order_by))
        return cls(order_by, order, offset, values)

    def encode(self):
        values = [
            v.strftime("%Y-%m-%d %H:%M:%S") if isinstance(v, datetime.datetime) else v
            for v in self.values
        ]
        text = json.dumps(
            [2, self.order_by, self.order, self.offset, values],
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return base64.urlsafe_b64encode(text.encode("utf-8")).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, text):
        """
        @raise BadRequest: for anything that is not a cursor of ours.
        """
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            version, order_by, order, offset, values = json.loads(raw.decode("utf-8"))
            if version != 2 or order_by not in ORDERABLE or order not in ("asc", "desc"):
                raise ValueError("unknown cursor")
            if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
                raise ValueError("bad offset")
            key = sort_key(order_by)
            if not isinstance(values, list) or len(values) != len(key):
                raise ValueError("bad values")
            values = tuple(_check_value(v, kind) for v, (_, kind) in zip(values, key))
        except (ValueError, TypeError, UnicodeError, AttributeError):
            raise BadRequest("Invalid cursor")
        return cls(order_by, order, offset, values)


def keyset_condition(key, values, order, params):
    """
    SQL for "after (values) in this order" over the sort key columns, e.g.
    C{a <= x AND (a < x OR (a = x AND b < y))} for descending (a, b); the
    leading range lets the primary index skip what comes before.
    """
    near, far = ("<=", "<") if order == "desc" else (">=", ">")
    names = []
    for i, ((column, kind), value) in enumerate(zip(key, values)):
        params[f"after_{i}"] = sql_datetime(value) if kind == "DateTime" else value
        names.append((column, f"{{after_{i}:{kind}}}"))
    inner = f"{names[-1][0]} {far} {names[-1][1]}"
    for column, placeholder in reversed(names[:-1]):
        inner = f"({column} {far} {placeholder} OR ({column} = {placeholder} AND {inner}))"
    first_column, first_placeholder = names[0]
    return f"{first_column} {near} {first_placeholder} AND {inner}"


# -- /api/v1/measurements ------------------------------------------------------------


@dataclass
class Search:
    """
    A parsed /api/v1/measurements query.
    """

    report_id: object = None
    probe_asn: object = None
    probe_cc: object = None
    test_name: object = None
    since: object = None
    until: object = None
    order_by: str = "measurement_start_time"
    order: str = "desc"
    offset: int = 0
    limit: int = DEFAULT_LIMIT
    anomaly: object = None
    confirmed: object = None
    failure: object = None
    category_code: object = None
    software_versions: object = None
    test_versions: object = None
    engine_versions: object = None
    input: object = None
    domain: object = None
    cursor: object = None


def _raw(args, name):
    value = args.get(name)
    return None if empty(value) else value


def parse_search(args, now):
    """
    Validate the parameters of /api/v1/measurements (the L{QueryArgs} of
    a request) at the naive-UTC time C{now}.

    @raise BadRequest: for a parameter the spec rejects with 400.
    @raise Forbidden: for probe_cc ZZ or probe_asn 0.
    """
    s = Search()
    s.report_id = parse_report_id(args.get("report_id"))
    s.probe_asn = parse_asn(args.get("probe_asn"))
    s.probe_cc = _raw(args, "probe_cc")
    s.test_name = _raw(args, "test_name")
    s.since = parse_date(args.get("since"), "since")
    s.until = parse_date(args.get("until"), "until")
    order_by = args.get("order_by")
    if not empty(order_by):
        if order_by not in ORDERABLE:
            raise BadRequest("Invalid order_by")
        s.order_by = order_by
    order = args.get("order")
    if not empty(order):
        if order.lower() not in ("asc", "desc"):
            raise BadRequest("Invalid order")
        s.order = order.lower()
    s.offset = parse_int(args.get("offset"), "offset", 0, minimum=0)
    s.limit = parse_int(args.get("limit"), "limit", DEFAULT_LIMIT, minimum=1)
    s.anomaly = parse_bool(args.get("anomaly"))
    s.confirmed = parse_bool(args.get("confirmed"))
    s.failure = parse_bool(args.get("failure"))
    s.category_code = _raw(args, "category_code")
    s.software_versions = parse_comma_list(args.get("software_version"))
    s.test_versions = parse_comma_list(args.get("test_version"))
    s.engine_versions = parse_comma_list(args.get("engine_version"))
    s.input = _raw(args, "input")
    s.domain = _raw(args, "domain")
    cursor = args.get("cursor")
    if not empty(cursor):
        s.cursor = Cursor.decode(cursor)
        if (s.cursor.order_by, s.cursor.order) != (s.order_by, s.order):
            raise BadRequest("Invalid cursor: it belongs to another order")
        s.offset = s.cursor.offset

    if s.probe_cc == "ZZ" or s.probe_asn == 0:
        raise Forbidden()

    if s.report_id is None:
        if s.until is None:
            tomorrow = now + datetime.timedelta(days=1)
            s.until = datetime.datetime(tomorrow.year, tomorrow.month, tomorrow.day)
        if s.since is None:
            s.since = max(s.until, _DATETIME_MIN + _WINDOW) - _WINDOW
    return s


def search_sql(s):
    """
    The SELECT for one page of C{s}: (sql, params).
    """
    where = []
    params = {}

    def add(clause, **values):
        where.append(clause)
        params.update(values)

    if s.since is not None:
        add("measurement_start_time > {since:DateTime}", since=sql_datetime(s.since))
    if s.until is not None:
        add("measurement_start_time <= {until:DateTime}", until=sql_datetime(s.until))
    if s.report_id:
        add("report_id = {report_id:String}", report_id=s.report_id)
    if s.probe_cc:
        add("probe_cc = {probe_cc:String}", probe_cc=s.probe_cc)
    else:
        where.append("probe_cc != 'ZZ'")
    if s.probe_asn is not None:
        add("probe_asn = {probe_asn:UInt32}", probe_asn=s.probe_asn)
    else:
        where.append("probe_asn != 0")
    if s.test_name is not None:
        add("test_name = {test_name:String}", test_name=s.test_name)
    for column, values in (
        ("software_version", s.software_versions),
        ("test_version", s.test_versions),
        ("engine_version", s.engine_versions),
    ):
        if values:
            add(f"{column} IN {{{column}s:Array(String)}}", **{f"{column}s": list(values)})
    for column, flag in (
        ("anomaly", s.anomaly),
        ("confirmed", s.confirmed),
        ("msm_failure", s.failure),
    ):
        if flag is not None:
            where.append(f"{column} = '{'t' if flag else 'f'}'")
    if s.input:
        add("input = {input:String}", input=s.input)
    else:
        if s.domain:
            add("domain = {domain:String}", domain=s.domain)
        if s.category_code:
            add(
                "input IN (SELECT url FROM citizenlab "
                "WHERE category_code = {category_code:String})",
                category_code=s.category_code,
            )

    key = sort_key(s.order_by)
    direction = "DESC" if s.order == "desc" else "ASC"
    if s.cursor is not None:
        where.append(keyset_condition(key, s.cursor.values, s.order, params))
    sql = f"SELECT {_RESULT_COLUMNS} FROM fastpath"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY " + ", ".join(f"{column} {direction}" for column, _ in key)
    sql += " LIMIT {limit:UInt64}"
    params["limit"] = s.limit
    if s.cursor is None and s.offset:
        sql += " OFFSET {offset:UInt64}"
        params["offset"] = s.offset
    return sql, params


def _parse_scores(text):
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value


def raw_measurement_url(base_url, uid):
    return f"{base_url}/api/v1/raw_measurement?" + urlencode({"measurement_uid": uid})


def result_row(row, base_url):
    """
    One search result as section 12.2 shows it.
    """
    uid = row["measurement_uid"]
    return {
        "anomaly": row["anomaly"] == "t",
        "confirmed": row["confirmed"] == "t",
        "failure": row["msm_failure"] == "t",
        "input": row["input"] or None,
        "measurement_start_time": row["measurement_start_time"],
        "measurement_uid": uid,
        "measurement_url": raw_measurement_url(base_url, uid),
        "probe_asn": f"AS{row['probe_asn']}",
        "probe_cc": row["probe_cc"],
        "report_id": row["report_id"],
        "scores": _parse_scores(row["scores"]),
        "test_name": row["test_name"],
    }


def paged_url(base_url, path, raw_pairs, replace):
    """
    C{base_url + path} with the request's query pairs in their original
    order, values of C{replace} substituted in place or appended (in
    C{replace}'s order).
    """
    pairs = []
    seen = set()
    for key, value in raw_pairs:
        if key in seen:
            continue
        seen.add(key)
        if key in replace:
            value = replace[key]
        pairs.append((key, value))
    for key, value in replace.items():
        if key not in seen:
            pairs.append((key, value))
    return f"{base_url}{path}?" + urlencode(pairs)


def search_page(s, rows, base_url, raw_pairs, query_time):
    """
    The whole response body for C{rows} fetched with C{s}.
    """
    results = [result_row(row, base_url) for row in rows]
    limit, offset = s.limit, s.offset
    metadata = {
        "count": -1,
        "current_page": math.ceil(offset / limit) + 1,
        "limit": limit,
        "next_url": None,
        "offset": offset,
        "pages": -1,
        "query_time": query_time,
    }
    if len(rows) < limit:
        metadata["count"] = offset + len(rows)
        metadata["pages"] = math.ceil(metadata["count"] / limit)
    else:
        cursor = Cursor.after(s.order_by, s.order, offset + limit, rows[-1])
        metadata["next_cursor"] = cursor.encode()
        replace = {b"offset": str(offset + limit).encode(), b"limit": str(limit).encode()}
        if s.cursor is not None:
            replace = {b"cursor": metadata["next_cursor"].encode(), **replace}
        metadata["next_url"] = paged_url(base_url, "/api/v1/measurements", raw_pairs, replace)
    return {"metadata": metadata, "results": results}


# -- measurement_meta ----------------------------------------------------------------

_META_COLUMNS = (
    "measurement_uid, report_id, input, probe_cc, probe_asn, test_name, "
    "test_start_time, measurement_start_time, scores, anomaly, confirmed, msm_failure"
)


#: Enough of a row to find its body (reading scores and the rest of a
#: granule costs more than the lookup itself).
_LOCATE_COLUMNS = "measurement_uid, report_id, input, probe_asn"


def meta_by_uid(backend, uid, full=True):
    """
    The fastpath row of C{uid}, or None. C{full}: every column of
    measurement_meta plus the citizenlab category ("" when the input is not
    listed); else only what locating the body needs. Blocking: run it in
    the pool.
    """
    rows = backend.query(
        f"SELECT {_META_COLUMNS if full else _LOCATE_COLUMNS} FROM fastpath "
        "WHERE measurement_uid = {uid:String} LIMIT 1",
        {"uid": uid},
    )
    if not rows:
        return None
    row = rows[0]
    if full:
        row["category_code"] = _category(backend, row["input"])
    return row


def meta_by_report(backend, report_id, input_, full=True):
    """
    The fastpath row of (C{report_id}, C{input_}); without an input the row
    with input "" and no category (null), as the reference answers.
    """
    params = {"report_id": report_id, "input": input_ or ""}
    rows = backend.query(
        f"SELECT {_META_COLUMNS if full else _LOCATE_COLUMNS} FROM fastpath "
        "WHERE report_id = {report_id:String} AND input = {input:String} LIMIT 1",
        params,
    )
    if not rows:
        return None
    row = rows[0]
    if full:
        row["category_code"] = None if input_ is None else _category(backend, row["input"])
    return row


def usable(row):
    """
    Whether a fastpath row counts as found (section 4.6: ASN 0 does not).
    """
    return bool(row) and row["probe_asn"] != 0


def _category(backend, url):
    if not url:
        return ""  # citizenlab lists URLs only
    rows = backend.query(
        "SELECT category_code FROM citizenlab WHERE url = {url:String} LIMIT 1", {"url": url}
    )
    return rows[0]["category_code"] if rows else ""


def shape_meta(row):
    """
    The 13-key object of measurement_meta; {} for a missing row or ASN 0.
    """
    if not usable(row):
        return {}
    return {
        "anomaly": row["anomaly"] == "t",
        "category_code": row["category_code"],
        "confirmed": row["confirmed"] == "t",
        "failure": row["msm_failure"] == "t",
        "input": row["input"],
        "measurement_start_time": row["measurement_start_time"],
        "measurement_uid": row["measurement_uid"],
        "probe_asn": row["probe_asn"],
        "probe_cc": row["probe_cc"],
        "report_id": row["report_id"],
        "scores": row["scores"],
        "test_name": row["test_name"],
        "test_start_time": row["test_start_time"],
    }


# -- torsf_stats ------------------------------------------------------------------------


def torsf_sql(probe_cc, since, until):
    where = ["test_name = 'torsf'"]
    params = {}
    if probe_cc:
        where.append("probe_cc = {probe_cc:String}")
        params["probe_cc"] = probe_cc
    if since is not None:
        where.append("measurement_start_time > {since:DateTime}")
        params["since"] = sql_datetime(since)
    if until is not None:
        where.append("measurement_start_time <= {until:DateTime}")
        params["until"] = sql_datetime(until)
    sql = (
        "SELECT toDate(measurement_start_time) AS measurement_start_day, probe_cc, "
        "countIf(anomaly = 't') AS anomaly_count, "
        "countIf(confirmed = 't') AS confirmed_count, "
        "countIf(msm_failure = 't') AS failure_count, "
        "count() AS measurement_count "
        "FROM fastpath WHERE " + " AND ".join(where) + " "
        "GROUP BY measurement_start_day, probe_cc "
        "ORDER BY measurement_start_day, probe_cc"
    )
    return sql, params


def torsf_rows(rows):
    out = []
    for row in rows:
        row = dict(row)
        count = row["measurement_count"]
        row["anomaly_rate"] = row["anomaly_count"] / count if count else 0.0
        out.append(row)
    return out
