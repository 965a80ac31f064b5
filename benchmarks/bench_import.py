"""
Import rate of `ooni-api-admin import-measurements`, in measurements/s.

Generates a .jsonl file of --count measurements: all.jsonl over and over,
each copy with its own report_id (so that every line is a distinct
measurement: nothing is skipped as a duplicate and no fastpath row replaces
another). Then, on a fresh data directory with the schema already created
(`init-db`, not timed), times the whole admin command -- process start,
reading, scoring, archiving, the jsonl and fastpath inserts -- and counts
the rows afterwards.

With --with-server it also times the same kind of file imported while a
server holds the data directory (the command drops sealed segments into the
server's spool and waits until the server has ingested them).

    .venv/bin/python benchmarks/bench_import.py [--count 60000]
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from probe_harness import ApiServer, machine_note, query_database  # noqa: E402
from bench_submit import measurement_file  # noqa: E402


def write_measurements(source, path, count, tag):
    """--count lines cycling through C{source}, each with a unique report_id."""
    templates = []
    with open(source, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            msm = json.loads(line)
            original = msm.get("report_id") or "noreportid"
            msm["report_id"] = "@RID@"
            text = json.dumps(msm, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            before, after = text.split(b'"@RID@"')
            templates.append((before + b'"' + original.encode() + b"-" + tag, b'"' + after + b"\n"))
    size = 0
    with open(path, "wb") as out:
        for i in range(count):
            before, after = templates[i % len(templates)]
            line = b"%s%d%s" % (before, i, after)
            out.write(line)
            size += len(line)
    return size


def count_rows(config):
    return {
        table: int(query_database(config, f"SELECT count() AS n FROM {table}")[0]["n"])
        for table in ("fastpath", "jsonl")
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=60000)
    parser.add_argument("--with-server", action="store_true")
    args = parser.parse_args()

    source = measurement_file()
    print(f"# {machine_note()}")
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        path = os.path.join(tmp, "measurements.jsonl")
        started = time.monotonic()
        size = write_measurements(source, path, args.count, b"a")
        print(
            f"# generated {args.count} measurements ({size / 1e6:.0f} MB) from {source} "
            f"in {time.monotonic() - started:.1f} s"
        )
        with ApiServer() as server:
            server.admin("init-db")
            output, seconds = server.admin("import-measurements", path)
            print("# " + output.strip().replace("\n", "\n# "))
            counts = count_rows(server.config)
            print(
                f"import-measurements (no server)  {args.count / seconds:>8.0f} measurements/s  "
                f"{size / 1e6 / seconds:.0f} MB/s  ({seconds:.1f} s wall for {args.count}; "
                f"rows: fastpath {counts['fastpath']}, jsonl {counts['jsonl']})"
            )
            if not args.with_server:
                return
            second = os.path.join(tmp, "more.jsonl")
            write_measurements(source, second, args.count, b"b")
            server.start()
            output, seconds = server.admin("import-measurements", second)
            server.stop()
            print("# " + output.strip().replace("\n", "\n# "))
            counts = count_rows(server.config)
            print(
                f"import-measurements (server)     {args.count / seconds:>8.0f} measurements/s  "
                f"{size / 1e6 / seconds:.0f} MB/s  ({seconds:.1f} s wall; rows now: "
                f"fastpath {counts['fastpath']}, jsonl {counts['jsonl']})"
            )


if __name__ == "__main__":
    main()
