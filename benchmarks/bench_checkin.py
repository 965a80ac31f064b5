"""
Check-ins per second (POST /api/v1/check-in) with the 1467-URL global test
list (and the US list) loaded.

A real server process (twistd, everything embedded) gets the CitizenLab
lists through `ooni-api-admin import-test-lists` and GeoIP from the test
MaxMind databases of tests/mmdb.py. wrk at 64 connections cycles through
probe bodies as OONI Probe sends them: some with their own country and
network, some without (located from X-Forwarded-For through the test mmdb),
some restricted to categories, battery or manual runs. Each answer carries
up to 100 prioritised URLs and a report id per test.

The ceiling is the bare-Klein hello server under the same wrk settings:
GET /, and POST with the same script and bodies.

    .venv/bin/python benchmarks/bench_checkin.py [--duration 15] [--connections 64]
"""

import argparse
import json
import os
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from probe_harness import (  # noqa: E402
    ROOT,
    SHARED,
    ApiServer,
    HelloServer,
    describe,
    lua_string,
    machine_note,
    run_wrk,
)

sys.path.insert(0, ROOT)
from tests.mmdb import build_test_mmdbs  # noqa: E402

COMMON = {
    "on_wifi": True,
    "platform": "android",
    "software_name": "ooniprobe-android",
    "software_version": "3.8.2",
}

#: (body, X-Forwarded-For or None)
PROBES = [
    (dict(COMMON, probe_cc="US", probe_asn="AS7922", run_type="timed", charging=True,
          web_connectivity={"category_codes": []}), None),
    (dict(COMMON, probe_cc="IT", probe_asn="AS30722", run_type="timed", charging=True), None),
    ({}, "192.33.4.12"),  # located: US AS2149
    (dict(COMMON, probe_cc="DE", probe_asn="AS3320", run_type="manual", charging=False,
          web_connectivity={"category_codes": ["NEWS", "POLR", "HUMR"]}), None),
    (dict(COMMON, run_type="timed", charging=False), "5.6.7.8"),  # located: DE
    (dict(COMMON, probe_cc="BR", probe_asn="AS8167", run_type="timed", charging=True), None),
    (dict(COMMON, run_type="timed", charging=True), "8.8.8.8"),  # located: US
    (dict(COMMON, probe_cc="US", probe_asn="AS20115", run_type="manual", charging=True,
          web_connectivity={"category_codes": "NEWS,CULTR"}), None),
]

LUA = """
local items = {
%s
}
local n = #items
local counter = 0

function request()
  counter = counter + 1
  local item = items[(counter %% n) + 1]
  local headers = {["Content-Type"] = "application/json"}
  if item[2] ~= "" then
    headers["X-Forwarded-For"] = item[2]
  end
  return wrk.format("POST", "/api/v1/check-in", headers, item[1])
end
"""


def test_lists_dir():
    shared = os.path.join(SHARED, "citizenlab", "test-lists")
    if os.path.isdir(shared):
        return shared
    return os.path.join(ROOT, "tests", "data", "test-lists")


def write_script(directory):
    rows = ",\n".join(
        "{%s, %s}" % (lua_string(json.dumps(body).encode()), lua_string((xff or "").encode()))
        for body, xff in PROBES
    )
    path = os.path.join(directory, "checkin.lua")
    with open(path, "w", encoding="ascii") as f:
        f.write(LUA % rows)
    return path


def check_answers(url):
    """Every probe body gets a check-in with URLs (the load is not measuring errors)."""
    sizes = []
    for body, xff in PROBES:
        headers = {"Content-Type": "application/json"}
        if xff:
            headers["X-Forwarded-For"] = xff
        request = urllib.request.Request(
            url + "/api/v1/check-in", data=json.dumps(body).encode(), headers=headers
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        urls = answer["tests"]["web_connectivity"]["urls"]
        # probe_cc/asn of the answer are where the address is (section 9.4)
        if not urls or (xff and answer["probe_cc"] == "ZZ"):
            raise RuntimeError(f"unexpected check-in answer for {body}: {answer}")
        sizes.append(len(urls))
    return sizes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    args = parser.parse_args()

    lists = test_lists_dir()
    print(f"# {machine_note()}")
    wrk = dict(connections=args.connections, threads=args.threads, duration=args.duration)
    with tempfile.TemporaryDirectory(prefix="bench-checkin-") as tmp:
        script = write_script(tmp)
        cc_db, asn_db = build_test_mmdbs(tmp)
        with HelloServer() as hello:
            get = run_wrk(hello.url + "/", pid=hello.proc.pid, **wrk)
            post = run_wrk(hello.url, script=script, pid=hello.proc.pid, **wrk)
        print(describe("klein hello GET", get))
        print(describe("klein hello POST (bodies)", post))

        with ApiServer(geoip_cc_db=cc_db, geoip_asn_db=asn_db) as server:
            output, seconds = server.admin("import-test-lists", lists)
            print(f"# import-test-lists {lists}: {output.strip()} ({seconds:.1f} s)")
            server.start()
            sizes = check_answers(server.url)
            print(f"# URLs per answer for the {len(PROBES)} probe bodies: {sizes}")
            pid = server.proc.pid
            run_wrk(server.url, script=script, pid=pid, **dict(wrk, duration=args.warmup))
            result = run_wrk(server.url, script=script, pid=pid, **wrk)
            print(describe("POST /api/v1/check-in", result))
        print(
            f"# check-in: {result['rps']:.0f}/s, p99 {result['p99']:.1f} ms; ceiling hello GET "
            f"{get['rps']:.0f}/s, hello POST {post['rps']:.0f}/s "
            f"({100 * result['rps'] / post['rps']:.0f}% of it)"
        )


if __name__ == "__main__":
    main()
