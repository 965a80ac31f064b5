"""
User feedback on measurements (api-routes.md sections 10.3 and 12.2):
one current status per (measurement, account) in C{msmt_feedback}, a
ReplacingMergeTree read with FINAL so the latest submission wins.
"""

from ..web.body import field
from ..web.errors import jerror

VALID_STATUSES = frozenset(
    (
        "blocked",
        "blocked.blockpage",
        "blocked.blockpage.http",
        "blocked.blockpage.dns",
        "blocked.blockpage.server_side",
        "blocked.blockpage.server_side.captcha",
        "blocked.dns",
        "blocked.dns.inconsistent",
        "blocked.dns.nxdomain",
        "blocked.tcp",
        "blocked.tls",
        "ok",
        "down",
        "down.unreachable",
        "down.misconfigured",
    )
)

_SUMMARY_SQL = (
    "SELECT status, account_id = {account_id:String} AS is_mine, count() AS cnt "
    "FROM msmt_feedback FINAL WHERE measurement_uid = {uid:String} "
    "GROUP BY status, is_mine"
)


def parse_submission(body):
    """
    (measurement_uid, status) from a decoded JSON object, both stripped.

    @raise ApiError: E1 400 for a non-string field or an unknown status.
    """
    uid = field(body, "measurement_uid", str, "").strip()
    status = field(body, "status", str, "").strip()
    if status not in VALID_STATUSES:
        raise jerror("Invalid status")
    return uid, status


def summarize(rows):
    """
    The response object from the grouped rows: counts per status, and the
    caller's own status when one of the rows is theirs.
    """
    out = {"summary": {}}
    for row in rows:
        status = row["status"]
        if row["is_mine"]:
            out["user_feedback"] = status
        out["summary"][status] = out["summary"].get(status, 0) + row["cnt"]
    return out


async def summary(clickhouse, uid, account_id):
    """
    The feedback summary of C{uid}; C{account_id} None for anonymous callers.
    """
    rows = await clickhouse.query(
        _SUMMARY_SQL, {"uid": uid, "account_id": account_id or ""}
    )
    return summarize(rows)


def submit(clickhouse, uid, account_id, status):
    """
    Record (replace) the caller's status for C{uid}; Deferred.
    """
    return clickhouse.insert(
        "msmt_feedback", ("measurement_uid", "account_id", "status"), [(uid, account_id, status)]
    )
