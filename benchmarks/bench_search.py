"""
Latency of the Explorer read paths on a fastpath table of >= 1,000,000 rows.

1. Load (in a child process: chDB holds one data directory per process):
   the real rows of ../shared/data/fastpath_rows.jsonl (tests/data as a
   fallback) are copied until --rows is reached; every copy of a report is
   moved, as a whole, to a random moment of the two years before now, with
   new uids and report ids, and inserted through the bulk insert path
   (ClickHouse.insert, Arrow), each with a jsonl row. The real measurements
   of ../shared/data/measurements/all.jsonl that have a new-format report_id
   are copied into --bodies measurements in archive objects of 50 lines
   (per-line gzip members, jsonl rows with offsets, fastpath rows), as
   ingestion writes them.
2. A `twistd -n ooni-api` server on that directory (local archive) answers
   sequential HTTP requests on one keep-alive connection: /api/v1/measurements
   by cc, by cc + test_name + since, by domain, a deep page by offset and the
   same depths by cursor, then body fetches (raw_measurement and
   measurement/<uid>). Every request is distinct, so the response cache
   never answers: these are the costs of a miss.
   Then every part is merged (OPTIMIZE FINAL) and the same requests run again.
3. The objects are uploaded to moto's S3 server (loopback, in this process)
   and the server is restarted with s3_* settings: body fetches again, now
   by HTTP Range requests to S3.

    .venv/bin/python benchmarks/bench_search.py [--rows 1000000] [--requests 200]
"""

import argparse
import datetime
import hashlib
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from probe_harness import ROOT, SHARED, ApiServer, env, free_port, machine_note  # noqa: E402

DAY = datetime.timedelta(days=1)

#: First offset of the deep pages (Explorer-style listing of one country).
DEEP_START = 50_000


def shared_or_test(*parts):
    path = os.path.join(SHARED, *parts)
    if os.path.exists(path):
        return path
    return os.path.join(ROOT, "tests", "data", *parts)


# -- loading (child process) ------------------------------------------------------------


def _uid(received, cc, testname, seed):
    digest = hashlib.sha512(seed.encode()).hexdigest()[:16]
    return f"{received.strftime('%Y%m%d%H%M%S.%f')}_{cc}_{testname}_{digest}"


def _report_id(start, testname, cc, asn, rng):
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    tail = "".join(rng.choice(alphabet) for _ in range(16))
    return f"{start.strftime('%Y%m%dT%H%M%SZ')}_{testname}_{cc}_{asn}_n1_{tail}"


def generate_rows(base, total, now, rng):
    """
    Yield fastpath rows (dicts) copying C{base} until C{total}: each copy of
    a report shifted by one random offset into the last two years.
    """
    parse = lambda text: datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S")  # noqa: E731
    reports = {}
    for row in base:
        reports.setdefault(row["report_id"], []).append(row)
    span = int(730 * 86400)
    made = 0
    copy = 0
    while made < total:
        for rid, rows in reports.items():
            anchor = parse(rows[0]["measurement_start_time"])
            target = now - datetime.timedelta(seconds=rng.randrange(span))
            delta = target - anchor
            first = rows[0]
            testname = first["test_name"].replace("_", "")
            start = parse(first["test_start_time"]) + delta
            new_rid = _report_id(start, testname, first["probe_cc"], first["probe_asn"], rng)
            for row in rows:
                if made >= total:
                    return
                out = dict(row)
                mst = parse(row["measurement_start_time"]) + delta
                received = mst + datetime.timedelta(seconds=rng.randrange(1, 600),
                                                    microseconds=rng.randrange(10**6))
                out["measurement_uid"] = _uid(received, row["probe_cc"], testname,
                                              f"{copy}-{made}")
                out["report_id"] = new_rid
                out["measurement_start_time"] = mst
                out["test_start_time"] = parse(row["test_start_time"]) + delta
                made += 1
                yield out
        copy += 1


