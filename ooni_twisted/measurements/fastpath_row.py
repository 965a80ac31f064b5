"""One fastpath table row from a measurement and its scores.

Column names, meanings and defaults follow api-routes.md section 11.1 and the
reference fastpath's insert (ooni/backend ``fastpath/db.py``); the values are
plain Python objects of the column types, ready for an INSERT.  Unlike the
reference, bad field values never make the row fail: a missing or odd time
falls back to another time of the measurement, then to its reception time;
an odd ASN becomes 0; odd text becomes JSON text.

Also here: the ingestion discard rules of section 4.6, and the exception for
data that is not a measurement at all (to be quarantined by the caller).
"""

import json
import math
from datetime import datetime, timezone
from urllib.parse import urlsplit

from ..storage.schema import FASTPATH_COLUMNS
from .scoring import uid_reception_time

__all__ = [
    "COLUMNS",
    "NotAMeasurement",
    "discard_reason",
    "fastpath_row",
    "parse_time",
]

#: The keys of a row: the fastpath columns ingestion writes.
COLUMNS = FASTPATH_COLUMNS

# ClickHouse DateTime covers 1970-01-01 00:00:00 .. 2106-02-07 06:28:15 UTC
_MIN_TIME = datetime(1970, 1, 1)
_MAX_TIME = datetime(2106, 2, 7, 6, 28, 15)
_MAX_UINT32 = 2**32 - 1


class NotAMeasurement(ValueError):
    """The data is not a measurement object at all (e.g. not a JSON object).

    Ingestion cannot score or store it; the caller should quarantine it.
    ``reason`` is a short identifier for counters and logs.
    """

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _require_measurement(msm):
    if not isinstance(msm, dict):
        raise NotAMeasurement("not_an_object", type(msm).__name__)


def discard_reason(msm):
    """Why ingestion must not write this measurement to fastpath, or None.

    The rules of api-routes.md section 4.6: no ``report_id`` (missing or
    null; an empty string is kept), ``probe_cc`` ``ZZ`` or ``probe_asn``
    ``AS0`` (case-insensitive).  Raises :class:`NotAMeasurement` if ``msm``
    is not a measurement object.
    """
    _require_measurement(msm)
    if msm.get("report_id") is None:
        return "no_report_id"
    cc = msm.get("probe_cc")
    if isinstance(cc, str) and cc.upper() == "ZZ":
        return "probe_cc_zz"
    asn = msm.get("probe_asn")
    if isinstance(asn, str) and asn.upper() == "AS0":
        return "probe_asn_0"
    return None


def _text(value, default=""):
    """A String column value: str kept, null -> default, others as JSON text."""
    if value is None:
        return default
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError):
        return str(value)


def _float(value, default=0.0):
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            return default
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return default
    return default


def _asn(value):
    """``AS123`` (or ``123``) -> 123; anything else -> 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        digits = value[2:] if value[:2].upper() == "AS" else value
        if not digits.isdigit() or not digits.isascii():
            return 0
        number = int(digits)
    else:
        return 0
    return number if 0 <= number <= _MAX_UINT32 else 0


def parse_time(value):
    """A naive UTC datetime (whole seconds) from a measurement time, or None.

    Accepts ``YYYY-MM-DD HH:MM:SS`` (the normal format), ISO 8601 with or
    without ``T``, fraction and offset, and a number of seconds since the
    epoch (legacy reports).  None for anything else or outside the range of
    a ClickHouse DateTime.
    """
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
        if dt.tzinfo is not None:
            dt = dt.astimezone(timezone.utc).replace(tzinfo=None)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            return None
        try:
            dt = datetime.fromtimestamp(value, timezone.utc).replace(tzinfo=None)
        except (OverflowError, OSError, ValueError):
            return None
    else:
        return None
    if dt.microsecond:
        dt = dt.replace(microsecond=0)
    if not _MIN_TIME <= dt <= _MAX_TIME:
        return None
    return dt


def _fallback_time(received):
    """The reception time as a DateTime column value, or the epoch."""
    if not isinstance(received, datetime):
        return _MIN_TIME
    if received.tzinfo is not None:
        received = received.astimezone(timezone.utc).replace(tzinfo=None)
    received = received.replace(microsecond=0)
    return received if _MIN_TIME <= received <= _MAX_TIME else _MIN_TIME


def _input_and_domain(value):
    """The ``input`` and ``domain`` columns from the measurement's input."""
    if isinstance(value, list):
        # legacy meek_fronted_requests_test: a list of hostnames
        if not value:
            return "", ""
        items = [_text(v) for v in value]
        return "{" + ",".join(items) + "}", items[0]
    text = _text(value)
    if not text:
        return "", ""
    try:
        netloc = urlsplit(text).netloc
    except ValueError:
        return text, ""
    return text, netloc.rpartition("@")[2]


