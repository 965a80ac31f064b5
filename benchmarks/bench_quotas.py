"""Per-request cost of quota accounting (ooni_twisted.storage.quotas).

Simulates what the web wrapper does for each request -- keyer(ip) (quota
key, or None when unmetered), is_exhausted, charge, status (for the
X-RateLimit-* headers) -- for --requests requests drawn from --addresses
client addresses, with a flush every --flush-every requests (10000 = the
1 s flush timer at 10k requests/s).

It reports apart what runs on the reactor thread (the per-request calls,
begin_flush/end_flush, the LMDB reads of keys not in memory) and what
QuotaService runs in its thread pool (write_batch), then both amortized as
if all of it ran inline.  It also times flushes by batch size with and
without fsync, and refills by number of stored keys.  Each figure is the
best of --repeat runs: the least disturbed by other load on the machine.

    .venv/bin/python benchmarks/bench_quotas.py [--requests N] [--dir PATH]
"""

import argparse
import gc
import os
import random
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock  # noqa: E402

from ooni_twisted.storage.quotas import (  # noqa: E402
    Limits,
    QuotaKeyer,
    QuotaStore,
    parse_networks,
    quota_key,
)

UNMETERED = "127.0.0.1, ::1, 37.218.245.43, 37.218.242.149"


def make_addresses(rng, count):
    """80% IPv4 (about two addresses per /24), 20% IPv6."""
    out = []
    n4 = count * 4 // 5
    for _ in range(n4):
        out.append(
            f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(128)}."
            f"{rng.randrange(1, 255)}"
        )
    for _ in range(count - n4):
        out.append(
            "2001:db8:%x:%x::%x:%x"
            % (rng.randrange(64), rng.randrange(65536), rng.randrange(65536),
               rng.randrange(65536))
        )
    return out


def open_store(base, name, clock=None, **kw):
    path = os.path.join(base, name)
    shutil.rmtree(path, ignore_errors=True)
    return QuotaStore(path, Limits(), clock or Clock(), **kw)


def best(repeat, run):
    """The smallest of ``repeat`` results of run() (each a tuple, compared
    on its first item)."""
    return min((run() for _ in range(repeat)), key=lambda r: r[0])


def time_loop(sequence, body):
    t0 = time.perf_counter()
    for ip in sequence:
        body(ip)
    return (time.perf_counter() - t0,)


def run_requests(base, sequence, costs, flush_every, fsync):
    """One pass of the simulated wrapper; returns (reactor s, thread s,
    per-flush [(keys, write s, begin+end s)], all-inline s)."""
    store = open_store(base, "requests", fsync=fsync)
    keyer = QuotaKeyer(unmetered=parse_networks(UNMETERED))
    n_costs = len(costs)
    thread_s = 0.0
    flushes = []
    gc.collect()
    t0 = time.perf_counter()
    for i, ip in enumerate(sequence):
        key = keyer(ip)
        if key is None:
            continue
        if store.is_exhausted(key):
            pass  # the wrapper answers 429 here; the charge happens anyway
        store.charge(key, costs[i % n_costs])
        store.status(key)
        if (i + 1) % flush_every == 0:
            t1 = time.perf_counter()
            batch = store.begin_flush()
            t2 = time.perf_counter()
            result = store.write_batch(batch)  # QuotaService: in the pool
            t3 = time.perf_counter()
            store.end_flush(result)
            t4 = time.perf_counter()
            thread_s += t3 - t2
            flushes.append((sum(map(len, batch.values())), t3 - t2, (t2 - t1) + (t4 - t3)))
    total = time.perf_counter() - t0
    store.close()
    return total - thread_s, thread_s, flushes, total


