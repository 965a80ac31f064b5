"""Cost of quota accounting per request (QuotaHook, ooni_twisted.ratelimit).

The route measured is GET /robots.txt, which does no database work, so the
quota share of its cost is as large as it gets.  Server variants:

* ``bare``: no quota hook and no quota route (the server without quotas);
* ``nohook``: the quota route in the router, no hook;
* ``metered``: the hook on, every request metered (X-RateLimit-* headers,
  a charge, a flush per second in the file pool);
* ``unmetered``: the hook on, the clients in rate_limit_unmetered.

Every request carries an X-Real-IP from a list of client addresses (two per
/24 or /64; loopback is a trusted proxy): --addresses of them ("many", a
quota key the store has not seen since its last flush at nearly every
request: the worst case), or --few ("few").  ``metered-few`` is the metered
variant under the few addresses; every other run uses the many.

Three measurements, each interleaving the variants in rounds and keeping
medians (and the median difference from the ``nohook`` run of the same
round), because the speed of a shared machine drifts by 20% and more
within a minute.  Times are CPU times (of the thread, or of the server
process), so other processes taking the CPU away do not count; what they
still disturb (caches, memory bandwidth) is what the interleaving is for.

1. The hook alone: before + after on real twisted.web Request objects
   against a real LMDB store, minus the cost of building the requests.
2. The full HTTP stack without sockets: raw requests fed to the real
   site's HTTPChannel over an in-memory transport, i.e. all the reactor
   thread's Python work per request; the flushes (in the file pool in the
   server) are timed apart.
3. The server over loopback: one server process listens on one port per
   variant; wrk (one thread, 64 connections) loads each in turn.  Reported:
   requests/s and the server's CPU time per request (all its threads, from
   /proc/PID/task/*/schedstat).

    .venv/bin/python benchmarks/bench_ratelimit.py [--rounds 7] [--skip-wrk]
"""

import argparse
import copy
import gc
import glob
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODES = ("bare", "nohook", "metered", "unmetered")

WRK_SCRIPT = """
local addresses = %s
local n = #addresses
local i = 0
request = function()
  i = i %% n + 1
  return wrk.format(nil, nil, {["X-Real-IP"] = addresses[i]})
end
"""


def make_addresses(count, seed=42):
    """80% IPv4, 20% IPv6, two addresses per /24 or /64 (so count/2 quota
    keys), shuffled."""
    rng = random.Random(seed)
    out = []
    n4 = count * 4 // 5
    for i in range(0, n4, 2):
        net = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}"
        out += [f"{net}.{host}" for host in rng.sample(range(1, 255), 2)][: n4 - i]
    for i in range(0, count - n4, 2):
        net = "2001:db8:%x:%x" % (rng.randrange(65536), rng.randrange(65536))
        out += ["%s::%x" % (net, host) for host in rng.sample(range(1, 65536), 2)][: count - n4 - i]
    rng.shuffle(out)
    return out


# -- the server child ---------------------------------------------------------


def variants(server):
    """mode -> resource: copies of the server's resource with the quota hook
    and route kept, taken out or replaced."""
    from ooni_twisted.ratelimit import QuotaHook, QuotaRoutes
    from ooni_twisted.storage.quotas import QuotaKeyer, parse_networks

    main = server.site.resource
    (hook,) = [h for h in main._hooks if isinstance(h, QuotaHook)]
    others = tuple(h for h in main._hooks if h is not hook)
    everyone = QuotaKeyer(unmetered=parse_networks("0.0.0.0/0, ::/0"))
    free = QuotaHook(hook.store, everyone, server.context.client_address)

    def variant(hooks, quota_route=True):
        resource = copy.copy(main)
        resource._hooks = hooks
        if not quota_route:
            resource._routes = [
                (url_map, r) for url_map, r in main._routes
                if url_map is not QuotaRoutes.app.url_map
            ]
        return resource

    return {
        "bare": variant(others, quota_route=False),
        "nohook": variant(others),
        "metered": variant(main._hooks),
        "unmetered": variant(others + (free,)),
    }


