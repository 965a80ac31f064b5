"""
The ClickHouse layer against a real chDB in a temporary folder.
"""

import datetime
import os
import subprocess
import sys
import threading

from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from ooni_twisted.storage import schema
from ooni_twisted.storage.clickhouse import (
    ChdbBackend,
    ClickHouse,
    DataDirectoryBusy,
    QueryTimeout,
    _driver_sql,
    encode_param,
)

from .support import deferred_test

TRICKY = [
    "back\\slash",
    "tab\there",
    "new\nline",
    "quote ' and \" both",
    "'; DROP TABLE t; --",
    "\\N",
    "%s %(x)s",
    "{x:String}",
    "ünïcødé ✓",
    "",
]

_TABLE = (
    "CREATE TABLE IF NOT EXISTS t (k UInt32, s String, n Nullable(String), "
    "a Array(String), d DateTime, f FixedString(8)) ENGINE = MergeTree ORDER BY k"
)


class ChdbBackendTests(unittest.TestCase):
    def setUp(self):
        self.path = os.path.abspath(self.mktemp())
        self.backend = ChdbBackend(self.path, max_execution_time=1)
        self.addCleanup(self.backend.close)
        self.backend.execute(_TABLE)

    def test_parameters_round_trip(self):
        """Strings with escapes, NULLs and arrays survive bound parameters unchanged."""
        for k, text in enumerate(TRICKY):
            self.backend.execute(
                "INSERT INTO t SELECT {k:UInt32}, {s:String}, {n:Nullable(String)}, "
                "{a:Array(String)}, {d:DateTime}, {f:String}",
                {"k": k, "s": text, "n": None if k % 2 else text, "a": [text, "x\\"],
                 "d": datetime.datetime(2021, 7, 9, 1, 2, 3), "f": "ab"},
            )
        rows = self.backend.query("SELECT * FROM t ORDER BY k")
        self.assertEqual([r["s"] for r in rows], TRICKY)
        self.assertEqual([r["n"] for r in rows], [None if k % 2 else t for k, t in enumerate(TRICKY)])
        self.assertEqual([r["a"] for r in rows], [[t, "x\\"] for t in TRICKY])
        self.assertEqual(rows[0]["d"], datetime.datetime(2021, 7, 9, 1, 2, 3))
        self.assertEqual(rows[0]["f"], "ab")
        for k, text in enumerate(TRICKY):
            found = self.backend.query("SELECT k FROM t WHERE s = {s:String}", {"s": text})
            self.assertEqual(found, [{"k": k}])
        self.assertEqual(self.backend.query("SELECT count() AS c FROM t")[0]["c"], len(TRICKY))

    def test_array_filter(self):
        """An array parameter works with IN / has()."""
        self.backend.insert("t", ["k", "s", "n", "a", "d", "f"], [
            (1, "a'b", None, [], datetime.datetime(2020, 1, 1), "x"),
            (2, "c\\d", "n", ["q"], datetime.datetime(2020, 1, 2), "y"),
            (3, "e", "n", [], datetime.datetime(2020, 1, 3), "z"),
        ])
        rows = self.backend.query(
            "SELECT k FROM t WHERE has({wanted:Array(String)}, s) ORDER BY k",
            {"wanted": ["a'b", "c\\d"]},
        )
        self.assertEqual(rows, [{"k": 1}, {"k": 2}])

    def test_bulk_insert_types(self):
        """Bulk inserts keep types: datetimes, NULLs, arrays, big integers."""
        self.backend.execute(
            "CREATE TABLE big (u UInt64, x Float32, d DateTime) ENGINE = MergeTree ORDER BY u"
        )
        when = datetime.datetime(2024, 1, 1, 0, 0, 1)
        self.backend.insert("big", ["u", "x", "d"], [(2**63 + 5, 1.5, when)])
        self.assertEqual(self.backend.query("SELECT * FROM big"), [{"u": 2**63 + 5, "x": 1.5, "d": when}])

    def test_connection_per_thread(self):
        """Concurrent threads each get their own answers, never another thread's rows."""
        errors = []

        def worker(number):
            try:
                for _ in range(20):
                    rows = self.backend.query("SELECT {v:UInt32} AS v", {"v": number})
                    if rows != [{"v": number}]:
                        errors.append((number, rows))
            except Exception as e:
                errors.append((number, e))

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(errors, [])

    def test_timeout(self):
        """A query running past max_execution_time raises QueryTimeout."""
        self.assertRaises(
            QueryTimeout,
            self.backend.query,
            "SELECT sleepEachRow(0.5) FROM numbers(6) SETTINGS max_block_size = 1",
        )

    def test_query_after_timeout(self):
        """A query that timed out mid-output leaves nothing behind for the next one."""
        self.assertRaises(
            QueryTimeout,
            self.backend.query,
            "SELECT number, sleepEachRow(0.3) FROM numbers(20) SETTINGS max_block_size = 1",
        )
        self.assertEqual(self.backend.query("SELECT 1 AS x"), [{"x": 1}])

    def test_schema_idempotent(self):
        """Migrating twice applies nothing the second time and keeps the lookups."""
        self.assertEqual(schema.migrate(self.backend), [1])
        self.assertEqual(schema.migrate(self.backend), [])
        rows = self.backend.query(
            "SELECT joinGet('test_groups', 'test_group', 'web_connectivity') AS g"
        )
        self.assertEqual(rows, [{"g": "websites"}])

    def test_busy_directory(self):
        """A second process opening the same folder gets a clear error."""
        code = (
            "import sys\n"
            "from ooni_twisted.storage.clickhouse import ChdbBackend, DataDirectoryBusy\n"
            "try:\n"
            f"    ChdbBackend({self.path!r})\n"
            "except DataDirectoryBusy as e:\n"
            "    print(e); sys.exit(3)\n"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 3, result.stderr)
        self.assertIn("is in use by process", result.stdout)
        self.assertIn(self.path, result.stdout)


