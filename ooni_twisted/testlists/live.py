"""
The prioritisation inputs kept in memory for the hot probe paths.

Check-in and /api/v1/test-list/urls answer from a L{PrioritySnapshot}
instead of three queries per request (a chDB point query costs about as
much as a whole check-in, DESIGN.md). A timer rebuilds the snapshot every
few seconds, off the reactor, so a new rule, a new test list or new
measurement counts show within seconds; a request never waits on ClickHouse.
Owns the reads of C{counters_asn_test_list}.
"""

import random

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from . import citizenlab, rules
from .prioritization import PrioritySnapshot

log = Logger()

RULE_FIELDS = ("category_code", "cc", "domain", "url", "priority")

# The counters of the current and the previous week (weeks start on
# Sunday, api-routes.md section 8.1). Summed here because SummingMergeTree
# folds rows only when it merges parts.
_WEEKS = (
    "toDate(week) IN (toStartOfWeek(now()), toStartOfWeek(now() - INTERVAL 1 WEEK))"
)

_COUNTERS_SQL = f"""
SELECT probe_cc, probe_asn, input, sum(msmt_cnt) AS cnt
FROM counters_asn_test_list
WHERE {_WEEKS}
GROUP BY probe_cc, probe_asn, input
"""

# Cheap change detectors, so that an idle tick transfers a few numbers
# instead of every row.
_COUNTERS_CHANGE_SQL = f"""
SELECT count() AS n, sum(msmt_cnt) AS total, toStartOfWeek(now()) AS this_week
FROM counters_asn_test_list
WHERE {_WEEKS}
"""

_CITIZENLAB_CHANGE_SQL = """
SELECT count() AS n, sum(cityHash64(domain, url, cc, category_code)) AS h
FROM citizenlab
"""


class LoadState:
    """
    What one refresh found: change detectors, the inputs and the snapshot
    built from them. Immutable once built; a refresh makes a new one.
    """

    def __init__(self, citizenlab_key, rules_key, counters_key, counters, snapshot):
        self.citizenlab_key = citizenlab_key
        self.rules_key = rules_key
        self.counters_key = counters_key
        self.counters = counters
        self.snapshot = snapshot


def read_counters(backend):
    """
    {(probe_cc, probe_asn, url): count} over the two weeks. Blocking.
    """
    return {
        (row["probe_cc"], row["probe_asn"], row["input"]): row["cnt"]
        for row in backend.query(_COUNTERS_SQL)
    }


def _key(row):
    return tuple(row.values())


def load(backend, previous=None):
    """
    Read what changed since C{previous} (a L{LoadState} or None) and return
    the new state; C{previous} itself when nothing changed. Blocking: runs
    on the ClickHouse pool, where the snapshot is also built.

    Change detectors are read before the data, so a write that lands in
    between is seen again (and reloaded) on the next refresh.
    """
    counters_key = _key(backend.query(_COUNTERS_CHANGE_SQL)[0])
    citizenlab_key = _key(backend.query(_CITIZENLAB_CHANGE_SQL)[0])
    live = [{f: r[f] for f in RULE_FIELDS} for r in rules.live_rules(backend)]
    rules_key = tuple(tuple(r[f] for f in RULE_FIELDS) for r in live)
    if previous is not None and (
        previous.counters_key == counters_key
        and previous.citizenlab_key == citizenlab_key
        and previous.rules_key == rules_key
    ):
        return previous
    if previous is not None and previous.counters_key == counters_key:
        counters = previous.counters
    else:
        counters = read_counters(backend)
    if (
        previous is not None
        and previous.citizenlab_key == citizenlab_key
        and previous.rules_key == rules_key
    ):
        snapshot = previous.snapshot.with_counters(counters)
    else:
        snapshot = PrioritySnapshot(citizenlab.load_entries(backend), live, counters)
    return LoadState(citizenlab_key, rules_key, counters_key, counters, snapshot)


def _seed_and_load(backend):
    rules.seed_defaults(backend)
    return load(backend, None)


#: What the hot paths use before the first load (and if it never works).
EMPTY = PrioritySnapshot([], [], {})


class LivePriorities:
    """
    The current L{PrioritySnapshot} and the refresh that replaces it.

    @ivar stale_after: seconds after the last successful refresh from which
        the database counts as failing (test-list/urls then fails over,
        api-routes.md section 8.6).
    """

    def __init__(self, clickhouse, clock, interval=2.0, stale_after=60.0, rng=None):
        self._db = clickhouse
        self._clock = clock
        self.interval = interval
        self.stale_after = stale_after
        self.rng = rng if rng is not None else random.Random()
        self._state = None
        self._loaded_at = None
        self._running = False
        self._waiters = []
        self._failing = False
        self.refreshes = 0
        self.failures = 0

    @property
    def snapshot(self):
        """
        The latest snapshot (an empty one until the first load succeeds).
        """
        return EMPTY if self._state is None else self._state.snapshot

    def loaded(self):
        return self._state is not None

    def fresh(self):
        """
        Whether the snapshot reflects the database of the last few seconds.
        """
        if self._loaded_at is None:
            return False
        return self._clock.seconds() - self._loaded_at <= self.stale_after

    def failover(self, category_codes, limit):
        """
        A random sample of the global list in memory (section 8.6).
        """
        return self.snapshot.failover(category_codes, limit, self.rng)

    def refresh(self):
        """
        Reload; the Deferred fires with True (or False on failure) once a
        load that started after this call has finished. Never fails, so a
        timer driving it never stops.
        """
        d = Deferred()
        self._waiters.append(d)
        if not self._running:
            self._run(load, self._state)
        return d

    def _run(self, function, *args):
        waiters, self._waiters = self._waiters, []
        self._running = True
        d = self._db.run(function, *args)
        d.addCallback(self._loaded)
        d.addErrback(self._failed)
        d.addBoth(self._finished, waiters)

    def _loaded(self, state):
        if state is not self._state:
            self._state = state
        self._loaded_at = self._clock.seconds()
        self.refreshes += 1
        if self._failing:
            log.info("prioritisation refresh works again")
        self._failing = False
        return True

    def _failed(self, failure):
        self.failures += 1
        if not self._failing:
            log.failure("prioritisation refresh failed; serving the last snapshot", failure)
        else:
            log.warn(
                "prioritisation refresh still failing: {error}",
                error=failure.getErrorMessage(),
            )
        self._failing = True
        return False

    def _finished(self, ok, waiters):
        self._running = False
        if self._waiters:
            self._run(load, self._state)
        for waiter in waiters:
            waiter.callback(ok)
        return None

    async def start(self):
        """
        Seed the default rules into a never-used table (section 8.7) and
        load the first snapshot, so probes get lists from the first request.
        A failing database does not stop the server: the timer retries.
        """
        if self._running:
            return await self.refresh()
        d = Deferred()
        self._waiters.append(d)
        self._run(_seed_and_load)
        return await d

    def admin_command(self, name):
        """
        Admin commands change test lists and rules: reload right away.
        """
        self.refresh()

    def service(self):
        """
        The timer service that keeps the snapshot fresh.
        """
        return TimerService(self.interval, self.refresh)


async def start_live_priorities(context):
    """
    Create, load and schedule the server's L{LivePriorities}.
    """
    interval = min(max(context.config.ingest_interval, 0.5), 5.0)
    live = LivePriorities(context.clickhouse, context.reactor, interval=interval)
    await live.start()
    live.service().setServiceParent(context.timers)
    context.on_admin_command(live.admin_command)
    return live
