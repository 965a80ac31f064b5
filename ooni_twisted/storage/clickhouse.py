"""
One small interface to ClickHouse SQL, with two backends.

SQL is written once, with ClickHouse's typed placeholders C{{name:Type}}.
L{ChdbBackend} runs it in-process (chDB, one connection per thread: a shared
connection mixed up rows between threads); L{DriverBackend} runs it on a
ClickHouse server through clickhouse-driver. Both are synchronous; L{ClickHouse}
puts every call on a bounded thread pool so the reactor never waits for SQL.
"""

import datetime
import json
import math
import os
import re
import threading
from urllib.parse import urlsplit

from twisted.internet.threads import deferToThreadPool
from zope.interface import Interface, implementer


class ClickHouseError(Exception):
    """
    A query failed; the message is ClickHouse's first line.
    """


class QueryTimeout(ClickHouseError):
    """
    A query ran past the configured time limit.
    """


class DataDirectoryBusy(ClickHouseError):
    """
    Another process holds the embedded database directory.
    """


_PLACEHOLDER = re.compile(r"\{(\w+):([^{}]+(?:\([^()]*(?:\([^()]*\))?[^()]*\))?)\}")


class ISyncClickHouse(Interface):
    """
    Blocking access to ClickHouse; call only from a worker thread.
    """

    def query(sql, params=None):
        """
        Run a SELECT; return a list of dicts keyed by column name.
        """

    def query_rows(sql, params=None):
        """
        Run a SELECT; return (column names, list of tuples).
        """

    def execute(sql, params=None):
        """
        Run a statement that returns nothing (DDL, INSERT ... SELECT).
        """

    def insert(table, columns, rows):
        """
        Insert many rows (sequences in C{columns} order); return their count.
        """

    def close():
        """
        Release every connection.
        """


# --- value encoding ---------------------------------------------------------


def _escape_tsv(text):
    return (
        text.replace("\\", "\\\\")
        .replace("\t", "\\t")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\0", "\\0")
    )