def load(config_path, total, bodies, seed):
    """
    Fill the fastpath, jsonl and the local archive of a stopped server's
    data directory. Prints a JSON summary (uids with archived bodies).
    """
    from ooni_twisted.config import load_config
    from ooni_twisted.storage import schema
    from ooni_twisted.storage.archive import archive_path, build_jsonl_gz
    from ooni_twisted.storage.clickhouse import open_backend

    config = load_config(config_path)
    backend = open_backend(config)
    schema.migrate(backend)
    rng = random.Random(seed)
    now = datetime.datetime.utcnow().replace(microsecond=0)
    with open(shared_or_test("fastpath_rows.jsonl"), encoding="utf-8") as f:
        base = [json.loads(line) for line in f]
    columns = schema.FASTPATH_COLUMNS
    jsonl_columns = ("report_id", "input", "s3path", "linenum", "measurement_uid",
                     "byte_offset", "byte_length")
    started = time.monotonic()
    batch = []
    archived = []
    inserted = 0

    def flush():
        nonlocal inserted
        inserted += backend.insert("fastpath", columns, batch)
        # every measurement has its jsonl row, as after ingestion (objects
        # of these synthetic rows are not written: only the lookup counts)
        backend.insert("jsonl", jsonl_columns, archived)
        batch.clear()
        archived.clear()

    for n, row in enumerate(generate_rows(base, total, now, rng)):
        batch.append([row.get(c) if row.get(c) is not None else "" for c in columns])
        uid = row["measurement_uid"]
        s3path = "raw/%s/%s/%s/%s/%s_%s_%s.n1.synthetic.jsonl.gz" % (
            uid[:8], uid[8:10], row["probe_cc"], row["test_name"].replace("_", ""),
            uid[:10], row["probe_cc"], row["test_name"].replace("_", ""))
        archived.append((row["report_id"], row["input"], s3path, n % 500, uid, 0, 0))
        if len(batch) == 100_000:
            flush()
    if batch:
        flush()
    load_seconds = time.monotonic() - started

    # archived bodies
    with open(shared_or_test("measurements", "all.jsonl"), "rb") as f:
        samples = [json.loads(line) for line in f]
    samples = [m for m in samples if (m.get("report_id") or "").count("_") == 5
               and m.get("probe_cc") and m.get("probe_asn") not in (None, "AS0")
               and not isinstance(m.get("input"), list)]
    items = []
    for j in range(bodies):
        m = dict(samples[j % len(samples)])
        mst = now - datetime.timedelta(seconds=rng.randrange(730 * 86400))
        cc = m["probe_cc"]
        testname = m["test_name"].replace("_", "")
        asn = m["probe_asn"][2:]
        m["report_id"] = _report_id(mst, testname, cc, asn, rng)
        m["measurement_start_time"] = mst.strftime("%Y-%m-%d %H:%M:%S")
        line = json.dumps(m, separators=(",", ":")).encode()
        uid = _uid(mst + datetime.timedelta(seconds=5), cc, testname, f"body-{j}")
        items.append((uid, line, m, mst))
    items.sort(key=lambda item: (item[2]["probe_cc"], item[2]["test_name"], item[0]))
    jsonl_rows = []
    fast_rows = []
    objects = []
    for start in range(0, len(items), 50):
        chunk = items[start:start + 50]
        first = chunk[0]
        cc, testname = first[2]["probe_cc"], first[2]["test_name"].replace("_", "")
        s3path = archive_path(first[0][:10], cc, testname, "1", str(start // 50))
        data, spans = build_jsonl_gz([line for _, line, _, _ in chunk])
        path = os.path.join(config.archive_dir, *s3path.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        objects.append(s3path)
        for n, ((uid, line, m, mst), (offset, length)) in enumerate(zip(chunk, spans)):
            inp = m.get("input") or ""
            jsonl_rows.append((m["report_id"], inp, s3path, n, uid, offset, length))
            fast_rows.append({
                "measurement_uid": uid, "report_id": m["report_id"], "input": inp,
                "probe_cc": m["probe_cc"], "probe_asn": int(m["probe_asn"][2:]),
                "test_name": m["test_name"], "test_start_time": mst,
                "measurement_start_time": mst, "scores": "{}", "anomaly": "f",
                "confirmed": "f", "msm_failure": "f", "platform": "unset",
                "domain": inp.split("/")[2] if "://" in inp else "",
            })
    backend.insert("jsonl", jsonl_columns, jsonl_rows)
    backend.insert("fastpath", columns,
                   [[r.get(c, 0 if c in _NUMERIC else "") for c in columns] for r in fast_rows])
    count = backend.query("SELECT count() AS n FROM fastpath")[0]["n"]
    domains = backend.query(
        "SELECT domain, count() AS n FROM fastpath WHERE domain != '' "
        "GROUP BY domain ORDER BY n DESC LIMIT 20"
    )
    countries = backend.query(
        "SELECT probe_cc, count() AS n FROM fastpath GROUP BY probe_cc ORDER BY n DESC LIMIT 12"
    )
    table_parts = parts(backend)
    backend.close()
    print(json.dumps({
        "parts": table_parts, "rows": count, "inserted": inserted + len(fast_rows), "load_seconds": load_seconds,
        "body_uids": [uid for uid, _, _, _ in items], "objects": objects,
        "domains": [d["domain"] for d in domains], "countries": [c["probe_cc"] for c in countries],
        "now": now.isoformat(),
    }))


_NUMERIC = {"probe_asn", "blocking_general", "is_ssl_expected", "page_len", "page_len_ratio",
            "server_asn", "test_runtime"}


# -- measuring (this process) -------------------------------------------------------------


class Client:
    """
    Sequential requests on one keep-alive connection, timed end to end.
    """

    def __init__(self, port):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def get(self, path):
        started = time.perf_counter()
        self.connection.request("GET", path)
        response = self.connection.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        return response.status, body, elapsed

    def close(self):
        self.connection.close()


def summary(name, times, statuses):
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    bad = sum(1 for s in statuses if s != 200)
    line = (f"{name:<44} n={len(times):<4} p50 {statistics.median(times):7.2f} ms   "
            f"p99 {p99:7.2f} ms   max {ordered[-1]:7.2f} ms")
    if bad:
        line += f"   non-200: {bad}"
    return line


def run_set(client, name, paths, check=None):
    times, statuses = [], []
    for path in paths:
        status, body, elapsed = client.get(path)
        if check is not None:
            check(status, body)
        times.append(elapsed)
        statuses.append(status)
    return summary(name, times, statuses)


def search_sets(client, info, n, rng):
    now = datetime.datetime.fromisoformat(info["now"])
    countries = info["countries"]
    domains = info["domains"]
    out = []

    def day(offset_days):
        return (now - datetime.timedelta(days=offset_days)).strftime("%Y-%m-%d")

    def need_rows(status, body):
        assert status == 200, body[:200]

    # warm-up: connections of the pool, first query plans
    for cc in countries[:4]:
        client.get(f"/api/v1/measurements?probe_cc={cc}&limit=1&warm=1")

    seen = set()

    def unique(make):
        while True:
            path = make()
            if path not in seen:
                seen.add(path)
                return path

    paths = [unique(lambda: "/api/v1/measurements?probe_cc=%s&since=%s&until=%s&limit=50" % (
        rng.choice(countries), day(a := rng.randrange(30, 700)), day(a - 30)))
        for _ in range(n)]
    out.append(run_set(client, "search by cc, 30-day window", paths, need_rows))

    paths = [unique(lambda: "/api/v1/measurements?probe_cc=%s&test_name=web_connectivity"
                    "&since=%s&limit=50" % (rng.choice(countries), day(rng.randrange(1, 90))))
             for _ in range(n)]
    out.append(run_set(client, "search by cc + test_name + since", paths, need_rows))

    paths = [unique(lambda: "/api/v1/measurements?domain=%s&since=%s&until=%s&limit=50" % (
        rng.choice(domains), day(a := rng.randrange(30, 700)), day(a - 30)))
        for _ in range(n)]
    out.append(run_set(client, "search by domain, 30-day window", paths, need_rows))

    deep = f"probe_cc={countries[0]}&since={day(730)}&until={day(-1)}&limit=100"
    first = DEEP_START
    paths = [f"/api/v1/measurements?{deep}&offset={first + 100 * i}" for i in range(n)]
    out.append(run_set(client, f"deep pages by offset ({first}..{first + 100 * n})", paths,
                       need_rows))

    # the same depths walked by cursor, from the page before the first one
    status, body, _ = client.get(f"/api/v1/measurements?{deep}&offset={first - 100}&c=1")
    cursor = json.loads(body)["metadata"]["next_cursor"]
    times, statuses = [], []
    for _ in range(n):
        status, body, elapsed = client.get(f"/api/v1/measurements?{deep}&cursor={cursor}")
        times.append(elapsed)
        statuses.append(status)
        cursor = json.loads(body)["metadata"].get("next_cursor")
        if cursor is None:
            break
    out.append(summary("deep pages by cursor (same depths)", times, statuses))
    return out


def body_sets(client, info, n, rng, label):
    uids = list(info["body_uids"])
    rng.shuffle(uids)
    # warm-up (first archive client, first query plans), not measured
    warm = uids.pop()
    client.get(f"/api/v1/raw_measurement?measurement_uid={warm}")
    client.get(f"/api/v1/measurement/{warm}")
    half = min(n, len(uids) // 2)

    def is_json(status, body):
        assert status == 200, body[:200]
        json.loads(body)

    out = [
        run_set(client, f"raw_measurement by uid ({label})",
                [f"/api/v1/raw_measurement?measurement_uid={u}" for u in uids[:half]], is_json),
        run_set(client, f"measurement/<uid> ({label})",
                [f"/api/v1/measurement/{u}" for u in uids[half:2 * half]], is_json),
    ]
    return out


def merge(config_path):
    """
    Merge every part of fastpath and jsonl (OPTIMIZE ... FINAL), the state a
    long-running ClickHouse reaches by itself; prints the part counts.
    """
    from ooni_twisted.config import load_config
    from ooni_twisted.storage.clickhouse import open_backend

    backend = open_backend(load_config(config_path))
    started = time.monotonic()
    for table in ("fastpath", "jsonl"):
        backend.execute(f"OPTIMIZE TABLE {table} FINAL")
    print(json.dumps({"seconds": time.monotonic() - started, "parts": parts(backend)}))
    backend.close()


def parts(backend):
    rows = backend.query(
        "SELECT table, count() AS n FROM system.parts "
        "WHERE active AND table IN ('fastpath', 'jsonl') GROUP BY table"
    )
    return {r["table"]: r["n"] for r in rows}


def child(*args):
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *args],
        env=env(), capture_output=True, text=True, timeout=3600,
    )
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(server, info, args, label, searches=True):
    server.start()
    client = Client(server.port)
    try:
        if searches:
            for line in search_sets(client, info, args.requests, random.Random(args.seed)):
                print(f"  {line}")
        for line in body_sets(client, info, args.requests, random.Random(args.seed + 1), label):
            print(f"  {line}")
    finally:
        client.close()
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--bodies", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--load", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--merge", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        load(args.load, args.rows, args.bodies, args.seed)
        return
    if args.merge:
        merge(args.merge)
        return

    print(f"machine: {machine_note()}")
    with ApiServer(ingest_interval=3600) as server:
        started = time.monotonic()
        info = child("--load", server.config, "--rows", str(args.rows),
                     "--bodies", str(args.bodies), "--seed", str(args.seed))
        print(f"loaded {info['rows']} fastpath rows (and as many jsonl rows) in "
              f"{info['load_seconds']:.1f} s through the bulk insert path "
              f"({info['inserted'] / info['load_seconds']:.0f} fastpath rows/s, generation "
              f"included); {len(info['body_uids'])} real bodies in {len(info['objects'])} "
              f"archive objects; whole load step {time.monotonic() - started:.1f} s")

        print(f"as loaded (parts: {info['parts']}), local archive:")
        measure(server, info, args, "local archive")

        merged = child("--merge", server.config)
        print(f"after OPTIMIZE FINAL ({merged['seconds']:.1f} s; parts: {merged['parts']}), "
              f"local archive:")
        measure(server, info, args, "local archive")
        print(f"machine: {machine_note()}")

        # the same data directory, archive in S3 (moto on loopback)
        import logging

        import boto3
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        port = free_port()
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        moto.start()
        try:
            endpoint = f"http://127.0.0.1:{port}"
            s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench",
                              aws_secret_access_key="bench", region_name="us-east-1")
            s3.create_bucket(Bucket="ooni-bench")
            archive_dir = os.path.join(server.data_dir, "archive")
            for s3path in info["objects"]:
                with open(os.path.join(archive_dir, *s3path.split("/")), "rb") as f:
                    s3.put_object(Bucket="ooni-bench", Key=s3path, Body=f.read())
            s3_server = ApiServer(
                workdir=server.dir, ingest_interval=3600, s3_bucket="ooni-bench",
                s3_endpoint_url=endpoint, s3_access_key="bench", s3_secret_key="bench",
                s3_region="us-east-1",
            )
            print("merged, archive in S3 (moto server on loopback, in the benchmark process):")
            measure(s3_server, info, args, "S3, moto", searches=False)
        finally:
            moto.stop()


if __name__ == "__main__":
    main()
