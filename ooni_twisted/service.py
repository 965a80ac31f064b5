"""
The twistd plugin's options and the service tree.

C{make_service} reads the configuration and checks the data directory
before twistd daemonizes (so a bad config or a busy directory is one line on
the terminal), but opens chDB only in C{startService}: chDB hangs in a
process that forked after opening it.
"""

import os
import sys
import time

from twisted.application import service
from twisted.internet.endpoints import serverFromString
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from .config import ConfigError, load_config
from .storage.clickhouse import ClickHouse, directory_holder, open_backend
from .storage import schema

log = Logger()


class Options(usage.Options):
    """
    twistd ooni-api [--config PATH] [--listen ENDPOINT]
    """

    optParameters = [
        ["config", "c", "etc/ooni/api.conf", "INI configuration file"],
        ["listen", "l", None, "Twisted endpoint string (overrides `listen`)"],
    ]

    def postOptions(self):
        if not os.path.exists(self["config"]):
            raise usage.UsageError(f"config file not found: {self['config']}")


class ThreadPoolService(service.Service):
    """
    A thread pool started and stopped with the service tree.
    """

    def __init__(self, pool):
        self.pool = pool

    def startService(self):
        service.Service.startService(self)
        self.pool.start()

    def stopService(self):
        service.Service.stopService(self)
        self.pool.stop()


class ApiService(service.MultiService):
    """
    The whole server. Starting it opens the database and migrates the
    schema (in the pool, off the reactor), builds the routes, then opens the
    HTTP port; stopping closes them in reverse.

    Children added before start (thread pools) start first; the HTTP port,
    the timers and the control socket are added once the database is ready.
    """

    def __init__(self, config, reactor):
        service.MultiService.__init__(self)
        self.config = config
        self.reactor = reactor
        self.pool = ThreadPool(
            minthreads=1, maxthreads=config.clickhouse_threads, name="clickhouse"
        )
        ThreadPoolService(self.pool).setServiceParent(self)
        self.file_pool = ThreadPool(minthreads=1, maxthreads=4, name="files")
        ThreadPoolService(self.file_pool).setServiceParent(self)
        self.timers = service.MultiService()
        self.clickhouse = None
        self.context = None
        self.site = None
        self.http_port = None
        self.ready = Deferred()

    def startService(self):
        service.MultiService.startService(self)
        d = ensureDeferred(self._start())
        d.addCallbacks(self.ready.callback, self._failed)

    async def _start(self):
        config = self.config
        for path in (config.data_dir, config.spool_dir, config.quota_dir, config.archive_dir):
            os.makedirs(path, exist_ok=True)
        backend = await deferToThreadPool(self.reactor, self.pool, open_backend, config)
        self.clickhouse = ClickHouse(backend, self.reactor, self.pool)
        await self.clickhouse.run(schema.migrate)
        from .app import build_context, build_resource

        self.context = build_context(self)
        resource = await ensureDeferred(build_resource(self.context))
        from .web.site import ApiSite

        self.site = ApiSite(resource, config.max_body_size)
        self.timers.setServiceParent(self)
        from .control import control_service

        control_service(self).setServiceParent(self)
        endpoint = serverFromString(self.reactor, config.listen)
        self.http_port = await endpoint.listen(self.site)
        log.info("ooni-api ready on {listen}", listen=config.listen)
        return self

    def _failed(self, failure):
        log.failure("ooni-api failed to start", failure)
        sys.stderr.write(f"ooni-api: cannot start: {failure.getErrorMessage()}\n")
        self.ready.errback(failure)
        if self.reactor.running:
            self.reactor.stop()

    def stopService(self):
        if not self.running:
            return succeed(None)
        return ensureDeferred(self._stop())

    async def _stop(self):
        """
        Stop in dependency order: no new requests, then the timers (a pass
        in flight finishes while the pools still run), then everything
        else, then close what the pools used. Twisted's thread pool drops
        work submitted after it stops, so the order matters.
        """
        port, self.http_port = self.http_port, None
        if port is not None:
            await port.stopListening()
        if self.timers.running:
            await self.timers.stopService()
        service.Service.stopService(self)
        try:
            for child in reversed(list(self)):
                if child is not self.timers and child.running:
                    await maybeDeferred(child.stopService)
        finally:
            if self.context is not None:
                self.context.close()
            if self.clickhouse is not None:
                self.clickhouse.backend.close()


def check_config(options):
    """
    Load the configuration named by C{options}; exit with one line on error.
    """
    try:
        config = load_config(options["config"])
    except ConfigError as e:
        raise SystemExit(f"ooni-api: {e}")
    if options.get("listen"):
        config = config.replace(listen=options["listen"])
    holder = None if config.clickhouse_url else directory_holder(config.clickhouse_dir)
    if holder:
        raise SystemExit(
            f"ooni-api: the data directory {config.data_dir} is in use by "
            f"{holder}; stop it or use another data_dir"
        )
    return config


def make_service(options, reactor=None):
    """
    Build the service tree for C{options} (an L{Options} or a mapping).
    """
    if reactor is None:
        from twisted.internet import reactor
    os.environ["TZ"] = "UTC"
    time.tzset()
    config = check_config(options)
    return ApiService(config, reactor)


def makeService(options):
    """
    twistd's entry point.
    """
    return make_service(options)