class AsyncFacadeTests(unittest.TestCase):
    @deferred_test
    async def test_queries_run_in_pool(self):
        """The facade runs queries off the reactor thread and returns their rows."""
        backend = ChdbBackend(os.path.abspath(self.mktemp()))
        self.addCleanup(backend.close)
        pool = ThreadPool(minthreads=1, maxthreads=2)
        pool.start()
        self.addCleanup(pool.stop)
        db = ClickHouse(backend, reactor, pool)
        seen = []

        def which_thread(b):
            seen.append(threading.current_thread())
            return b.query("SELECT 41 + 1 AS x")

        self.assertEqual(await db.run(which_thread), [{"x": 42}])
        self.assertNotEqual(seen[0], threading.main_thread())
        self.assertEqual(await db.query("SELECT {a:String} AS a", {"a": "x'y"}), [{"a": "x'y"}])


class EncodingTests(unittest.SynchronousTestCase):
    def test_encode_param(self):
        """Parameters are escaped as TSV fields; None is \\N; arrays are literals."""
        self.assertEqual(encode_param("a\\b\tc\nd"), "a\\\\b\\tc\\nd")
        self.assertEqual(encode_param(None), "\\N")
        self.assertEqual(encode_param(["a'b", None, 3]), "['a\\'b',NULL,3]")
        self.assertEqual(encode_param(datetime.datetime(2021, 1, 2, 3, 4, 5)), "2021-01-02 03:04:05")

    def test_driver_sql(self):
        """Typed placeholders become driver parameters cast to their type; % is escaped."""
        self.assertEqual(
            _driver_sql("SELECT {a:String} WHERE x LIKE '%y' AND has({b:Array(UInt32)}, z)", {"a": 1, "b": [1]}),
            "SELECT CAST(%(a)s AS String) WHERE x LIKE '%%y' AND has(CAST(%(b)s AS Array(UInt32)), z)",
        )
        self.assertEqual(_driver_sql("SELECT '%'", None), "SELECT '%'")


class DriverBackendTests(unittest.TestCase):
    """
    The clickhouse-driver backend against a real ClickHouse server.
    """

    def setUp(self):
        from . import chserver

        if not chserver.available():
            raise unittest.SkipTest("clickhouse-server is not installed")
        process, url = chserver.start(self.mktemp())
        self.addCleanup(chserver.stop, process)
        from ooni_twisted.storage.clickhouse import DriverBackend

        self.backend = DriverBackend(url, max_execution_time=5)
        self.addCleanup(self.backend.close)
        self.backend.execute(
            "CREATE TABLE t (k UInt32, s String, n Nullable(String), a Array(String)) "
            "ENGINE = MergeTree ORDER BY k"
        )

    def test_parameters_round_trip(self):
        """Strings with escapes, NULLs and arrays survive bound parameters unchanged."""
        for k, text in enumerate(TRICKY):
            self.backend.execute(
                "INSERT INTO t SELECT {k:UInt32}, {s:String}, {n:Nullable(String)}, {a:Array(String)}",
                {"k": k, "s": text, "n": None if k % 2 else text, "a": [text, "x\\"]},
            )
        rows = self.backend.query("SELECT * FROM t ORDER BY k")
        self.assertEqual([r["s"] for r in rows], TRICKY)
        self.assertEqual([r["n"] for r in rows], [None if k % 2 else t for k, t in enumerate(TRICKY)])
        self.assertEqual([r["a"] for r in rows], [[t, "x\\"] for t in TRICKY])
        for k, text in enumerate(TRICKY):
            found = self.backend.query("SELECT k FROM t WHERE s = {s:String}", {"s": text})
            self.assertEqual(found, [{"k": k}])
        self.assertEqual(self.backend.query("SELECT count() AS c FROM t")[0]["c"], len(TRICKY))

    def test_bulk_insert_and_like(self):
        """Bulk inserts work, and a literal % next to parameters is kept."""
        self.backend.insert("t", ["k", "s", "n", "a"], [(1, "50%", None, ["q"]), (2, "x", "y", [])])
        rows = self.backend.query(
            "SELECT k FROM t WHERE s LIKE '5%' AND k > {k:UInt32}", {"k": 0}
        )
        self.assertEqual(rows, [{"k": 1}])
