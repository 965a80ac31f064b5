"""
JSON as the reference API writes it (api-routes.md section 2.1): sorted
keys, compact separators, a trailing newline, naive datetimes as UTC with Z.
"""

import datetime
import decimal
import json
import math


def _default(value):
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            if value.microsecond:
                return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            return value.strftime("%Y-%m-%dT%H:%M:%SZ")
        return value.isoformat()
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _clean_floats(value):
    """
    Replace NaN and infinities (not JSON) with null, recursively.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_floats(v) for v in value]
    return value


# Encoders are immutable settings (each encode() call has its own state);
# building them once spares json.dumps constructing one per response.
_STRICT = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), default=_default, allow_nan=False
)
_LENIENT = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=_default)


def dumps(payload):
    """
    Encode C{payload} to the bytes of a JSON response body.
    """
    try:
        text = _STRICT.encode(payload)
    except ValueError:
        text = _LENIENT.encode(_clean_floats(payload))
    return text.encode("utf-8") + b"\n"