def run_flush(base, n, fsync, rounds=5):
    store = open_store(base, "flush", fsync=fsync)
    keys = [f"10.{i // 256 % 256}.{i % 256}.0/24" for i in range(n)]
    times = []
    for _ in range(rounds):
        for key in keys:
            store.charge(key, 0.01)
        t0 = time.perf_counter()
        store.flush()
        times.append(time.perf_counter() - t0)
    store.close()
    return (sorted(times)[len(times) // 2],)


def run_misses(base, n=5000):
    store = open_store(base, "misses")
    keys = [f"10.{i // 256 % 256}.{i % 256}.0/24" for i in range(n)]
    for key in keys:
        store.charge(key, 1.0)
    store.flush()
    store.flush()  # an empty flush drops the in-memory view
    t0 = time.perf_counter()
    for key in keys:
        store.is_exhausted(key)
    miss = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for key in keys:
        store.is_exhausted(key)
    hit = (time.perf_counter() - t0) / n
    store.close()
    return miss, hit


def run_refill(base, n):
    clock = Clock()
    store = open_store(base, "refill", clock)
    for i in range(n):
        store.charge(f"k{i}", 1000.0)
    store.flush()
    clock.advance(3600)
    t0 = time.perf_counter()
    store.refill()
    elapsed = time.perf_counter() - t0
    store.close()
    return (elapsed,)


def run_contention(base, n_keys=1000, requests=300_000):
    """The reactor thread busy with requests while a pool thread writes a
    flush of n_keys: (reactor µs/request, flush ms alone, flush ms beside
    the busy reactor thread).  A busy thread holds the GIL for up to
    sys.getswitchinterval() each time LMDB calls in the other thread release
    it, which stretches the flush but not the requests."""
    store = open_store(base, "contention", fsync=True)
    keys = [f"10.{i // 256 % 256}.{i % 256}.0/24" for i in range(5000)]
    other = {"ipaddr": {f"o{i}": 0.001 for i in range(n_keys)}, "token": {}}
    t0 = time.perf_counter()
    store.write_batch(other)
    alone = time.perf_counter() - t0
    for key in keys:
        store.is_exhausted(key)  # in memory, as between flushes
    result = {}

    def flush_in_thread():
        t = time.perf_counter()
        store.write_batch(other)
        result["flush"] = time.perf_counter() - t

    worker = threading.Thread(target=flush_in_thread)
    t0 = time.perf_counter()
    worker.start()
    done = 0
    while done < requests and worker.is_alive():
        key = keys[done % len(keys)]
        store.is_exhausted(key)
        store.charge(key, 0.001)
        store.status(key)
        done += 1
    busy = time.perf_counter() - t0
    worker.join()
    store.close()
    return busy / max(done, 1), alone, result["flush"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--addresses", type=int, default=5_000)
    parser.add_argument("--flush-every", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", help="where to create LMDB environments (default: a temp dir)")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="bench_quotas-", dir=args.dir)
    us, n, rep = 1e6, args.requests, args.repeat
    rng = random.Random(1)
    addresses = make_addresses(rng, args.addresses)
    sequence = [rng.choice(addresses) for _ in range(n)]
    costs = [rng.uniform(0.001, 0.2) for _ in range(1000)]
    unmetered = parse_networks(UNMETERED)
    try:
        print(f"python {sys.version.split()[0]}; {n} requests from {len(addresses)} addresses "
              f"({len({quota_key(a) for a in addresses})} quota keys); flush every "
              f"{args.flush_every} requests; best of {rep}; LMDB under {base}")
        nothing = best(rep, lambda: time_loop(sequence, lambda ip: None))[0]
        parts = [
            ("quota_key(ip)", lambda ip: quota_key(ip)),
            ("ip in unmetered networks", lambda ip: ip in unmetered),
        ]
        for label, body in parts:
            t = best(rep, lambda: time_loop(sequence, body))[0] - nothing
            print(f"  {label:<34} {t / n * us:6.2f} µs (uncached; QuotaKeyer memoizes both)")
        for fsync in (True, False):
            reactor_s, thread_s, flushes, total = best(
                rep, lambda: run_requests(base, sequence, costs, args.flush_every, fsync))
            keys = sum(f[0] for f in flushes) / len(flushes)
            print(f"\n  per request, fsync={fsync}:")
            print(f"    reactor thread (keyer, is_exhausted, charge, status, LMDB reads,"
                  f" begin/end flush) {reactor_s / n * us:6.2f} µs")
            print(f"    thread pool (write_batch)        {thread_s / n * us:6.2f} µs amortized"
                  f" = {thread_s / len(flushes) * 1000:.1f} ms per flush of {keys:.0f} keys")
            print(f"    begin_flush + end_flush          "
                  f"{sum(f[2] for f in flushes) / len(flushes) * 1000:.2f} ms per flush (reactor)")
            print(f"    everything inline                {total / n * us:6.2f} µs"
                  f" = {n / total:.0f} requests/s of accounting alone")
        miss, hit = min(run_misses(base) for _ in range(rep))
        print(f"\n  is_exhausted: {miss * us:.2f} µs for a key not in memory (LMDB read),"
              f" {hit * us:.2f} µs in memory")
        for fsync in (True, False):
            cells = []
            for size in (1, 100, 1000, 5000):
                t = best(rep, lambda: run_flush(base, size, fsync))[0]
                cells.append(f"{size} keys {t * 1000:.2f} ms")
            print(f"  flush (fsync={fsync}): " + ", ".join(cells))
        runs = [run_contention(base) for _ in range(max(rep, 3))]
        besides = sorted(r[2] for r in runs)
        print(f"  flush of 1000 keys in a pool thread: {min(r[1] for r in runs) * 1000:.1f} ms"
              f" alone, {besides[0] * 1000:.0f}-{besides[-1] * 1000:.0f} ms beside a"
              f" 100%-busy reactor thread (whose requests took"
              f" {min(r[0] for r in runs) * us:.2f} µs each meanwhile)")
        cells = []
        for size in (5000, 50000):
            t = best(rep, lambda: run_refill(base, size))[0]
            cells.append(f"{size} keys {t * 1000:.1f} ms")
        print("  refill: " + ", ".join(cells))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
