"""Rate-limit quotas: budgets of wall-clock seconds kept in LMDB (spec §7).

Three buckets per key (day, week, month), each holding the seconds of work
the key may still use.  A key without a stored value has a full bucket; a
bucket that refills to its limit is deleted, so LMDB only holds keys that
have spent something recently.

Why the store looks the way it does (figures: benchmarks/bench_quotas.py):

* The per-request path (``is_exhausted``, ``charge``, ``status``) touches
  Python dicts only.  A read of LMDB costs a few microseconds (one read
  transaction, three gets); it happens once per key per flush interval, when
  the key is not in the in-memory view.  Readers never wait for writers
  (LMDB is MVCC), so this read cannot stall the reactor behind a flush.
* Charges accumulate in memory and ``flush`` writes them in ONE write
  transaction as read-modify-write, so processes that share the environment
  (several ``twistd`` workers on one host) never lose each other's charges:
  LMDB's writer lock is held across processes for the whole transaction.
* One commit per flush means at most one fsync per flush interval.  The
  environment is opened with ``metasync=False`` (the reference's choice):
  data pages are fsynced on commit, the meta page is left to the next commit
  or to the kernel, which keeps the database consistent after a power cut
  and may only undo the last flush -- a second of quota accounting.
  ``fsync=False`` drops even that fsync (``sync=False``; a system crash may
  then lose more than the last flush).
* A flush is too slow for the reactor thread (measured: 100 keys 0.4-0.8 ms,
  1000 keys 4-5 ms, 5000 keys ~25 ms, of which the fsync is ~0.4 ms on the
  test VM and far more on a busy disk), so ``QuotaService`` runs
  ``write_batch`` and ``refill_transaction`` in a thread pool; they touch
  LMDB and immutable configuration only.  Everything else is reactor-thread
  only.  When the reactor thread is 100% busy the worker gets the GIL back
  only every switch interval: a 4 ms flush took 40 ms to 1 s in runs.  Under
  overload flushes lag (the charges still count, from memory), requests do
  not.
* The in-memory view is rebuilt from each flush's own transaction, so what
  this process believes about a key is at most one flush interval older
  than what other processes (and refills) wrote.

Refills (§7.4) add ``elapsed × limit / window`` where ``elapsed`` runs from
the refill time stored in the ``meta`` database, read and replaced inside
the same write transaction: a restart, a late timer or a second process
refilling too can neither skip nor repeat a stretch of time.
"""

import heapq
import math
import os
import struct
from collections import namedtuple
from dataclasses import dataclass, fields
from ipaddress import IPv6Address, ip_network
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton

import lmdb
from twisted.application.service import Service
from twisted.internet.defer import DeferredList, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

KINDS = ("ipaddr", "token")
# Bucket order everywhere below: day, week, month.
BUCKETS = ("day", "week", "month")
WINDOW_HOURS = {"day": 24, "week": 7 * 24, "month": 30 * 24}
REFILL_INTERVAL = 3600.0
FLUSH_INTERVAL = 1.0
DEFAULT_MAP_SIZE = 1 << 30
_MAX_KEY_BYTES = 511  # LMDB's default maximum key size

_MS = struct.Struct("<Q")  # remaining budget, whole milliseconds
_EPOCH = struct.Struct("<d")  # meta: last refill, epoch seconds
_META_LAST_REFILL = b"last_refill"


@dataclass(frozen=True)
class Limits:
    """Budgets in seconds per bucket; defaults are the reference's (§7.1)."""

    ipaddr_per_day: float = 4000
    ipaddr_per_week: float = 20000
    ipaddr_per_month: float = 60000
    token_per_day: float = 500
    token_per_week: float = 2000
    token_per_month: float = 6000

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            try:
                ok = value > 0 and math.isfinite(value)
            except TypeError:
                ok = False
            if not ok:
                raise ValueError(f"rate limit {f.name!r} must be a positive number")

    def for_kind(self, kind):
        """The (day, week, month) limits of ``kind``; ValueError if unknown."""
        if kind not in KINDS:
            raise ValueError(f"unknown quota kind {kind!r}")
        return tuple(getattr(self, f"{kind}_per_{b}") for b in BUCKETS)