def _nested(d, *keys):
    """``d[k1][k2]...`` or None when a level is missing, null or not an object."""
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


# Built once: json.dumps() with options builds a new encoder on every call.
_SCORES_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def _scores_json(scores):
    return _SCORES_ENCODER.encode(scores)


def _number(value, default):
    if isinstance(value, (int, float)):
        return value
    return default


def fastpath_row(msm, measurement_uid, scores, received=None):
    """The fastpath row (a dict keyed by :data:`COLUMNS`) of a measurement.

    ``scores`` is the (flagged) result of ``score_measurement``.
    ``received`` (naive UTC) is the reception time, used only when the
    measurement's own times are unusable; by default it is read from the
    measurement_uid.  Raises :class:`NotAMeasurement` if ``msm`` is not a
    measurement object, TypeError if ``scores`` is not a dict; never raises
    for odd field values.
    """
    _require_measurement(msm)
    if not isinstance(scores, dict):
        raise TypeError("scores must be a dict")
    uid = measurement_uid if isinstance(measurement_uid, str) else _text(measurement_uid)

    if received is None:
        received = uid_reception_time(uid)
    measured = parse_time(msm.get("measurement_start_time"))
    started = parse_time(msm.get("test_start_time"))
    if measured is None:
        measured = started or _fallback_time(received)
    if started is None:
        started = measured

    input_, domain = _input_and_domain(msm.get("input"))
    annotations = msm.get("annotations")
    if not isinstance(annotations, dict):
        annotations = {}

    anomaly = _number(scores.get("blocking_general", 0.0), 0.0) > 0.5
    failure = _number(scores.get("accuracy", 1.0), 1.0) < 0.5
    confirmed = bool(scores.get("confirmed", False))

    return {
        "measurement_uid": uid,
        "report_id": _text(msm.get("report_id")),
        "input": input_,
        "probe_cc": _text(msm.get("probe_cc")),
        "probe_asn": _asn(msm.get("probe_asn")),
        "test_name": _text(msm.get("test_name")),
        "test_start_time": started,
        "measurement_start_time": measured,
        "filename": "",
        "scores": _scores_json(scores),
        "platform": _text(annotations.get("platform"), "unset"),
        "anomaly": "t" if anomaly else "f",
        "confirmed": "t" if confirmed else "f",
        "msm_failure": "t" if failure else "f",
        "domain": domain,
        "software_name": _text(msm.get("software_name")),
        "software_version": _text(msm.get("software_version")),
        # legacy columns: the reference fastpath leaves them at their defaults
        "control_failure": "",
        "blocking_general": 0.0,
        "is_ssl_expected": 0,
        "page_len": 0,
        "page_len_ratio": 0.0,
        "server_cc": "",
        "server_asn": 0,
        "server_as_name": "",
        "test_version": _text(msm.get("test_version")),
        "test_runtime": _float(msm.get("test_runtime")),
        "architecture": _text(annotations.get("architecture")),
        "engine_name": _text(annotations.get("engine_name")),
        "engine_version": _text(annotations.get("engine_version")),
        "blocking_type": _text(_nested(scores, "analysis", "blocking_type")),
        "test_helper_address": _text(
            _nested(msm, "test_helpers", "backend", "address")
        ),
        "test_helper_type": _text(_nested(msm, "test_helpers", "backend", "type")),
    }
