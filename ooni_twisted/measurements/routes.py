"""
The measurement read routes of api-routes.md section 12.2 (search,
metadata, bodies, torsf statistics, feedback) and the legacy file listing
of section 13. Handlers parse, call one function of the feature and render;
cacheable answers go through the response cache.
"""

import datetime
import time

from treq.client import HTTPClient
from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool

from ..storage.cache import serve_cached
from ..web.auth import role_required
from ..web.body import strict_json_body
from ..web.errors import ApiError, jerror
from ..web.kit import new_app
from ..web.params import QueryArgs, parse_date, parse_input, parse_report_id
from ..web.responses import attachment, cachedjson, nocachejson, send_bytes, send_json
from . import feedback, files, search
from .bodies import UNKNOWN, BodyFinder

log = Logger()


def _query_pairs(request):
    """
    The query parameters as (key, first value) bytes in their original order.
    """
    return [(key, values[0]) for key, values in request.args.items() if values]


class MeasurementRoutes:
    """
    GET /api/v1/measurements, measurement_meta, raw_measurement,
    measurement/<uid>, torsf_stats, files; /files/download/<path>;
    GET and POST /api/_/measurement_feedback.
    """

    app = new_app()

    def __init__(self, config, reactor, clickhouse, cache, bodies, archive, sessions, timer=None):
        self.config = config
        self.reactor = reactor
        self.db = clickhouse
        self.cache = cache
        self.bodies = bodies
        self.archive = archive
        self.sessions = sessions
        self._timer = timer or time.monotonic
        # ClickHouse stops a query at query_timeout; this bounds the wait
        # for a pool so busy that the query has not even started.
        self._db_wait = config.query_timeout + 1.0

    @classmethod
    def from_context(cls, context):
        """
        Build the routes from the server's context (app.py).
        """
        http = HTTPClient(
            Agent(context.reactor, pool=HTTPConnectionPool(context.reactor, persistent=False))
        )
        bodies = BodyFinder(
            context.clickhouse,
            context.archive,
            lambda: getattr(context, "spool", None),
            context.config.peers,
            http,
            context.reactor,
            own_url=context.config.base_url,
        )
        return cls(
            context.config,
            context.reactor,
            context.clickhouse,
            context.cache,
            bodies,
            context.archive,
            context.sessions,
        )

    # -- helpers ----------------------------------------------------------------

    def _now(self):
        return datetime.datetime.fromtimestamp(
            self.reactor.seconds(), datetime.timezone.utc
        ).replace(tzinfo=None)

    def _guard(self, d):
        return search.guarded(d, self.reactor, self._db_wait)

    def _cached(self, request, produce, keep_order=False):
        return ensureDeferred(serve_cached(self.cache, request, produce, keep_order=keep_order))

    async def _meta_row(self, args, raw_input, full=True):
        """
        The fastpath row named by measurement_uid, else by report_id + input;
        when the body will come from the archive first, its jsonl row too
        (same pool call).
        """
        uid = args.get("measurement_uid")
        if uid is not None and 10 <= len(uid) <= 100:
            find, params = search.meta_by_uid, (uid, full)
        else:
            report_id = parse_report_id(args.get("report_id"), required=True)
            input_ = args.get("input") if raw_input else parse_input(args.get("input"))
            find, params = search.meta_by_report, (report_id, input_, full)
        bodies = self.bodies

        def lookup(backend):
            row = find(backend, *params)
            if search.usable(row):
                bodies.prefetch(backend, row)
            return row

        return await self._guard(self.db.run(lookup))

    async def _find_body(self, row):
        return await self.bodies.find(
            row["report_id"], row["input"], row["measurement_uid"],
            row.get("archive_row", UNKNOWN),
        )

    # -- search -----------------------------------------------------------------------

    @app.route("/api/v1/measurements", methods=["GET"])
    def measurements(self, request):
        agent = request.getHeader(b"user-agent") or b""
        if agent.startswith(b"okhttp"):
            return nocachejson(request, search.OKHTTP_ANSWER)
        return self._cached(request, lambda: self._measurements(request), keep_order=True)

    async def _measurements(self, request):
        s = search.parse_search(QueryArgs.from_request(request), self._now())
        sql, params = search.search_sql(s)
        started = self._timer()
        rows = await self._guard(self.db.query(sql, params))
        elapsed = round(self._timer() - started, 6)
        page = search.search_page(s, rows, self.config.base_url, _query_pairs(request), elapsed)
        return cachedjson(request, "1m", page)

    # -- one measurement ------------------------------------------------------------

    @app.route("/api/v1/measurement_meta", methods=["GET"])
    def measurement_meta(self, request):
        return self._cached(request, lambda: self._measurement_meta(request))

    async def _measurement_meta(self, request):
        args = QueryArgs.from_request(request)
        full = (args.get("full") or "").lower() in ("true", "1", "yes")
        row = await self._meta_row(args, raw_input=False)
        meta = search.shape_meta(row)
        if not full:
            return cachedjson(request, "1m", meta)
        if not meta:
            return cachedjson(request, "1m", {"raw_measurement": ""})
        body = await self._find_body(row)
        meta["raw_measurement"] = body.decode("utf-8", "replace") if body else ""
        return cachedjson(request, "1m", meta)

    @app.route("/api/v1/raw_measurement", methods=["GET"])
    def raw_measurement(self, request):
        return self._cached(request, lambda: self._raw_measurement(request))

    async def _raw_measurement(self, request):
        args = QueryArgs.from_request(request)
        row = await self._meta_row(args, raw_input=True, full=False)
        if not search.usable(row):
            return cachedjson(request, "1d", {})
        body = await self._find_body(row)
        if body is None:
            raise jerror("Measurement not found", 500)
        return send_bytes(request, body, b"application/json", "max-age=86400")

    @app.route("/api/v1/measurement/<measurement_uid>", methods=["GET"])
    def measurement(self, request, measurement_uid):
        return self._cached(request, lambda: self._measurement(request, measurement_uid))

    async def _measurement(self, request, uid):
        args = QueryArgs.from_request(request)
        download = (args.get("download") or "").lower() == "true"
        try:
            body = await self._guard(ensureDeferred(self.bodies.archived_by_uid(uid)))
        except ApiError:
            raise
        except Exception:
            log.failure("archive lookup of {uid} failed", uid=uid)
            body = None
        if body is None:
            raise jerror("Incorrect or inexistent measurement_uid")
        if download:
            attachment(request, f"ooni_measurement-{uid}.json")
        return send_bytes(request, body, b"application/json", "max-age=3600")

    # -- statistics --------------------------------------------------------------------

    @app.route("/api/v1/torsf_stats", methods=["GET"])
    def torsf_stats(self, request):
        return self._cached(request, lambda: self._torsf_stats(request))

    async def _torsf_stats(self, request):
        try:
            args = QueryArgs.from_request(request)
            probe_cc = args.get("probe_cc") or None
            since = parse_date(args.get("since"), "since")
            until = parse_date(args.get("until"), "until")
            sql, params = search.torsf_sql(probe_cc, since, until)
            rows = search.torsf_rows(await self._guard(self.db.query(sql, params)))
        except ApiError as e:
            raise jerror(e.body.get("error") or "Invalid request", v=0)
        except Exception as e:
            log.failure("torsf_stats failed")
            raise jerror(str(e) or "Invalid request", v=0)
        cache_control = None
        if until is not None and until < self._now() - datetime.timedelta(hours=72):
            cache_control = "max-age=86400"
        return send_json(request, {"result": rows, "v": 0}, cache_control)

    # -- legacy listing ------------------------------------------------------------------

    @app.route("/api/v1/files", methods=["GET"])
    def list_files(self, request):
        return self._cached(request, lambda: self._list_files(request), keep_order=True)

    async def _list_files(self, request):
        q = files.parse_files_query(QueryArgs.from_request(request))
        count, rows, paths = await self._guard(self.db.run(files.fetch_listing, q))
        body = files.listing(
            q, count, rows, paths, self.archive, self.config.base_url, _query_pairs(request)
        )
        return cachedjson(request, "1m", body)

    @app.route("/files/download/<path:path>", methods=["GET", "HEAD"])
    def download(self, request, path):
        resource = files.download_resource(self.archive, path)
        if resource is None:
            raise jerror("Not found", 404)
        return resource

    # -- feedback ------------------------------------------------------------------------

    @app.route("/api/_/measurement_feedback/<measurement_uid>", methods=["GET"])
    async def get_feedback(self, request, measurement_uid):
        session = self.sessions.optional(request)
        account_id = session.account_id if session is not None else None
        result = await self._guard(
            ensureDeferred(feedback.summary(self.db, measurement_uid, account_id))
        )
        return cachedjson(request, "0s", result)

    @app.route("/api/_/measurement_feedback", methods=["POST"])
    @role_required("user", "admin")
    async def submit_feedback(self, request, session):
        uid, status = feedback.parse_submission(strict_json_body(request))
        await self._guard(feedback.submit(self.db, uid, session.account_id, status))
        return cachedjson(request, "0s")