def parse_rate_limits(text):
    """Parse CONTRACT.md ``rate_limits`` ("name=seconds, ...") into Limits.

    Names left out keep their default.  Unknown or repeated names and values
    that are not positive finite numbers raise ValueError, so a typo in the
    configuration is an error rather than a silent default.
    """
    if not isinstance(text, str):
        raise ValueError("rate_limits must be a string")
    known = {f.name for f in fields(Limits)}
    values = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, raw = item.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or name not in known:
            raise ValueError(f"unknown rate limit {item!r}")
        if name in values:
            raise ValueError(f"rate limit {name!r} given twice")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"rate limit {name!r}: not a number: {raw!r}") from None
        values[name] = value
    return Limits(**values)


def _packed_address(ip):
    """(family, packed bytes) of an address string, IPv4-mapped IPv6 as IPv4.

    Mapping matters: a dual-stack listener reports IPv4 peers as
    ``::ffff:a.b.c.d`` and they must share the IPv4 client's bucket.
    """
    if not isinstance(ip, str):
        raise ValueError(f"not an IP address: {ip!r}")
    try:
        if ":" in ip:
            packed = inet_pton(AF_INET6, ip.partition("%")[0])
            if packed[:12] == b"\0" * 10 + b"\xff\xff":
                return AF_INET, packed[12:]
            return AF_INET6, packed
        return AF_INET, inet_pton(AF_INET, ip)
    except (OSError, ValueError):
        raise ValueError(f"not an IP address: {ip!r}") from None


