"""
Helpers shared by the tests: configurations in temporary folders and a real
server on a loopback port.
"""

import json
import os

from treq.client import HTTPClient
from twisted.internet import reactor, task
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.internet.defer import ensureDeferred
from twisted.python.filepath import FilePath

from ooni_twisted.config import parse_config
from ooni_twisted.service import ApiService

DATA = FilePath(__file__).sibling("data")

JWT_KEY = "test-jwt-key-of-at-least-32-bytes-long!"
HASH_KEY = "test-account-hashing-key"


def make_config(base_dir, **overrides):
    """
    A configuration rooted in C{base_dir}, listening on a free loopback port.

    @param overrides: key -> text, as they would be written in the INI file.
    """
    values = {
        "listen": "tcp:0:interface=127.0.0.1",
        "data_dir": "var",
        "jwt_encryption_key": JWT_KEY,
        "account_id_hashing_key": HASH_KEY,
        "collector_id": "1",
        "clickhouse_threads": "4",
        "ingest_interval": "0.2",
        "tor_targets": DATA.child("tor_targets.json").path,
        "psiphon_config": DATA.child("psiphon_config.json").path,
    }
    values.update(overrides)
    os.makedirs(base_dir, exist_ok=True)
    return parse_config(values, base_dir, source="test")


async def start_server(testcase, config):
    """
    Start a whole server for C{config} on the real reactor; stop it when
    the test ends. Returns the L{ApiService}; its base URL is
    C{server.test_url} and C{server.client} is a L{TestClient} for it.
    """
    server = ApiService(config, reactor)
    server.startService()
    testcase.addCleanup(server.stopService)
    await server.ready
    server.test_url = f"http://127.0.0.1:{server.http_port.getHost().port}"
    server.client = TestClient(testcase, server.test_url)
    return server


def http_client(testcase):
    """
    The test's HTTP client; its connections are closed when the test ends
    (before the servers stop), so trial finds a clean reactor.
    """
    client = getattr(testcase, "_http_client", None)
    if client is None:
        pool = HTTPConnectionPool(reactor, persistent=True)

        async def close():
            await pool.closeCachedConnections()
            # Let the server side see the closed connections.
            await task.deferLater(reactor, 0.05, lambda: None)

        testcase.addCleanup(lambda: ensureDeferred(close()))
        client = HTTPClient(Agent(reactor, pool=pool))
        testcase._http_client = client
    return client


class TestClient:
    """
    HTTP against one server for one test, on the test's connection pool.
    Each call returns (response, decoded JSON body or None); the raw bytes
    are on C{response.body}.
    """

    def __init__(self, testcase, base_url):
        self.http = http_client(testcase)
        self.base_url = base_url

    def url(self, path):
        return path if path.startswith("http") else self.base_url + path

    async def get(self, path, **kwargs):
        response = await self.http.get(self.url(path), **kwargs)
        return response, await _decode(response)

    async def post(self, path, payload=None, data=None, **kwargs):
        """
        POST C{payload} as JSON, or raw C{data} bytes as given.
        """
        if data is None:
            data = json.dumps(payload).encode("utf-8")
            kwargs.setdefault("headers", {}).setdefault(b"Content-Type", [b"application/json"])
        response = await self.http.post(self.url(path), data=data, **kwargs)
        return response, await _decode(response)

    async def request(self, method, path, **kwargs):
        response = await self.http.request(method, self.url(path), **kwargs)
        return response, await _decode(response)


async def _decode(response):
    body = await response.content()
    response.body = body
    try:
        return json.loads(body)
    except ValueError:
        return None


def deferred_test(function):
    """
    Let an async test method run under trial.
    """

    def wrapper(self, *args, **kwargs):
        return ensureDeferred(function(self, *args, **kwargs))

    wrapper.__name__ = function.__name__
    wrapper.__doc__ = function.__doc__
    return wrapper
