"""
Quotas on the web side (api-routes.md section 7): meter each request
against the LMDB store of L{ooni_twisted.storage.quotas}, answer 429 when a
budget is spent, tell clients where they stand with X-RateLimit-* headers,
and show the emptiest buckets to admins (section 7.7).

The headers must be set before the handler writes, so C{before} reports
the budget left before this request and C{after} charges its wall-clock
time.  On the reactor thread the store answers from memory, or from one
LMDB read transaction for a key it has not seen since its last flush (a
reader never waits for a writer); LMDB writes happen in the QuotaService's
thread pool.  Costs: benchmarks/bench_ratelimit.py.
"""

import math
from collections import namedtuple

import lmdb
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from .app import RequestHooks
from .storage.quotas import Limits, NetworkSet, QuotaKeyer, QuotaService, QuotaStore
from .web.auth import role_required
from .web.kit import new_app, render_error
from .web.responses import nocachejson

log = Logger()

#: Section 7.5: paths that are never metered (probe submissions, the
#: landing page, the health check).
UNMETERED_PATHS = frozenset((b"/", b"/health"))
UNMETERED_PREFIX = b"/report"

#: The 429 body (E1 shape, decided over the reference's text "429 error").
TOO_MANY_REQUESTS = {"error": "429 error"}

SUMMARY_SIZE = 20

# Where before() leaves (key, kind) for after(); None means unmetered.
_METER = "_ooni_quota_meter"


def _limit_text(seconds):
    """A budget as a header value: whole seconds as an integer, a fraction
    (only tiny test budgets have one) with millisecond precision."""
    if seconds == int(seconds):
        return str(int(seconds)).encode("ascii")
    return f"{seconds:.3f}".rstrip("0").encode("ascii")


class QuotaHook(RequestHooks):
    """
    Meters every request but the exempt paths and unmetered networks.

    C{sessions} is given only when authenticated requests are keyed by
    account (C{rate_limit_tokens}); then a valid bearer token spends the
    account's token budget instead of its network's.  Expunged sessions are
    not looked up (that needs the database): they still count as accounts.
    """

    def __init__(self, store, keyer, client_address, sessions=None):
        self.store = store
        self._keyer = keyer
        self._client_address = client_address
        self._sessions = sessions
        self._limit_texts = {}
        self._reset = (None, b"")

    def meter(self, request):
        """(key, kind) to charge for C{request}, or None when unmetered."""
        path = request.path
        if path in UNMETERED_PATHS or path.startswith(UNMETERED_PREFIX):
            return None
        key = self._network_key(request)
        if key is None:
            return None
        if self._sessions is not None and request.requestHeaders.hasHeader(b"authorization"):
            session = self._sessions.optional(request)
            if session is not None and session.account_id:
                return session.account_id, "token"
        return key, "ipaddr"

    def _network_key(self, request):
        """
        The quota key of the limiter address (None: unmetered network).
        Both steps remember their answers (the trusted-proxy check in
        L{ClientAddress}, the key per address in L{QuotaKeyer}).
        """
        client_address = self._client_address
        try:
            return self._keyer(client_address.limiter_ip(request))
        except ValueError:
            # A proxy sent something that is not an address: key by the
            # peer itself rather than let a header pick (or dodge) a bucket.
            try:
                return self._keyer(client_address.peer(request))
            except ValueError:
                return None

    def before(self, request):
        store = self.store
        meter = None if store.closed else self.meter(request)
        if meter is not None:
            try:
                limit, remaining, reset = store.status(*meter)
            except (lmdb.Error, ValueError):
                # Failing open: a broken quota store must not take the API down.
                log.failure("quota lookup failed; request not metered")
                meter = None
        setattr(request, _METER, meter)
        if meter is None:
            return None
        # Limit and reset take a handful of values: format each once.
        limit_text = self._limit_texts.get(limit)
        if limit_text is None:
            limit_text = self._limit_texts[limit] = _limit_text(limit)
        if reset != self._reset[0]:
            self._reset = (reset, str(math.ceil(reset)).encode("ascii"))
        headers = request.responseHeaders
        headers.setRawHeaders(b"X-RateLimit-Limit", [limit_text])
        headers.setRawHeaders(
            b"X-RateLimit-Remaining", [str(int(remaining)).encode("ascii")]
        )
        headers.setRawHeaders(b"X-RateLimit-Reset", [self._reset[1]])
        if remaining <= 0:
            return render_error(request, 429, TOO_MANY_REQUESTS, "no-cache")
        return None

    def after(self, request, elapsed):
        meter = getattr(request, _METER, None)
        if meter is None or self.store.closed:
            return
        key, kind = meter
        self.store.charge(key, elapsed if elapsed > 0 else 0.0, kind)


class QuotaRoutes:
    """
    GET /api/_/quotas_summary: the emptiest daily buckets of client
    networks (not of accounts), as stored at the last flush (at most a
    flush interval old).  The scan of LMDB runs in C{threadpool}: it reads
    every stored key.
    """

    app = new_app()

    def __init__(self, store, sessions, reactor, threadpool):
        self.store = store
        self.sessions = sessions
        self._reactor = reactor
        self._threadpool = threadpool

    @app.route("/api/_/quotas_summary", methods=["GET"])
    @role_required("admin")
    async def quotas_summary(self, request, session):
        rows = await deferToThreadPool(
            self._reactor, self._threadpool, self.store.summary, SUMMARY_SIZE
        )
        return nocachejson(request, rows)


Quotas = namedtuple("Quotas", "store service hook routes")


def build_quotas(context):
    """
    Open the quota store of C{context.config} and build what uses it.

    The QuotaService (hourly refill, flush every second, closing the store)
    joins C{context.timers}, which stop before the file pool it runs in;
    the store is closed on C{context.close} too, in case the timers never
    started.  The caller adds C{hook} to the hooks and C{routes} to the
    features.
    """
    config = context.config
    store = QuotaStore(
        config.quota_dir, Limits(**dict(config.rate_limits)), clock=context.reactor
    )
    context.on_close(store.close)
    service = QuotaService(store, context.reactor, context.file_pool)
    service.setServiceParent(context.timers)
    keyer = QuotaKeyer(
        config.rate_limit_ipv4_prefix,
        config.rate_limit_ipv6_prefix,
        NetworkSet(config.rate_limit_unmetered),
    )
    sessions = context.sessions if config.rate_limit_tokens else None
    hook = QuotaHook(store, keyer, context.client_address, sessions)
    routes = QuotaRoutes(store, context.sessions, context.reactor, context.file_pool)
    return Quotas(store, service, hook, routes)
