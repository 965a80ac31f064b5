"""
A Klein app with the house's error rendering, for every feature's routes.

Routes raise L{ApiError} (or let any exception escape); the handlers here
turn that into the reference's JSON error with an explicit Content-Length,
so no traceback ever reaches a client.
"""

from klein import Klein
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from .errors import ApiError
from .jsonenc import dumps

log = Logger()


def render_error(request, status, body, cache_control="no-cache", headers=None):
    """
    Write an error response; keep a Cache-Control already set by the route
    (authenticated routes set no-cache before failing).
    """
    data = dumps(body)
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    if cache_control and not request.responseHeaders.hasHeader(b"cache-control"):
        request.setHeader(b"Cache-Control", cache_control.encode("ascii"))
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    request.setHeader(b"Content-Length", str(len(data)).encode("ascii"))
    return data


def render_api_error(request, error):
    request.responseHeaders.removeHeader(b"content-disposition")
    return render_error(request, error.status, error.body, error.cache_control, error.headers)


def new_app():
    """
    A Klein app whose errors are JSON.
    """
    app = Klein()

    @app.handle_errors(ApiError)
    def api_error(*args):
        request, failure = args[-2], args[-1]
        return render_api_error(request, failure.value)

    @app.handle_errors(NotFound)
    def not_found(*args):
        request = args[-2]
        return render_error(request, 404, {"error": "Not found"})

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(*args):
        request, failure = args[-2], args[-1]
        allowed = getattr(failure.value, "valid_methods", None) or []
        headers = {}
        if allowed:
            headers[b"Allow"] = ", ".join(allowed).encode("ascii")
        return render_error(request, 405, {"error": "Method not allowed"}, headers=headers)

    @app.handle_errors(HTTPException)
    def http_error(*args):
        request, failure = args[-2], args[-1]
        code = failure.value.code or 500
        return render_error(request, code, {"error": failure.value.name})

    @app.handle_errors(Exception)
    def unhandled(*args):
        request, failure = args[-2], args[-1]
        log.failure("unhandled error in {uri}", failure, uri=request.uri)
        return render_error(request, 500, {"error": str(failure.value) or "unhandled error"})

    return app
