"""
Durable measurement submissions per second (POST /report/<report_id>).

A real server process (twistd, everything embedded, ingestion running as in
production) is loaded by wrk at 64 connections with the real bodies of
all.jsonl: a Lua script cycles through them, giving every request a fresh
new-format report_id (test name, cc and asn of its measurement) that is also
spliced into the body, so that every submission is a distinct measurement
(no deduplication shortcut at ingestion). A 200 is sent only once the body
is fsynced in the spool, so acknowledged requests/s = durable submissions/s.

Afterwards the spool is left to drain, the server stopped, and the rows in
fastpath and jsonl are counted against the acknowledgements.

The ceiling is the bare-Klein hello server under the same wrk settings:
GET /, and POST with the same script and bodies.

    .venv/bin/python benchmarks/bench_submit.py [--duration 15] [--connections 64]
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from probe_harness import (  # noqa: E402
    ROOT,
    SHARED,
    ApiServer,
    HelloServer,
    describe,
    lua_string,
    machine_note,
    query_database,
    run_wrk,
)

from ooni_twisted.probes.ids import normalize_probe_asn, normalize_probe_cc  # noqa: E402

ENVELOPE_PREFIX = b'{"format":"json","content":'


def measurement_file():
    shared = os.path.join(SHARED, "measurements", "all.jsonl")
    if os.path.exists(shared):
        return shared
    return os.path.join(ROOT, "tests", "data", "measurements", "all.jsonl")


def templates(path):
    """
    (report_id head, body before the report_id, body after it) per
    measurement the server stores: all of all.jsonl but the one without a
    country and network (a ZZ/AS0 report is acknowledged with {} and not
    stored, section 4.6).
    """
    out, skipped = [], 0
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            msm = json.loads(line)
            cc = normalize_probe_cc(msm.get("probe_cc"))
            asn = normalize_probe_asn(msm.get("probe_asn"))
            if cc == "ZZ" or asn == 0:
                skipped += 1
                continue
            testname = msm["test_name"].lower().replace("_", "")
            head = f"20250101T000000Z_{testname}_{cc}_{asn}_n1_".encode("ascii")
            msm["report_id"] = "@RID@"
            text = json.dumps(msm, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            before, after = text.split(b'"@RID@"')
            out.append((head, ENVELOPE_PREFIX + before + b'"', b'"' + after + b"}"))
    return out, skipped


LUA = """
local items = {
%s
}
local n = #items
local counter = 0
local headers = {["Content-Type"] = "application/json"}
local threads = 0
local nonce = "00"

function init(args)
  nonce = args[1] or "00"
end

function setup(thread)
  threads = threads + 1
  thread:set("tag", threads)
end

function request()
  counter = counter + 1
  local item = items[(counter %% n) + 1]
  local rid = item[1] .. nonce .. string.format("%%02d%%012d", tag or 0, counter)
  return wrk.format("POST", "/report/" .. rid, headers, item[2] .. rid .. item[3])
end
"""


def write_script(items, directory):
    rows = ",\n".join(
        "{%s, %s, %s}" % (lua_string(h), lua_string(b), lua_string(a)) for h, b, a in items
    )
    path = os.path.join(directory, "submit.lua")
    with open(path, "w", encoding="ascii") as f:
        f.write(LUA % rows)
    return path


def wait_drained(server, deadline):
    """Seconds until the spool holds no segment (None: not within deadline)."""
    segments = os.path.join(server.data_dir, "spool", "segments")
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        if not [n for n in os.listdir(segments) if n.endswith((".seg", ".active"))]:
            return time.monotonic() - started
        time.sleep(0.2)
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--ingest-interval", default="2")
    parser.add_argument("--skip-paused", action="store_true",
                        help="skip the run with ingestion paused")
    args = parser.parse_args()

    path = measurement_file()
    items, skipped = templates(path)
    sizes = sorted(len(b) + len(a) + 40 for _, b, a in items)
    print(f"# {machine_note()}")
    print(
        f"# bodies: {len(items)} measurements of {path} ({skipped} ZZ/AS0 left out), "
        f"median {sizes[len(sizes) // 2]} B, mean {sum(sizes) // len(sizes)} B, max {sizes[-1]} B"
    )
    wrk = dict(connections=args.connections, threads=args.threads, duration=args.duration)
    with tempfile.TemporaryDirectory(prefix="bench-submit-") as tmp:
        script = write_script(items, tmp)
        with HelloServer() as hello:
            get = run_wrk(hello.url + "/", pid=hello.proc.pid, **wrk)
            post = run_wrk(hello.url, script=script, pid=hello.proc.pid, **wrk)
        print(describe("klein hello GET", get))
        print(describe("klein hello POST (bodies)", post))

        with ApiServer(ingest_interval=args.ingest_interval) as server:
            server.start()
            pid = server.proc.pid
            warm = run_wrk(server.url, script=script, pid=pid, script_args=["wa"],
                           **dict(wrk, duration=args.warmup))
            result = run_wrk(server.url, script=script, pid=pid, script_args=["ra"], **wrk)
            print(describe("POST /report/<id>", result))
            acked = sum(r["requests"] - r["non2xx"] for r in (warm, result))
            drained = wait_drained(server, 600)
            server.stop()
            counts = count_rows(server)
        mb = sum(sizes) / len(sizes) * result["rps"] / 1e6
        print(
            f"# durable: {result['rps']:.0f} submissions/s (~{mb:.0f} MB/s of bodies) with "
            f"ingestion running every {args.ingest_interval} s in the same process; ceiling "
            f"hello GET {get['rps']:.0f}/s, hello POST {post['rps']:.0f}/s "
            f"({100 * result['rps'] / post['rps']:.0f}% of it)"
        )
        print(
            f"# acknowledged by wrk (warm-up + run, 2xx): {acked}; after the load the "
            f"spool drained in {drained if drained is None else round(drained, 1)} s; "
            f"rows: fastpath {counts['fastpath']}, jsonl {counts['jsonl']} "
            f"(>= acknowledged: requests in flight when wrk stops are stored too)"
        )
        if args.skip_paused:
            return
        # The same with ingestion paused: the submission path alone (spool
        # fsync + acknowledgement), then the server's ingestion rate on the
        # backlog it left.
        with ApiServer(ingest_interval=3600) as server:
            server.start()
            pid = server.proc.pid
            run_wrk(server.url, script=script, pid=pid, script_args=["wb"],
                    **dict(wrk, duration=args.warmup))
            paused = run_wrk(server.url, script=script, pid=pid, script_args=["rb"], **wrk)
            print(describe("POST /report/<id> (paused)", paused))
            server.stop()
            with ApiServer(workdir=server.dir, ingest_interval="0.2") as again:
                started = time.monotonic()
                again.start()  # its first pass starts with it
                drained = wait_drained(again, 1200)
                backlog_s = None if drained is None else time.monotonic() - started
                again.stop()
                counts = count_rows(again)
        print(
            f"# submission path alone: {paused['rps']:.0f} submissions/s; the restarted "
            f"server then ingested the backlog of {counts['fastpath']} measurements in "
            + (f"{backlog_s:.1f} s ({counts['fastpath'] / backlog_s:.0f} measurements/s, "
               "counted from the process start)" if backlog_s else "more than 1200 s")
        )


def count_rows(server):
    return {
        table: int(query_database(server.config, f"SELECT count() AS n FROM {table}")[0]["n"])
        for table in ("fastpath", "jsonl")
    }

if __name__ == "__main__":
    main()
