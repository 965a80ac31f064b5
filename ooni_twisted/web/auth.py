"""
The role check of api-routes.md section 6.6 as a decorator for route
methods. The route object supplies C{self.sessions} (see
L{ooni_twisted.accounts.sessions.Sessions}); the checked session is passed
to the handler as the keyword C{session}.
"""

import functools

from twisted.internet.defer import ensureDeferred

from .errors import jerror
from .responses import NO_CACHE


def _no_cache(request):
    current = request.responseHeaders.getRawHeaders(b"cache-control")
    if not current:
        request.setHeader(b"Cache-Control", NO_CACHE.encode("ascii"))
    elif b"no-cache" not in current[0]:
        request.setHeader(b"Cache-Control", current[0] + b", no-cache")


def role_required(*roles):
    """
    Refuse with 401 unless the bearer has one of C{roles} and an unexpunged
    session; mark the response no-cache either way.
    """

    def decorate(handler):
        @functools.wraps(handler)
        def wrapper(self, request, *args, **kwargs):
            async def run():
                try:
                    session = self.sessions.optional(request)
                    if session is None:
                        raise jerror("Authentication required", 401)
                    if session.role not in roles:
                        raise jerror("Role not authorized", 401)
                    if await self.sessions.expunged(session):
                        raise jerror("Authentication token expired", 401)
                    result = handler(self, request, *args, session=session, **kwargs)
                    if hasattr(result, "__await__") or hasattr(result, "addCallback"):
                        result = await result
                    return result
                finally:
                    _no_cache(request)

            return ensureDeferred(run())

        wrapper.credentialed = True
        return wrapper

    return decorate