def _literal(value):
    """
    A ClickHouse SQL literal for C{value} (used inside array parameters).
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, datetime.datetime):
        return "'" + value.strftime("%Y-%m-%d %H:%M:%S.%f") + "'"
    if isinstance(value, datetime.date):
        return "'" + value.isoformat() + "'"
    if isinstance(value, (list, tuple, set, frozenset)):
        return "[" + ",".join(_literal(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return "'" + text + "'"


def encode_param(value):
    """
    Encode a Python value as chDB expects a C{{name:Type}} parameter: text
    escaped like a TSV field, None as C{\\N}, arrays as ClickHouse literals.
    """
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple, set, frozenset)):
        return _literal(list(value))
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        if value.microsecond:
            return value.strftime("%Y-%m-%d %H:%M:%S.%f")
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, datetime.date):
        return value.isoformat()
    return _escape_tsv(str(value))


def _strip_type(type_name):
    """
    Peel Nullable(...) and LowCardinality(...) wrappers off a type name.
    """
    while True:
        for wrapper in ("Nullable(", "LowCardinality("):
            if type_name.startswith(wrapper):
                type_name = type_name[len(wrapper) : -1]
                break
        else:
            return type_name


def _converter(type_name):
    """
    A function turning one JSON-decoded value of C{type_name} into Python.
    """
    base = _strip_type(type_name)
    if base.startswith("DateTime"):

        def to_datetime(value):
            if value is None:
                return None
            parsed = datetime.datetime.fromisoformat(value)
            return parsed.replace(tzinfo=None)

        return to_datetime
    if base.startswith("Date"):

        def to_date(value):
            if value is None:
                return None
            return datetime.date.fromisoformat(value)

        return to_date
    if base.startswith("FixedString"):

        def to_text(value):
            return None if value is None else value.rstrip("\0")

        return to_text
    if base.startswith("Array("):
        inner = _converter(base[len("Array(") : -1])
        if inner is None:
            return None

        def to_list(value):
            return None if value is None else [inner(v) for v in value]

        return to_list
    if base.startswith(("Float", "Decimal")):

        def to_float(value):
            if value is None:
                return None
            return float(value)

        return to_float
    if base.startswith(("UInt", "Int")):

        def to_int(value):
            if value is None:
                return None
            return int(value)

        return to_int
    return None


def _decode_json_compact(payload):
    document = json.loads(payload)
    names = [column["name"] for column in document["meta"]]
    converters = [(i, _converter(c["type"])) for i, c in enumerate(document["meta"])]
    converters = [(i, f) for i, f in converters if f is not None]
    rows = document["data"]
    if converters:
        for row in rows:
            for i, convert in converters:
                row[i] = convert(row[i])
    return names, [tuple(row) for row in rows]


_CHDB_SETTINGS = {
    "output_format_json_quote_64bit_integers": 0,
    "output_format_json_quote_64bit_floats": 0,
    "output_format_json_quote_decimals": 0,
    "output_format_json_quote_denormals": 0,
    "date_time_output_format": "iso",
}


def _settings_clause(settings):
    return ", ".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in settings.items())


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else error.__class__.__name__


def _is_timeout(message):
    return "TIMEOUT_EXCEEDED" in message or "Timeout exceeded" in message


def _lock_holder(path):
    """
    A short description of the process that holds chDB's lock under C{path}.
    """
    status = os.path.join(path, "status")
    try:
        with open(status, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("PID:"):
                    return f"process {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return "another process"


def directory_holder(path):
    """
    Who holds the chDB directory C{path}, or None when it is free.
    """
    if _directory_locked(path):
        return _lock_holder(path)
    return None


def _directory_locked(path):
    """
    True when another live process holds the chDB lock of C{path}.

    chDB keeps a C{status} file with its PID under a lock; a second opener
    fails with an unhelpful error, so look first.
    """
    import fcntl

    status = os.path.join(path, "status")
    if not os.path.exists(status):
        return False
    try:
        fd = os.open(status, os.O_RDWR)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


@implementer(ISyncClickHouse)
class ChdbBackend:
    """
    Embedded ClickHouse under one directory, one chDB connection per thread.

    chDB is imported here, when the first connection opens, never at module
    import: it hangs in a process that forked after importing it, and twistd
    forks when it daemonizes.
    """

    def __init__(self, path, max_execution_time=None):
        self.path = os.path.abspath(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections = []
        self._closed = False
        self._settings = dict(_CHDB_SETTINGS)
        if max_execution_time:
            self._settings["max_execution_time"] = max_execution_time
        os.makedirs(self.path, exist_ok=True)
        if _directory_locked(self.path):
            raise DataDirectoryBusy(
                f"the database directory {self.path} is in use by "
                f"{_lock_holder(self.path)} (a running server?)"
            )
        self._connection()

    def _connection(self):
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if self._closed:
                raise ClickHouseError("the database is closed")
            import chdb

            try:
                connection = chdb.connect(self.path)
            except Exception as e:
                if _directory_locked(self.path):
                    raise DataDirectoryBusy(
                        f"the database directory {self.path} is in use by "
                        f"{_lock_holder(self.path)} (a running server?)"
                    )
                raise ClickHouseError(
                    f"cannot open the database in {self.path}: {_first_line(e)}"
                )
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def _run(self, sql, params, fmt):
        connection = self._connection()
        text = f"{sql}\nSETTINGS {_settings_clause(self._settings)}" if fmt else sql
        encoded = None
        if params:
            encoded = {k: encode_param(v) for k, v in params.items()}
        try:
            if fmt:
                return connection.query(text, fmt, params=encoded)
            return connection.query(text, params=encoded) if encoded else connection.query(text)
        except Exception as e:
            self._discard_leftovers(connection)
            message = _first_line(e)
            if _is_timeout(message):
                raise QueryTimeout(message)
            raise ClickHouseError(message)

    @staticmethod
    def _discard_leftovers(connection):
        """
        A query that failed part-way through its output leaves the rest
        in the connection, to be glued to the next answer: read it away.
        """
        try:
            connection.query("SELECT 1", "JSONCompact")
        except Exception:
            pass

    def query_rows(self, sql, params=None):
        result = self._run(sql, params, "JSONCompact")
        payload = result.bytes()
        if not payload:
            return [], []
        return _decode_json_compact(payload)

    def query(self, sql, params=None):
        names, rows = self.query_rows(sql, params)
        return [dict(zip(names, row)) for row in rows]

    def execute(self, sql, params=None):
        self._run(sql, params, None)

    def insert(self, table, columns, rows):
        """
        Bulk insert through an Arrow table, ClickHouse's fastest input path
        here (about ten times VALUES).
        """
        import pyarrow as pa

        rows = list(rows)
        if not rows:
            return 0
        arrays = {}
        for i, column in enumerate(columns):
            values = [row[i] for row in rows]
            try:
                arrays[column] = pa.array(values)
            except (OverflowError, pa.ArrowInvalid):
                # integers past int64 need an explicit unsigned type
                arrays[column] = pa.array(values, type=pa.uint64())
        arrow_table = pa.table(arrays)  # noqa: F841 - read by chDB by name
        column_list = ", ".join(f"`{c}`" for c in columns)
        sql = (
            f"INSERT INTO {table} ({column_list}) "
            f"SELECT {column_list} FROM Python(arrow_table)"
        )
        connection = self._connection()
        try:
            connection.query(sql)
        except Exception as e:
            raise ClickHouseError(_first_line(e))
        return len(rows)

    def close(self):
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for connection in connections:
            try:
                connection.close()
            except Exception:
                pass


def _driver_sql(sql, params):
    """
    Turn C{{name:Type}} placeholders into clickhouse-driver's client-side
    C{%(name)s}, cast to the declared type, escaping literal percent signs.
    """
    if not params:
        return sql
    sql = sql.replace("%", "%%")
    return _PLACEHOLDER.sub(lambda m: f"CAST(%({m.group(1)})s AS {m.group(2)})", sql)


def _driver_params(params):
    if not params:
        return params
    return {k: list(v) if isinstance(v, (tuple, set, frozenset)) else v for k, v in params.items()}


@implementer(ISyncClickHouse)
class DriverBackend:
    """
    A ClickHouse server over the native protocol, one client per thread.
    """

    def __init__(self, url, max_execution_time=None):
        parts = urlsplit(url)
        self._kwargs = dict(
            host=parts.hostname,
            port=parts.port or 9000,
            database=(parts.path or "/default").lstrip("/") or "default",
            user=parts.username or "default",
            password=parts.password or "",
        )
        self._settings = {}
        if max_execution_time:
            self._settings["max_execution_time"] = int(math.ceil(max_execution_time))
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients = []

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            from clickhouse_driver import Client

            client = Client(settings=self._settings, **self._kwargs)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _execute(self, sql, params, **kwargs):
        try:
            return self._client().execute(
                _driver_sql(sql, params), _driver_params(params) or None, **kwargs
            )
        except Exception as e:
            message = _first_line(e)
            if _is_timeout(message):
                raise QueryTimeout(message)
            raise ClickHouseError(message)

    def query_rows(self, sql, params=None):
        rows, types = self._execute(sql, params, with_column_types=True)
        return [name for name, _ in types], [tuple(r) for r in rows]

    def query(self, sql, params=None):
        names, rows = self.query_rows(sql, params)
        return [dict(zip(names, row)) for row in rows]

    def execute(self, sql, params=None):
        self._execute(sql, params)

    def insert(self, table, columns, rows):
        rows = [tuple(r) for r in rows]
        if not rows:
            return 0
        column_list = ", ".join(f"`{c}`" for c in columns)
        try:
            self._client().execute(f"INSERT INTO {table} ({column_list}) VALUES", rows)
        except Exception as e:
            raise ClickHouseError(_first_line(e))
        return len(rows)

    def close(self):
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.disconnect()
            except Exception:
                pass


def open_backend(config):
    """
    The backend the configuration asks for: chDB when C{clickhouse_url} is
    empty, else a server.
    """
    if config.clickhouse_url:
        return DriverBackend(config.clickhouse_url, config.query_timeout)
    return ChdbBackend(config.clickhouse_dir, config.query_timeout)


class ClickHouse:
    """
    The asynchronous face of a backend: every call runs on C{threadpool}
    and returns a Deferred.
    """

    def __init__(self, backend, reactor, threadpool):
        self.backend = backend
        self._reactor = reactor
        self._pool = threadpool

    def run(self, function, *args, **kwargs):
        """
        Run C{function(backend, *args, **kwargs)} on the pool, for work that
        needs several statements in one thread.
        """
        return deferToThreadPool(
            self._reactor, self._pool, function, self.backend, *args, **kwargs
        )

    def query(self, sql, params=None):
        return deferToThreadPool(self._reactor, self._pool, self.backend.query, sql, params)

    def query_rows(self, sql, params=None):
        return deferToThreadPool(
            self._reactor, self._pool, self.backend.query_rows, sql, params
        )

    def execute(self, sql, params=None):
        return deferToThreadPool(self._reactor, self._pool, self.backend.execute, sql, params)

    def insert(self, table, columns, rows):
        return deferToThreadPool(
            self._reactor, self._pool, self.backend.insert, table, columns, rows
        )