def serve(base):
    """Run a server in this process; print {mode: port}, serve until killed."""
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.endpoints import serverFromString

    from ooni_twisted.config import parse_config
    from ooni_twisted.service import ApiService
    from ooni_twisted.web.site import ApiSite

    config = parse_config(
        {
            "listen": "tcp:0:interface=127.0.0.1:backlog=1024",
            "data_dir": "var",
            "development": "true",
            "rate_limit_unmetered": "10.9.9.9",
        },
        base,
        source="bench",
    )
    server = ApiService(config, reactor)

    async def listen(_):
        # Every variant gets a site and port of its own, the server's too.
        ports = {}
        for mode, resource in variants(server).items():
            endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1:backlog=1024")
            port = await endpoint.listen(ApiSite(resource, config.max_body_size))
            ports[mode] = port.getHost().port
        print(json.dumps(ports), flush=True)

    def failed(f):
        print(f"FAILED {f.getErrorMessage()}", flush=True)
        reactor.stop()

    server.ready.addCallback(lambda r: ensureDeferred(listen(r))).addErrback(failed)
    reactor.callWhenRunning(server.startService)
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    reactor.run()


def start_child(base):
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", "--dir", base],
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=ROOT, TZ="UTC"),
        text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("{"):
        proc.kill()
        raise SystemExit(f"server did not start: {line.strip()}")
    return proc, json.loads(line)


def stop_child(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid):
    """CPU time of every thread of process pid, in seconds (ns precision)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def run_wrk(port, script, duration, connections):
    """(requests/s, requests, non-2xx count, socket error line)."""
    out = subprocess.run(
        [
            "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", script,
            f"http://127.0.0.1:{port}/robots.txt",
        ],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return rps, requests, int(bad.group(1)) if bad else 0, errors.group(0) if errors else ""


def check_headers(port, expect):
    """One request, to make sure a variant is what it claims to be."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/robots.txt", headers={"X-Real-IP": "198.51.100.7"})
    response = conn.getresponse()
    response.read()
    conn.close()
    has = response.getheader("X-RateLimit-Remaining") is not None
    if response.status != 200 or has != expect:
        raise SystemExit(f"unexpected answer on port {port}: {response.status}, headers: {has}")


#: (label, server variant, client population) per wrk run of a round.
RUNS = (
    ("nohook", "nohook", "many"),
    ("bare", "bare", "many"),
    ("metered", "metered", "many"),
    ("metered-few", "metered", "few"),
    ("unmetered", "unmetered", "many"),
)


def median(values):
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def throughput(args, base):
    """Per run label: [(requests/s, CPU µs/request)] per round."""
    scripts = {}
    for population, count in (("many", args.addresses), ("few", args.few)):
        scripts[population] = os.path.join(base, f"{population}.lua")
        with open(scripts[population], "w") as f:
            listed = ",".join(json.dumps(a) for a in make_addresses(count))
            f.write(WRK_SCRIPT % ("{" + listed + "}"))
    results = {label: [] for label, _, _ in RUNS}
    data = os.path.join(base, "server")
    os.makedirs(data)
    proc, ports = start_child(data)
    try:
        for mode in MODES:
            check_headers(ports[mode], mode == "metered")
        for label, mode, population in RUNS:  # warm-up
            run_wrk(ports[mode], scripts[population], 1, args.connections)
        order = list(RUNS)
        shuffle = random.Random(7).shuffle
        for r in range(args.rounds):
            line = []
            shuffle(order)
            for label, mode, population in order:
                before = cpu_seconds(proc.pid)
                rps, requests, bad, errors = run_wrk(
                    ports[mode], scripts[population], args.duration, args.connections
                )
                cpu_us = (cpu_seconds(proc.pid) - before) / requests * 1e6
                if bad or errors:
                    raise SystemExit(f"{label}: {bad} non-2xx answers; {errors}")
                results[label].append((rps, cpu_us))
                line.append(f"{label} {rps:.0f}/s {cpu_us:.0f}µs")
            print(f"  round {r + 1}: " + ", ".join(line), flush=True)
    finally:
        stop_child(proc)
    return results


# -- in process ---------------------------------------------------------------


