"""
The landing page, health check, robots.txt and the redirects that keep old
links working (api-routes.md section 12.1 and GET /api/).
"""

import datetime
import re

from twisted.logger import Logger

from .web.errors import BadRequest, jerror
from .web.kit import new_app
from .web.responses import redirect, send_bytes, send_json

log = Logger()

ROBOTS_TXT = b"""
User-agent: *
Disallow: /api/_
Disallow: /api/v1/aggregation
Disallow: /api/v1/measurement_meta
Disallow: /api/v1/raw_measurement
Disallow: /api/v1/test-list/urls
Disallow: /api/v1/torsf_stats
Disallow: /files
Disallow: /stats
Disallow: /201
Disallow: /202
Crawl-delay: 300
"""

LANDING = b"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>OONI API</title></head>
<body>
<h1>Welcome to the OONI API</h1>
<p>See the <a href="/apidocs/">API documentation</a>.</p>
<p>This API is not meant for bulk downloads of measurements; see the
OONI data documentation for that. To contribute measurements, run
<a href="https://ooni.org/install/">OONI Probe</a>.</p>
</body></html>
"""

EXPLORER = "https://explorer.ooni.org"

_DATE = re.compile(r"^\d{4}-[01]\d-[0-3]\d$")


def _date_or_none(text):
    if not _DATE.match(text):
        return None
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        return None


def _search_by_day(day):
    until = day + datetime.timedelta(days=1)
    return f"{EXPLORER}/search?until={until.isoformat()}&since={day.isoformat()}"


class PageRoutes:
    """
    Routes that need nothing but a database ping.
    """

    app = new_app()

    def __init__(self, clickhouse):
        self._db = clickhouse

    @app.route("/health", methods=["GET"])
    async def health(self, request):
        try:
            await self._db.query("SELECT 1 AS ok")
        except Exception as e:
            log.warn("health: database unreachable: {e}", e=e)
            return send_json(
                request, {"error": "database unreachable", "status": "DOWN"}, "no-cache", 503
            )
        return send_json(request, {"status": "UP"}, "no-cache")

    @app.route("/", methods=["GET"])
    def landing(self, request):
        return send_bytes(request, LANDING, b"text/html; charset=utf-8")

    @app.route("/robots.txt", methods=["GET"])
    def robots(self, request):
        return send_bytes(request, ROBOTS_TXT, b"text/plain", "max-age=86400")

    @app.route("/stats", methods=["GET"])
    def stats(self, request):
        return redirect(request, EXPLORER, 301)

    @app.route("/files", methods=["GET"])
    @app.route("/files/by_date", methods=["GET"])
    @app.route("/files/by_country", methods=["GET"])
    def files(self, request):
        return redirect(request, f"{EXPLORER}/search", 301)

    @app.route("/files/by_date/<date>", methods=["GET"])
    def files_by_date(self, request, date):
        day = _date_or_none(date)
        if day is None:
            raise BadRequest("Invalid date format")
        return redirect(request, _search_by_day(day), 301)

    @app.route("/files/by_country/<country_code>", methods=["GET"])
    def files_by_country(self, request, country_code):
        if len(country_code) != 2:
            raise BadRequest("Country code must be two characters")
        return redirect(request, f"{EXPLORER}/search?probe_cc={country_code.upper()}", 301)

    @app.route("/api/", methods=["GET"])
    def api_root(self, request):
        return redirect(request, "/apidocs", 302)

    @app.route("/<date>/<report_file>", methods=["GET"])
    def old_report(self, request, date, report_file):
        if _DATE.match(date) and report_file.endswith(".json"):
            return redirect(request, f"/files/download/{report_file}", 302)
        raise jerror("Not found", 404)

    @app.route("/<date>", methods=["GET"])
    def old_day(self, request, date):
        day = _date_or_none(date)
        if day is None:
            raise jerror("Not found", 404)
        return redirect(request, _search_by_day(day), 301)
