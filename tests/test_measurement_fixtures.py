"""
Data seeding shared by the measurement tests (no tests here): fastpath rows
from tests/data, real measurement bodies, archive batches with their jsonl
rows, written straight into a running server's tables and archive as
ingestion would.
"""

import datetime
import hashlib
import json

from ooni_twisted.storage import schema
from ooni_twisted.storage.archive import archive_path, build_jsonl_gz

from .support import DATA, make_config

_TIMES = ("test_start_time", "measurement_start_time")

#: Ingestion passes only at server start: tests that seed tables themselves
#: (or keep a body in the spool on purpose) must not race a pass.
IDLE_INGESTION = "3600"


def quiet_config(testcase, **overrides):
    """
    make_config for a test that seeds tables itself (no periodic ingestion).
    """
    overrides.setdefault("ingest_interval", IDLE_INGESTION)
    return make_config(testcase.mktemp(), **overrides)



def fastpath_rows():
    """
    The 1080 real fastpath rows of tests/data/fastpath_rows.jsonl as dicts
    (times still as text).
    """
    with open(DATA.child("fastpath_rows.jsonl").path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _value(row, column):
    value = row.get(column)
    if column in _TIMES and isinstance(value, str):
        return datetime.datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
    if value is None:
        return "" if column not in ("probe_asn", "blocking_general", "test_runtime",
                                    "is_ssl_expected", "page_len", "page_len_ratio",
                                    "server_asn") else 0
    return value


async def seed_fastpath(server, rows):
    """
    Insert fastpath rows (dicts, missing columns defaulted) through the bulk
    insert path.
    """
    values = [[_value(row, c) for c in schema.FASTPATH_COLUMNS] for row in rows]
    await server.clickhouse.insert("fastpath", schema.FASTPATH_COLUMNS, values)


async def seed_citizenlab(server, entries):
    """
    Insert (url, cc, category_code) rows into citizenlab.
    """
    rows = []
    for url, cc, category in entries:
        domain = url.split("/")[2]
        rows.append((domain, url, cc, category))
    await server.clickhouse.insert("citizenlab", ("domain", "url", "cc", "category_code"), rows)


def measurements():
    """
    The real measurements of tests/data/measurements/all.jsonl, as
    (line bytes, decoded object).
    """
    out = []
    with open(DATA.child("measurements").child("all.jsonl").path, "rb") as f:
        for line in f:
            out.append((line.rstrip(b"\n"), json.loads(line)))
    return out


def usable_measurements():
    """
    The measurements whose new-format report_id, cc and ASN would be kept by
    ingestion (section 4.6).
    """
    found = []
    for line, m in measurements():
        rid = m.get("report_id") or ""
        if rid.count("_") != 5 or not m.get("probe_cc") or m.get("probe_asn") in (None, "AS0"):
            continue
        if isinstance(m.get("input"), list):
            continue
        found.append((line, m))
    return found


def new_uid(received, cc, testname, body):
    """
    A measurement_uid as section 4.2 builds it.
    """
    digest = hashlib.sha512(body).hexdigest()[:16]
    return f"{received.strftime('%Y%m%d%H%M%S.%f')}_{cc}_{testname}_{digest}"


def uid_parts(report_id):
    _, testname, cc, _, _, _ = report_id.split("_")
    return cc, testname


def envelope(line):
    return b'{"format":"json","content":' + line + b"}"


def fastpath_row_for(m, uid):
    """
    The fastpath row ingestion would write for measurement C{m}, enough for
    the read routes.
    """
    inp = m.get("input") or ""
    return {
        "measurement_uid": uid,
        "report_id": m["report_id"],
        "input": inp,
        "probe_cc": m["probe_cc"],
        "probe_asn": int(m["probe_asn"][2:]),
        "test_name": m["test_name"],
        "test_start_time": m["test_start_time"],
        "measurement_start_time": m["measurement_start_time"],
        "scores": "{}",
        "anomaly": "f",
        "confirmed": "f",
        "msm_failure": "f",
        "domain": inp.split("/")[2] if "://" in inp else "",
        "software_name": m.get("software_name", ""),
        "software_version": m.get("software_version", ""),
        "test_version": m.get("test_version", ""),
        "platform": "unset",
    }


async def archive_batch(server, archive, items, received, batch=0, with_offsets=True):
    """
    Archive (uid, line) pairs of one hour as ingestion does: one gzip JSONL
    object, one jsonl row per line. Returns the s3path.
    """
    cc, testname = uid_parts(json.loads(items[0][1])["report_id"])
    hour = received.strftime("%Y%m%d%H")
    s3path = archive_path(hour, cc, testname, "1", str(batch))
    data, spans = build_jsonl_gz([line for _, line in items])
    await archive.put(s3path, data)
    rows = []
    for linenum, ((uid, line), (offset, length)) in enumerate(zip(items, spans)):
        m = json.loads(line)
        if not with_offsets:
            offset = length = 0
        rows.append((m["report_id"], m.get("input") or "", s3path, linenum, uid, offset, length))
    await server.clickhouse.insert(
        "jsonl",
        ("report_id", "input", "s3path", "linenum", "measurement_uid", "byte_offset",
         "byte_length"),
        rows,
    )
    return s3path