def quota_key(ip, v4_prefix=24, v6_prefix=64):
    """The quota key of a client address: its network, e.g. "1.2.3.0/24".

    With a full-length prefix (32 or 128) the key is the bare address, as the
    reference shows it in quotas_summary.  ValueError for a bad address or
    prefix.  socket.inet_pton/inet_ntop keep this near a microsecond (the
    ipaddress module costs 10-25 µs here, too much per request).
    """
    family, packed = _packed_address(ip)
    bits, prefix = (32, v4_prefix) if family == AF_INET else (128, v6_prefix)
    if not isinstance(prefix, int) or not 0 <= prefix <= bits:
        raise ValueError(f"bad prefix length {prefix!r} for a {bits}-bit address")
    if prefix < bits:
        mask = ((1 << prefix) - 1) << (bits - prefix)
        packed = (int.from_bytes(packed, "big") & mask).to_bytes(bits // 8, "big")
    text = inet_ntop(family, packed)
    if family == AF_INET6 and "." in text:
        # libc writes some addresses with a dotted tail; ipaddress does not.
        text = str(IPv6Address(packed))
    return text if prefix == bits else f"{text}/{prefix}"


class NetworkSet:
    """Addresses and networks that are never metered (rate_limit_unmetered)."""

    def __init__(self, networks):
        self._nets = tuple(networks)
        ranges = {4: [], 6: []}
        for n in self._nets:
            ranges[n.version].append(
                (int(n.network_address), int(n.broadcast_address))
            )
        self._ranges = {AF_INET: tuple(ranges[4]), AF_INET6: tuple(ranges[6])}

    def __contains__(self, ip):
        """True if the address string falls in one of the networks; a string
        that is not an address is simply not contained."""
        try:
            family, packed = _packed_address(ip)
        except ValueError:
            return False
        value = int.from_bytes(packed, "big")
        for low, high in self._ranges[family]:
            if low <= value <= high:
                return True
        return False

    def __bool__(self):
        return bool(self._nets)

    def __repr__(self):
        return f"NetworkSet({[str(n) for n in self._nets]!r})"


def parse_networks(text):
    """Parse "127.0.0.1, 10.0.0.0/8, ::1" into a NetworkSet; ValueError on a
    bad entry.  Host bits in a network ("10.1.2.3/8") are ignored."""
    if not isinstance(text, str):
        raise ValueError("networks must be a string")
    nets = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            nets.append(ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or network: {item!r}") from None
    return NetworkSet(nets)


class QuotaKeyer:
    """Client address -> quota key, or None for an unmetered address.

    Memoizes both answers per address string (a dict hit instead of parsing
    every time); the memo is emptied when it reaches ``max_entries``, which
    bounds memory however many addresses show up.  ValueError (not
    memoized) for a string that is not an address.
    """

    def __init__(self, v4_prefix=24, v6_prefix=64, unmetered=None, max_entries=65536):
        quota_key("0.0.0.0", v4_prefix, v6_prefix)  # validate the prefixes
        quota_key("::", v4_prefix, v6_prefix)
        self.v4_prefix = v4_prefix
        self.v6_prefix = v6_prefix
        self.unmetered = unmetered if unmetered is not None else NetworkSet(())
        self._max_entries = max_entries
        self._memo = {}

    def __call__(self, ip):
        try:
            return self._memo[ip]
        except KeyError:
            pass
        except TypeError:
            raise ValueError(f"not an IP address: {ip!r}") from None
        key = quota_key(ip, self.v4_prefix, self.v6_prefix)
        if ip in self.unmetered:
            key = None
        if len(self._memo) >= self._max_entries:
            self._memo.clear()
        self._memo[ip] = key
        return key


QuotaStatus = namedtuple("QuotaStatus", "limit remaining reset")
QuotaStatus.__doc__ = """What the X-RateLimit-* headers say about a key.

limit: the budget (s) of the bucket with the least left; remaining: seconds
left in that bucket; reset: epoch seconds of the next refill."""


class _Kind:
    """Per-kind state.  Cache entries are (min remaining s, that bucket's
    limit s): charges are subtracted from every bucket alike, so the binding
    bucket is the one with the least stored and is all the hot path needs."""

    def __init__(self, name, limits, dbs):
        self.name = name
        self.limits = limits
        self.limits_ms = tuple(max(1, round(x * 1000)) for x in limits)
        self.dbs = dbs
        self.pending = {}  # key -> seconds charged since the last flush
        self.inflight = {}  # key -> seconds being written by a flush
        self.cache = {}  # key -> (remaining s, limit s), as stored

    def entry(self, day, week, month):
        """Cache entry from stored (day, week, month) milliseconds."""
        if day <= week and day <= month:
            return day / 1000.0, self.limits[0]
        if week <= month:
            return week / 1000.0, self.limits[1]
        return month / 1000.0, self.limits[2]


class QuotaStore:
    """Quota buckets in an LMDB environment at ``path`` (see module doc).

    The environment holds one named database per kind and bucket
    (``ipaddr_per_day`` ... ``token_per_month``) mapping the UTF-8 key to the
    remaining milliseconds, plus ``meta`` with the time of the last refill.
    ``clock`` provides ``seconds()`` (epoch).  Opening is blocking: do it at
    start-up.  Each process must open its own store (py-lmdb refuses to open
    one environment twice in a process).  LMDB errors (e.g. lmdb.MapFullError)
    propagate from flush and refill; bad arguments raise ValueError.
    """

    def __init__(
        self,
        path,
        limits=None,
        clock=None,
        map_size=DEFAULT_MAP_SIZE,
        fsync=True,
        refill_interval=REFILL_INTERVAL,
    ):
        if clock is None:
            raise ValueError("a clock (IReactorTime) is required")
        self.limits = limits if limits is not None else Limits()
        self.refill_interval = float(refill_interval)
        self.clock = clock
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        self._env = lmdb.open(
            path,
            map_size=map_size,
            max_dbs=len(KINDS) * len(BUCKETS) + 1,
            metasync=False,
            sync=bool(fsync),
        )
        self.closed = False
        try:
            self._env.reader_check()  # slots left by crashed processes
            self._meta = self._env.open_db(b"meta")
            self._kinds = {}
            for kind in KINDS:
                dbs = tuple(
                    self._env.open_db(f"{kind}_per_{b}".encode()) for b in BUCKETS
                )
                self._kinds[kind] = _Kind(kind, self.limits.for_kind(kind), dbs)
            with self._env.begin(write=True) as txn:
                raw = txn.get(_META_LAST_REFILL, db=self._meta)
                if raw is None:
                    # A new store owes no refill for the time before it existed.
                    self._last_refill = float(clock.seconds())
                    txn.put(
                        _META_LAST_REFILL,
                        _EPOCH.pack(self._last_refill),
                        db=self._meta,
                    )
                else:
                    self._last_refill = _EPOCH.unpack(raw)[0]
        except BaseException:
            self._env.close()
            self.closed = True
            raise

    # -- per-request API (reactor thread, memory only on the fast path) --

    def _kind(self, kind):
        try:
            return self._kinds[kind]
        except (KeyError, TypeError):
            raise ValueError(f"unknown quota kind {kind!r}") from None

    @staticmethod
    def _check_key(key):
        if (
            not isinstance(key, str)
            or not key
            or (len(key) > 127 and len(key.encode("utf-8", "replace")) > _MAX_KEY_BYTES)
        ):
            raise ValueError(f"bad quota key {key!r}")

    def _entry(self, k, key):
        try:
            entry = k.cache.get(key)
        except TypeError:  # unhashable
            raise ValueError(f"bad quota key {key!r}") from None
        if entry is None:
            self._check_key(key)
            entry = k.cache[key] = self._read(k, key)
        return entry

    def _read(self, k, key):
        """Cache entry of a key from LMDB: one read transaction, which never
        waits for a writer."""
        kb = key.encode("utf-8", "replace")
        day_db, week_db, month_db = k.dbs
        day_lim, week_lim, month_lim = k.limits_ms
        with self._env.begin() as txn:
            day = txn.get(kb, db=day_db)
            week = txn.get(kb, db=week_db)
            month = txn.get(kb, db=month_db)
        return k.entry(
            _decode(day, day_lim), _decode(week, week_lim), _decode(month, month_lim)
        )

    def _spent(self, k, key):
        return k.pending.get(key, 0.0) + k.inflight.get(key, 0.0)

    def is_exhausted(self, key, kind="ipaddr"):
        """True when any of the key's buckets is at or below zero (§7.3.2)."""
        k = self._kind(kind)
        return self._entry(k, key)[0] - self._spent(k, key) <= 0.0

    def charge(self, key, seconds, kind="ipaddr"):
        """Spend ``seconds`` of the key's budget; kept in memory until flush."""
        k = self._kind(kind)
        self._check_key(key)
        try:
            ok = 0.0 <= seconds < math.inf
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"bad charge {seconds!r}: need finite seconds >= 0")
        pending = k.pending
        pending[key] = pending.get(key, 0.0) + seconds

    def remaining(self, key, kind="ipaddr"):
        """Seconds left in the key's emptiest bucket, floored at zero."""
        k = self._kind(kind)
        return max(0.0, self._entry(k, key)[0] - self._spent(k, key))

    def status(self, key, kind="ipaddr"):
        """QuotaStatus for the X-RateLimit-Limit/-Remaining/-Reset headers."""
        k = self._kind(kind)
        left, limit = self._entry(k, key)
        return QuotaStatus(
            limit,
            max(0.0, left - self._spent(k, key)),
            self._last_refill + self.refill_interval,
        )

    def next_refill_time(self):
        """Epoch seconds of the next hourly refill (X-RateLimit-Reset)."""
        return self._last_refill + self.refill_interval

    # -- flush: begin (reactor) / write_batch (any thread) / end (reactor) --

    def begin_flush(self):
        """Hand the accumulated charges to a flush; RuntimeError if one is
        already in progress (QuotaService never overlaps them)."""
        if any(k.inflight for k in self._kinds.values()):
            raise RuntimeError("a quota flush is already in progress")
        batch = {}
        for name, k in self._kinds.items():
            batch[name] = k.inflight = k.pending
            k.pending = {}
        return batch

    def write_batch(self, batch):
        """Apply a batch of charges in one write transaction (thread-safe).

        Returns what end_flush needs: the fresh cache entries of the charged
        keys and the stored last-refill time, both read inside the
        transaction, i.e. including every other process's writes.
        """
        fresh = {}
        if not any(batch.values()):
            # Nothing to write: skip the writer lock, just re-read the meta.
            with self._env.begin() as txn:
                raw = txn.get(_META_LAST_REFILL, db=self._meta)
            return fresh, _EPOCH.unpack(raw)[0]
        pack, unpack = _MS.pack, _MS.unpack
        with self._env.begin(write=True) as txn:
            for name, charges in batch.items():
                k = self._kinds[name]
                # Sorted keys walk each B-tree in order: fewer page visits.
                items = sorted(
                    (key.encode("utf-8", "replace"), key, seconds * 1000.0)
                    for key, seconds in charges.items()
                )
                columns = []
                for db, lim in zip(k.dbs, k.limits_ms):
                    cursor = txn.cursor(db=db)
                    column = []
                    for kb, _key, spent_ms in items:
                        raw = cursor.get(kb)
                        old = lim
                        if raw is not None:
                            try:
                                old = min(unpack(raw)[0], lim)
                            except struct.error:
                                pass
                        value = old - spent_ms
                        value = round(value) if value > 0 else 0
                        if value < lim:
                            cursor.put(kb, pack(value))
                        elif raw is not None:
                            cursor.delete()  # full again: back to "not stored"
                        column.append(value)
                    columns.append(column)
                entry = k.entry
                fresh[name] = {
                    item[1]: entry(day, week, month)
                    for item, day, week, month in zip(items, *columns)
                }
            last = _EPOCH.unpack(txn.get(_META_LAST_REFILL, db=self._meta))[0]
        return fresh, last

    def end_flush(self, result):
        """Install the result of write_batch (reactor thread)."""
        fresh, last = result
        for name, k in self._kinds.items():
            k.cache = fresh.get(name, {})
            k.inflight = {}
        self._last_refill = last
        return sum(len(v) for v in fresh.values())

    def abort_flush(self):
        """Give a failed flush's charges back to pending, so none is lost."""
        for k in self._kinds.values():
            pending = k.pending
            for key, seconds in k.inflight.items():
                pending[key] = pending.get(key, 0.0) + seconds
            k.inflight = {}

    def flush(self):
        """Write accumulated charges now; returns how many keys were written.

        Blocking; QuotaService does the same with write_batch in a thread.
        """
        batch = self.begin_flush()
        try:
            result = self.write_batch(batch)
        except BaseException:
            self.abort_flush()
            raise
        return self.end_flush(result)

    # -- refill --

    def refill_transaction(self, now):
        """Refill every stored bucket for the time since the stored last
        refill, and store ``now`` as the last refill (thread-safe).

        Returns (seconds of elapsed time applied, last refill time).  A clock
        behind the stored time refills nothing and stores nothing, so the
        same stretch of time is never refilled twice.
        """
        now = float(now)
        with self._env.begin(write=True) as txn:
            last = _EPOCH.unpack(txn.get(_META_LAST_REFILL, db=self._meta))[0]
            elapsed = now - last
            if not elapsed > 0:
                return 0.0, last
            for k in self._kinds.values():
                for bucket, db, lim in zip(BUCKETS, k.dbs, k.limits_ms):
                    gain = elapsed * lim / (WINDOW_HOURS[bucket] * 3600.0)
                    _refill_db(txn.cursor(db=db), gain, lim)
            txn.put(_META_LAST_REFILL, _EPOCH.pack(now), db=self._meta)
        return elapsed, now

    def end_refill(self, result):
        """Note a refill done by refill_transaction (reactor thread): cached
        views are now too low, drop them."""
        elapsed, last = result
        self._last_refill = last
        for k in self._kinds.values():
            k.cache = {}
        return elapsed

    def refill(self, now=None):
        """Refill (§7.4) up to ``now`` (default: the clock); blocking.
        Returns the seconds of elapsed time applied."""
        if now is None:
            now = self.clock.seconds()
        return self.end_refill(self.refill_transaction(now))

    # -- admin --

    def summary(self, limit=20, kind="ipaddr"):
        """[[key, remaining_s], ...] for the ``limit`` lowest daily buckets,
        lowest first (§7.7), as stored at the last flush.  Reads LMDB only, so
        it may run in a thread; it scans every stored key."""
        k = self._kind(kind)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise ValueError(f"bad summary limit {limit!r}")
        day_db, day_lim = k.dbs[0], k.limits_ms[0]
        with self._env.begin() as txn:
            rows = heapq.nsmallest(
                limit,
                (
                    (_decode(raw, day_lim), key)
                    for key, raw in txn.cursor(db=day_db).iternext()
                ),
            )
        return [[key.decode("utf-8", "replace"), ms / 1000.0] for ms, key in rows]

    def close(self):
        """Close the environment; unflushed charges are dropped (flush first)."""
        if not self.closed:
            self.closed = True
            self._env.close()


def _decode(raw, limit_ms):
    """Stored milliseconds, capped at the limit (limits may have been
    lowered since); absent or foreign values mean a full bucket."""
    if raw is None or len(raw) != _MS.size:
        return limit_ms
    return min(_MS.unpack(raw)[0], limit_ms)


def _refill_db(cursor, gain_ms, limit_ms):
    """Add gain_ms to every value under the cursor; a full bucket is deleted
    (the key goes back to "no stored value")."""
    more = cursor.first()
    while more:
        key = cursor.key()
        value = _decode(cursor.value(), limit_ms) + gain_ms
        if value >= limit_ms:
            # delete() moves to the next item; an empty key means none is left.
            more = cursor.delete() and bool(cursor.key())
        else:
            cursor.put(key, _MS.pack(round(value)))
            more = cursor.next()


class QuotaService(Service):
    """Keeps a QuotaStore refilled and flushed, and closes it at stop.

    LMDB work (flush, refill) runs in ``threadpool`` because a flush of a few
    thousand keys plus its fsync takes milliseconds (bench_quotas.py);
    ``threadpool=None`` runs it inline, for tests with a task.Clock.  Timer
    bodies log failures (counted in ``failures``) and never stop their loop;
    a failed flush keeps its charges for the next one.

    Stop this service after the web server (add it to the MultiService
    before the HTTP service): stopService flushes and closes the store.
    """

    log = Logger()

    def __init__(self, store, reactor, threadpool=None, flush_interval=FLUSH_INTERVAL):
        self.store = store
        self._reactor = reactor
        self._threadpool = threadpool
        self.flush_interval = flush_interval
        self.failures = 0
        self._flush_loop = None
        self._refill_loop = None
        self._started = []  # start-up work, waited for at stop
        self._stopped = []  # fire when the loops have stopped

    def _run(self, f, *args):
        if self._threadpool is None:
            return maybeDeferred(f, *args)
        return deferToThreadPool(self._reactor, self._threadpool, f, *args)

    def _failed(self, failure, what):
        self.failures += 1
        self.log.failure("quota {what} failed", failure=failure, what=what)
        return None

    def flush_tick(self):
        """One flush: swap the charges out, write them in the pool, install
        the fresh view.  Never fails (LoopingCall would stop for good)."""
        if self.store.closed:
            return succeed(None)
        try:
            batch = self.store.begin_flush()
        except Exception:
            self.failures += 1
            self.log.failure("quota flush failed")
            return succeed(None)
        d = self._run(self.store.write_batch, batch)

        def failed(failure):
            self.store.abort_flush()
            return failure

        d.addCallbacks(self.store.end_flush, failed)
        d.addErrback(self._failed, "flush")
        return d

    def refill_tick(self):
        """One refill up to the clock's now; never fails."""
        if self.store.closed:
            return succeed(None)
        d = self._run(self.store.refill_transaction, self.store.clock.seconds())
        d.addCallback(self.store.end_refill)
        d.addErrback(self._failed, "refill")
        return d

    def startService(self):
        """Catch up on refills missed while down, then start both timers.
        Returns the catch-up Deferred for a parent that waits on start-up."""
        super().startService()
        catch_up = self.refill_tick()
        self._started.append(catch_up)
        self._refill_loop = LoopingCall(self.refill_tick)
        self._refill_loop.clock = self._reactor
        self._flush_loop = LoopingCall(self.flush_tick)
        self._flush_loop.clock = self._reactor
        self._stopped = [
            self._refill_loop.start(self.store.refill_interval, now=False),
            self._flush_loop.start(self.flush_interval, now=False),
        ]
        return catch_up

    def stopService(self):
        """Wait for running ticks, flush what is left and close the store.
        The last flush is inline: at shutdown the pool may already be gone."""
        super().stopService()
        for loop in (self._refill_loop, self._flush_loop):
            if loop is not None and loop.running:
                loop.stop()
        waits = self._started + self._stopped
        self._started, self._stopped = [], []

        def finish(_):
            if self.store.closed:
                return None
            try:
                self.store.flush()
            except Exception:
                self.failures += 1
                self.log.failure("final quota flush failed")
            self.store.close()

        d = DeferredList(waits, consumeErrors=True)
        d.addCallback(finish)
        return d
