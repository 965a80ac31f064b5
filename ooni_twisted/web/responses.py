"""
Turning payloads into response bodies with the reference's headers
(api-routes.md sections 2.2, 2.3, 2.6).
"""

from .jsonenc import dumps

NO_CACHE = "max-age=0, no-cache"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def max_age(interval):
    """
    C{"1h"} -> 3600, as cachedjson's interval strings.
    """
    return int(interval[:-1]) * _UNITS[interval[-1]]


def _send(request, body, content_type, status, cache_control):
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", content_type)
    if cache_control:
        request.setHeader(b"Cache-Control", cache_control.encode("ascii"))
    request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
    return body


def send_json(request, payload, cache_control=None, status=200):
    """
    Write JSON C{payload}; C{cache_control} is the header value or None.
    """
    return _send(request, dumps(payload), b"application/json", status, cache_control)


def cachedjson(request, interval, payload=None):
    """
    JSON with C{Cache-Control: max-age=N} for an interval such as C{"1h"}.
    """
    if payload is None:
        payload = {}
    return send_json(request, payload, f"max-age={max_age(interval)}")


def nocachejson(request, payload=None):
    """
    JSON with C{Cache-Control: max-age=0, no-cache}.
    """
    if payload is None:
        payload = {}
    return send_json(request, payload, NO_CACHE)


def send_bytes(request, body, content_type, cache_control=None, status=200):
    """
    Write raw C{body} bytes with an explicit length.
    """
    return _send(request, body, content_type, status, cache_control)


def redirect(request, location, status=302):
    """
    A redirect with an empty body.
    """
    request.setHeader(b"Location", location.encode("utf-8"))
    return _send(request, b"", b"text/html; charset=utf-8", status, None)


def attachment(request, filename):
    """
    Mark the response as a download named C{filename} (section 2.6).
    """
    request.setHeader(
        b"Content-Disposition", f"attachment; filename={filename}".encode("utf-8")
    )
