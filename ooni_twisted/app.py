"""
One resource for the whole API: the features' Klein apps behind a router,
wrapped with what crosses every route (CORS, preflight, request hooks such
as quotas, JSON 404/405, the last-resort 500).
"""

import re
import time
from urllib.parse import unquote

from twisted.logger import Logger
from twisted.web.resource import Resource
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from .web.cors import apply_cors, preflight
from .web.kit import render_api_error, render_error
from .web.errors import ApiError

log = Logger()

#: Routes with the credentialed CORS policy (role-protected ones and the
#: login routes, api-routes.md section 2.7).
CREDENTIALED_PATHS = re.compile(
    r"^/api/(?:"
    r"v1/user_register|v1/user_login|v1/user_refresh_token|_/account_metadata|"
    r"v1/set_account_role|v1/get_account_role/.*|v1/set_session_expunge|"
    r"_/url-submission/.*|v1/url-submission/.*|_/url-priorities/update|"
    r"v1/incidents/(?!search$|show/).*|_/ooni_run/(?:create|archive/.*)|"
    r"_/quotas_summary|_/measurement_feedback"
    r")$"
)


class RequestHooks:
    """
    Work done around every routed request; the quota limiter is one.
    C{before} may return response bytes to answer without routing.
    """

    def before(self, request):
        return None

    def after(self, request, elapsed):
        pass


class ApiResource(Resource):
    """
    Dispatch to the first feature whose routes match the path.
    """

    isLeaf = True

    def __init__(self, features, hooks=(), clock=time.monotonic):
        Resource.__init__(self)
        self._routes = []
        for feature in features:
            bound = feature.app
            self._routes.append((bound.url_map, bound.resource()))
        self._hooks = tuple(hooks)
        self._clock = clock
        self._literal = self._literal_answers()

    def _literal_answers(self):
        """
        C{_match}'s answer for every path a rule spells out without
        converters, under every method a rule names: most requests are for
        those, and a dict lookup replaces matching them against each
        feature's map. The maps never change, so the answers cannot either.
        """
        paths, methods = set(), set()
        for url_map, _ in self._routes:
            for rule in url_map.iter_rules():
                methods.update(rule.methods or ())
                if not rule.arguments:
                    paths.add(rule.rule)
        return {
            (path, method): self._match(path, method)
            for path in paths
            for method in methods
        }

    def _find(self, request):
        try:
            path = unquote(request.path.decode("ascii"), errors="strict")
        except UnicodeError:
            return None, NotFound()
        method = request.method.decode("ascii", "replace")
        answer = self._literal.get((path, method))
        if answer is not None:
            return answer
        return self._match(path, method)

    def _match(self, path, method):
        """
        The first feature whose map matches (or redirects) C{path}; else
        the first 405 or a 404, as (resource or None, error or None).

        A path that an earlier feature serves under other methods is a 405
        even when a later feature's pattern (the catch-all pages) would
        take it: C{GET /report/<id>} is the wrong method, not an old date.
        """
        fallback = None
        for url_map, resource in self._routes:
            adapter = url_map.bind("localhost", path_info=path)
            try:
                rule, _ = adapter.match(path, method=method, return_rule=True)
            except RequestRedirect:
                return resource, None
            except MethodNotAllowed as e:
                fallback = fallback or (None, e)
                continue
            except NotFound:
                continue
            if fallback is not None and rule.arguments:
                return fallback
            return resource, None
        return fallback or (None, NotFound())

    def render(self, request):
        started = self._clock()
        path = request.path.decode("utf-8", "replace")
        credentialed = bool(CREDENTIALED_PATHS.match(path))
        apply_cors(request, credentialed)
        request.notifyFinish().addBoth(self._finished, request, started)
        try:
            for hook in self._hooks:
                answer = hook.before(request)
                if answer is not None:
                    return answer
            if request.method == b"OPTIONS":
                return preflight(request, credentialed)
            resource, error = self._find(request)
            if resource is None:
                if isinstance(error, MethodNotAllowed):
                    allowed = ", ".join(error.valid_methods or [])
                    return render_error(
                        request, 405, {"error": "Method not allowed"},
                        headers={b"Allow": allowed.encode("ascii")},
                    )
                return render_error(request, 404, {"error": "Not found"})
            return resource.render(request)
        except ApiError as e:
            return render_api_error(request, e)
        except Exception as e:
            log.failure("unhandled error routing {uri}", uri=request.uri)
            return render_error(request, 500, {"error": str(e) or "unhandled error"})

    def _finished(self, result, request, started):
        elapsed = self._clock() - started
        for hook in self._hooks:
            try:
                hook.after(request, elapsed)
            except Exception:
                log.failure("request hook failed")
        return None





class Context:
    """
    What the features are given: configuration, reactor, database, pools,
    the timer service and the request-wide helpers. Built once per server.
    """

    def __init__(self, config, reactor, clickhouse, file_pool, timers):
        from .accounts.sessions import Sessions
        from .web.clientip import ClientAddress

        self.config = config
        self.reactor = reactor
        self.clickhouse = clickhouse
        self.file_pool = file_pool
        self.timers = timers
        self.client_address = ClientAddress(config.trusted_proxies)
        self.sessions = Sessions(config.jwt_encryption_key, clickhouse, reactor)
        self.hooks = []
        # Shared services, set by build_resource.
        self.archive = self.cache = self.geoip = self.spool = None
        self.priorities = self.ingestor = None
        self._closers = []
        self._admin_listeners = []

    def on_close(self, function):
        """
        Call C{function} when the server stops (after the services).
        """
        self._closers.append(function)

    def on_admin_command(self, function):
        """
        Call C{function(name)} after an admin command ran in this server
        (to refresh in-memory copies of the tables it changed).
        """
        self._admin_listeners.append(function)

    def admin_command_done(self, name):
        for function in self._admin_listeners:
            try:
                function(name)
            except Exception:
                log.failure("admin command listener failed")

    def close(self):
        for function in reversed(self._closers):
            try:
                function()
            except Exception:
                log.failure("error while closing")


def build_context(api_service):
    return Context(
        api_service.config,
        api_service.reactor,
        api_service.clickhouse,
        api_service.file_pool,
        api_service.timers,
    )


async def build_resource(context):
    """
    Start the shared services on the context (archive, cache, quotas,
    prioritisation, spool, ingestion), then assemble every feature, in
    routing order (literal paths before the catch-all pages), into one
    resource. The features import this module, hence the late imports.
    """
    from .measurements.bodies import open_archive
    from .measurements.ingestion import start_ingestion
    from .measurements.routes import MeasurementRoutes
    from .pages import PageRoutes
    from .probes.routes import ProbeRoutes, open_probe_services
    from .ratelimit import build_quotas
    from .storage.cache import open_cache
    from .testlists.live import start_live_priorities
    from .testlists.routes import TestListRoutes

    context.archive = open_archive(context.config, context.reactor, context.file_pool)
    context.on_close(context.archive.close)
    context.cache = open_cache(context.config, context.reactor)
    context.on_close(context.cache.close)
    quotas = build_quotas(context)
    context.hooks.append(quotas.hook)
    context.priorities = await start_live_priorities(context)
    await open_probe_services(context)  # context.geoip, context.spool
    context.ingestor = await start_ingestion(context)  # drains context.spool

    features = [
        quotas.routes,
        ProbeRoutes(context),
        TestListRoutes(context),
        MeasurementRoutes.from_context(context),
        PageRoutes(context.clickhouse),
    ]
    return ApiResource(features, hooks=context.hooks)
