"""
Test lists for probes and the prioritisation inspection routes
(api-routes.md section 12.8).

The probe-facing list comes from the in-memory snapshot of L{live}; while
the database fails (the snapshot stops being refreshed) it falls back to a
random sample of the global list (section 8.6). The statistics route reads
last week's fastpath counts, which no snapshot holds.
"""

import csv
import io

from twisted.internet.threads import deferToThreadPool

from ..web.errors import BadRequest
from ..web.kit import new_app
from ..web.params import QueryArgs, parse_asn, parse_int
from ..web.responses import cachedjson, send_bytes
from . import rules
from .prioritization import compute_priorities

#: metadata of /api/v1/test-list/urls: only count varies (reference constants).
_METADATA = {"current_page": -1, "limit": -1, "next_url": "", "pages": 1}

_COUNTRIES_SQL = """
SELECT domain, url, cc, category_code, msmt_cnt, anomaly_perc
FROM citizenlab
LEFT JOIN (
    SELECT input, probe_cc, count() AS msmt_cnt,
           toInt8(countIf(anomaly = 't') / count() * 100) AS anomaly_perc
    FROM fastpath
    WHERE measurement_start_time > now() - INTERVAL 1 WEEK
      AND measurement_start_time < now()
    GROUP BY input, probe_cc
) AS x ON x.input = citizenlab.url AND x.probe_cc = upper(toStringCutToZero(citizenlab.cc))
"""

COUNTRIES_FIELDS = (
    "anomaly_perc",
    "category_code",
    "cc",
    "domain",
    "msmt_cnt",
    "priority",
    "url",
)


def category_codes(value):
    """
    The C{category_codes} parameter: comma list, stripped, upper-cased,
    without repeats or empty items.
    """
    if not value:
        return ()
    codes = {code.strip().upper() for code in value.split(",")}
    codes.discard("")
    return tuple(sorted(codes))


def url_limit(value):
    """
    The C{limit} of test-list/urls: absent, empty or -1 means 9999.
    """
    limit = parse_int(value, "limit", default=-1)
    return 9999 if limit == -1 else limit


def _read_countries(backend):
    return backend.query(_COUNTRIES_SQL), rules.live_rules(backend)


def countries_priorities(entries, live_rules):
    """
    Every citizenlab entry with its priority under all live rules, by
    country, then priority descending (weights are not shown).
    """
    out = []
    for item in compute_priorities(entries, live_rules):
        item.pop("weight")
        item["cc"] = item["cc"].upper()
        out.append(item)
    out.sort(key=lambda item: (item["cc"], -item["priority"]))
    return out


def to_csv(items):
    """
    CSV with a header of the sorted column names.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COUNTRIES_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(items)
    return buffer.getvalue().encode("utf-8")


class TestListRoutes:
    """
    Prioritised URL lists, given the live prioritisation, ClickHouse and a
    thread pool for CPU-heavy debug output.
    """

    app = new_app()

    def __init__(self, context):
        self._priorities = context.priorities
        self._db = context.clickhouse
        self._reactor = context.reactor
        self._pool = context.file_pool

    @app.route("/api/v1/test-list/urls", methods=["GET"])
    def test_list_urls(self, request):
        try:
            args = QueryArgs.from_request(request)
            country_code = args.get("country_code") or args.get("probe_cc") or "ZZ"
            country_code = country_code.upper()
            categories = category_codes(args.get("category_codes"))
            limit = url_limit(args.get("limit"))
            debug = (args.get("debug") or "").lower() in ("true", "1", "yes")
        except BadRequest:
            # The reference answers an unparsable parameter with an empty object.
            return cachedjson(request, "0s")
        live = self._priorities
        if live.fresh():
            items = live.snapshot.generate(country_code, 0, categories, limit, debug).items
        else:
            items = live.failover(categories, limit)
        metadata = dict(_METADATA, count=len(items))
        return cachedjson(request, "1s", {"metadata": metadata, "results": items})

    @app.route("/api/_/debug_prioritization", methods=["GET"])
    async def debug_prioritization(self, request):
        args = QueryArgs.from_request(request)
        country_code = (args.get("probe_cc") or "ZZ").upper()
        categories = category_codes(args.get("category_codes"))
        asn = parse_asn(args.get("probe_asn")) or 0
        limit = parse_int(args.get("limit"), "limit", default=-1)
        snapshot = self._priorities.snapshot
        result = await deferToThreadPool(
            self._reactor,
            self._pool,
            snapshot.generate,
            country_code,
            asn,
            categories,
            limit,
            True,
        )
        return cachedjson(
            request,
            "0s",
            {"entries": result.entries, "prio_rules": result.rules, "test_items": result.items},
        )

    @app.route("/api/_/show_countries_prioritization", methods=["GET"])
    async def show_countries_prioritization(self, request):
        args = QueryArgs.from_request(request)
        as_csv = (args.get("format") or "JSON").upper() == "CSV"
        entries, live_rules = await self._db.run(_read_countries)
        items = await deferToThreadPool(
            self._reactor, self._pool, countries_priorities, entries, live_rules
        )
        if as_csv:
            return send_bytes(request, to_csv(items), b"text/csv")
        return cachedjson(request, "1s", items)
