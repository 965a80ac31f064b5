"""
The HTTP site: a Request that refuses oversized bodies without buffering
them (413), and a quiet access log.
"""

from twisted.web.server import Request, Site

from .errors import jerror
from .jsonenc import dumps


class LimitedRequest(Request):
    """
    A request whose body may be at most C{channel.site.max_body_size} bytes.

    A larger body is not kept: the request answers 413 once the client has
    sent it, and the connection is dropped if the client sends far more.
    """

    too_large = False
    _received = 0

    def _limit(self):
        return getattr(self.channel.site, "max_body_size", None)

    def gotLength(self, length):
        limit = self._limit()
        if limit is not None and length is not None and length > limit:
            self.too_large = True
            length = 0
        Request.gotLength(self, length)

    def handleContentChunk(self, data):
        limit = self._limit()
        self._received += len(data)
        if limit is not None and self._received > limit:
            if not self.too_large:
                self.too_large = True
                self.content.seek(0)
                self.content.truncate()
            if self._received > 4 * limit + 1024 * 1024:
                self.channel.transport.loseConnection()
            return
        if not self.too_large:
            Request.handleContentChunk(self, data)

    def process(self):
        if self.too_large:
            error = jerror("Request body too large", 413)
            body = dumps(error.body)
            self.setResponseCode(413)
            self.setHeader(b"Content-Type", b"application/json")
            self.setHeader(b"Cache-Control", b"no-cache")
            self.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
            self.setHeader(b"Access-Control-Allow-Origin", b"*")
            self.setHeader(b"Connection", b"close")
            self.write(body)
            self.finish()
            return
        Request.process(self)


def _request_factory(*args, **kwargs):
    """
    Requests that leave the body alone: twisted.web would otherwise parse
    every form-typed POST body (costly, and no route reads form fields).
    """
    kwargs.setdefault("parsePOSTFormSubmission", False)
    return LimitedRequest(*args, **kwargs)


class ApiSite(Site):
    """
    The site serving the API resource with a body-size limit.
    """

    requestFactory = staticmethod(_request_factory)
    displayTracebacks = False

    def __init__(self, resource, max_body_size, access_log=False, **kwargs):
        Site.__init__(self, resource, **kwargs)
        self.max_body_size = max_body_size
        self._access_log = access_log

    def log(self, request):
        if self._access_log:
            Site.log(self, request)