def in_process(args, base):
    """(µs/request of before+after, µs/request of building the Request that
    is subtracted), medians over --repeat rounds."""
    from ipaddress import ip_network

    from twisted.internet.task import Clock
    from twisted.web.server import Request
    from twisted.web.test.requesthelper import DummyChannel

    from ooni_twisted.ratelimit import QuotaHook
    from ooni_twisted.storage.quotas import Limits, QuotaKeyer, QuotaStore, parse_networks
    from ooni_twisted.web.clientip import ClientAddress

    store = QuotaStore(os.path.join(base, "inproc"), Limits(), Clock())
    keyer = QuotaKeyer(unmetered=parse_networks("10.9.9.9"))
    # DummyChannel's peer, 192.168.1.1, is the trusted proxy.
    hook = QuotaHook(store, keyer, ClientAddress((ip_network("192.168.1.1"),)))
    addresses = [a.encode() for a in make_addresses(args.addresses)]
    channel = DummyChannel()

    def build(ip):
        request = Request(channel)
        request.method = b"GET"
        request.path = b"/robots.txt"
        request.requestHeaders.setRawHeaders(b"x-real-ip", [ip])
        return request

    position = [0]

    def loop(with_hook, n):
        start = position[0]
        position[0] = (start + n) % len(addresses)
        batch = [addresses[(start + i) % len(addresses)] for i in range(n)]
        gc.collect()
        t0 = time.thread_time()
        if with_hook:
            for ip in batch:
                request = build(ip)
                hook.before(request)
                hook.after(request, 0.0001)
        else:
            for ip in batch:
                build(ip)
        spent = time.thread_time() - t0
        if with_hook:
            store.flush()  # QuotaService does this in the file pool
        return spent / n * 1e6

    loop(True, len(addresses))  # warm the memos and the store
    pairs = [(loop(False, 2000), loop(True, 2000)) for _ in range(args.repeat)]
    store.close()
    return median([h - b for b, h in pairs]), median([b for b, _ in pairs])


