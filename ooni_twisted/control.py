"""
The control port: lets the admin tool run its commands inside a running
server, which holds the embedded database. It listens on loopback only, on
a port chosen at start, and accepts a request only with the secret written
(mode 0600) to data_dir/control.json beside the database.
"""

import io
import json
import os
import secrets

from twisted.application import service
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

from .commands import COMMANDS, CommandError

log = Logger()

CONTROL_FILE = "control.json"


def control_file(data_dir):
    return os.path.join(data_dir, CONTROL_FILE)


def read_control_file(data_dir):
    """
    The port, secret and pid of the server holding C{data_dir}, or None.
    """
    try:
        with open(control_file(data_dir), encoding="utf-8") as f:
            info = json.load(f)
        return int(info["port"]), str(info["secret"]), int(info.get("pid", 0))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class ControlProtocol(LineReceiver):
    """
    One JSON request line in, one JSON answer line out.
    """

    MAX_LENGTH = 1024 * 1024
    delimiter = b"\n"

    def lineReceived(self, line):
        d = ensureDeferred(self.factory.handle(line))
        d.addCallback(lambda answer: self.sendLine(json.dumps(answer).encode("utf-8")))
        d.addBoth(lambda _: self.transport.loseConnection())


class ControlFactory(Factory):
    protocol = ControlProtocol

    def __init__(self, api_service, secret):
        self._api = api_service
        self._secret = secret

    async def handle(self, line):
        try:
            request = json.loads(line)
            if not secrets.compare_digest(str(request.get("secret", "")), self._secret):
                return {"error": "bad control secret"}
            name = request["command"]
            args = [str(a) for a in request.get("args", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            return {"error": "malformed control request"}
        command = COMMANDS.get(name)
        if command is None or getattr(command, "runs_locally", False):
            return {"error": f"command {name!r} cannot run through the server"}
        out = io.StringIO()
        try:
            code = await self._api.clickhouse.run(command, self._api.config, args, out)
        except CommandError as e:
            return {"error": str(e), "output": out.getvalue()}
        except Exception as e:
            log.failure("control command {name} failed", name=name)
            return {"error": f"{name} failed: {e}", "output": out.getvalue()}
        context = self._api.context
        if context is not None:
            context.admin_command_done(name)
        return {"exit": code, "output": out.getvalue()}


class ControlService(service.Service):
    """
    Listen on a loopback port and advertise it in data_dir/control.json.
    """

    def __init__(self, api_service, reactor):
        self._api = api_service
        self._reactor = reactor
        self._secret = secrets.token_hex(16)
        self._port = None

    def startService(self):
        service.Service.startService(self)
        endpoint = TCP4ServerEndpoint(self._reactor, 0, interface="127.0.0.1")
        d = endpoint.listen(ControlFactory(self._api, self._secret))
        d.addCallback(self._listening)
        d.addErrback(lambda f: log.failure("control port failed", f))

    def _listening(self, port):
        self._port = port
        path = control_file(self._api.config.data_dir)
        temporary = path + ".tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"port": port.getHost().port, "secret": self._secret, "pid": os.getpid()}, f)
        os.replace(temporary, path)

    def stopService(self):
        service.Service.stopService(self)
        try:
            os.remove(control_file(self._api.config.data_dir))
        except OSError:
            pass
        if self._port is not None:
            return self._port.stopListening()


def control_service(api_service):
    return ControlService(api_service, api_service.reactor)



