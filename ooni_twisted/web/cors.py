"""
CORS headers (api-routes.md section 2.7): open to every origin, except the
routes that use a session, which echo only OONI's own origins.
"""

import re

_TRUSTED_ORIGIN = re.compile(
    r"^https://[-A-Za-z0-9]+\.(?:test\.)?ooni\.(?:org|io)$"
)

ALLOW_METHODS = b"DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"


def trusted_origin(origin):
    return bool(origin) and bool(_TRUSTED_ORIGIN.match(origin))


def apply_cors(request, credentialed):
    """
    Set the CORS headers on C{request}'s response.
    """
    if credentialed:
        origin = request.getHeader(b"origin")
        origin = origin.decode("latin-1") if origin else ""
        if trusted_origin(origin):
            request.setHeader(b"Access-Control-Allow-Origin", origin.encode("latin-1"))
            request.setHeader(b"Access-Control-Allow-Credentials", b"true")
        request.setHeader(b"Vary", b"Origin")
    else:
        request.setHeader(b"Access-Control-Allow-Origin", b"*")


def preflight(request, credentialed):
    """
    Answer an OPTIONS preflight without running any handler.
    """
    apply_cors(request, credentialed)
    request.setHeader(b"Access-Control-Allow-Methods", ALLOW_METHODS)
    asked = request.getHeader(b"access-control-request-headers")
    allowed = asked if asked else b"Authorization, Content-Type"
    request.setHeader(b"Access-Control-Allow-Headers", allowed)
    request.setHeader(b"Access-Control-Max-Age", b"600")
    request.setResponseCode(200)
    request.setHeader(b"Content-Length", b"0")
    return b""