def full_stack(args, base):
    """
    The whole HTTP stack of the server without sockets: raw requests fed to
    an HTTPChannel of the real site (an in-memory transport), so only the
    reactor thread's Python work is timed -- the part quota accounting adds
    to.  The router holds the quota route and the pages (the server's other
    features are left out, which makes the bare route cheaper and the
    quota share larger than in the full server).  Each round runs a short
    batch of every variant in a shuffled order; comparing batches of the
    same round cancels most of the drift of a shared machine.

    Returns {label: (µs/request, µs/request more than nohook in the same
    round, flush µs/request)}, medians over the rounds.
    """
    from twisted.application.service import MultiService
    from twisted.internet import reactor
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from ooni_twisted.app import ApiResource, Context
    from ooni_twisted.config import parse_config
    from ooni_twisted.pages import PageRoutes
    from ooni_twisted.ratelimit import QuotaHook, build_quotas
    from ooni_twisted.storage.quotas import QuotaKeyer, parse_networks
    from ooni_twisted.web.site import ApiSite

    config = parse_config(
        {"data_dir": "memory", "development": "true", "rate_limit_unmetered": "10.9.9.9"},
        base,
        source="bench",
    )
    context = Context(config, reactor, None, None, MultiService())
    quotas = build_quotas(context)  # the service is never started: flushes are ours
    pages = PageRoutes(None)
    everyone = QuotaKeyer(unmetered=parse_networks("0.0.0.0/0, ::/0"))
    free = QuotaHook(quotas.store, everyone, context.client_address)
    resources = {
        "bare": ApiResource([pages]),
        "nohook": ApiResource([quotas.routes, pages]),
        "metered": ApiResource([quotas.routes, pages], hooks=[quotas.hook]),
        "unmetered": ApiResource([quotas.routes, pages], hooks=[free]),
    }

    def raw(addresses):
        return [
            b"GET /robots.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\n"
            b"X-Real-IP: " + a.encode() + b"\r\n\r\n"
            for a in addresses
        ]

    populations = {"many": raw(make_addresses(args.addresses)), "few": raw(make_addresses(args.few))}
    peer = IPv4Address("TCP", "127.0.0.1", 40000)
    channels = {}
    for mode, resource in resources.items():
        site = ApiSite(resource, config.max_body_size, timeout=None)
        channel = site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        channel.makeConnection(transport)
        channels[mode] = (channel, transport)

    position = {name: 0 for name in populations}

    def batch(mode, population, n):
        channel, transport = channels[mode]
        requests = populations[population]
        start = position[population]
        position[population] = (start + n) % len(requests)
        chosen = [requests[(start + i) % len(requests)] for i in range(n)]
        gc.collect()
        t0 = time.thread_time()
        for data in chosen:
            channel.dataReceived(data)
            transport.clear()
        elapsed = time.thread_time() - t0
        f0 = time.thread_time()
        quotas.store.flush()  # QuotaService does this in the file pool
        return elapsed / n * 1e6, (time.thread_time() - f0) / n * 1e6

    for label, mode, population in RUNS:  # warm-up, and a sanity check
        batch(mode, population, 500)
    channel, transport = channels["metered"]
    channel.dataReceived(populations["many"][0])
    answer = transport.value()
    transport.clear()
    if b" 200 " not in answer.split(b"\r\n")[0] or b"X-Ratelimit-Remaining" not in answer:
        raise SystemExit(f"unexpected answer: {answer[:200]!r}")

    results = {label: [] for label, _, _ in RUNS}
    order = list(RUNS)
    shuffle = random.Random(7).shuffle
    for _ in range(args.batches):
        shuffle(order)  # no variant always runs right after another
        for label, mode, population in order:
            results[label].append(batch(mode, population, args.batch_size))
    quotas.store.close()
    reference = [r for r, _ in results["nohook"]]
    return {
        label: (
            median([r for r, _ in rows]),
            median([r - ref for (r, _), ref in zip(rows, reference)]),
            median([f for _, f in rows]),
        )
        for label, rows in results.items()
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--addresses", type=int, default=10000, help="client addresses (many)")
    parser.add_argument("--few", type=int, default=100, help="client addresses (few)")
    parser.add_argument("--repeat", type=int, default=30, help="hook-only rounds")
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--batches", type=int, default=60, help="in-memory rounds")
    parser.add_argument("--batch-size", type=int, default=500, help="requests per batch")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-wrk", action="store_true", help="no wrk runs (in-process figures only)")
    args = parser.parse_args()
    if args.serve:
        serve(args.dir)
        return
    base = tempfile.mkdtemp(prefix="bench_ratelimit-", dir=args.dir)
    try:
        overhead, build_us = in_process(args, base)
        print(
            f"in process: before+after {overhead:.1f} µs/request "
            f"(building the Request, subtracted: {build_us:.1f} µs)"
        )
        stack = full_stack(args, base)
        print(
            f"full HTTP stack in memory (reactor thread only), {args.batches} rounds of "
            f"interleaved batches of {args.batch_size} requests; medians, and the median "
            f"difference from the nohook batch of the same round:"
        )
        ref = stack["nohook"][0]
        for label, mode, _ in RUNS:
            us, extra, flush_us = stack[label]
            flush = f"  + flush in the pool {flush_us:4.1f} µs" if mode == "metered" else ""
            print(
                f"  {label:12s} {us:6.1f} µs/request ({extra:+5.1f} µs = "
                f"{-extra / (ref + extra) * 100:+5.1f}% throughput){flush}"
            )
        if args.skip_wrk:
            return
        print(
            f"wrk -t1 -c{args.connections} -d{args.duration}s GET /robots.txt, "
            f"{args.rounds} rounds:"
        )
        results = throughput(args, base)
        print(
            "medians over the rounds; each run compared with the nohook run of "
            "its own round (the machine's speed drifts between rounds):"
        )
        reference = results["nohook"]
        for label, _, _ in RUNS:
            rows = results[label]
            rps = median([r for r, _ in rows])
            cpu = median([c for _, c in rows])
            loss = median([(r / ref[0] - 1) * 100 for (r, _), ref in zip(rows, reference)])
            extra = median([c - ref[1] for (_, c), ref in zip(rows, reference)])
            print(
                f"  {label:12s} {rps:7.0f} req/s ({loss:+5.1f}%)  "
                f"{cpu:6.1f} µs CPU/request ({extra:+6.1f} µs)"
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
