"""
ooni-api-admin: the operator's command line (CONTRACT.md, "Admin tool").

A command runs on the database itself when nothing else holds it, or
through the running server's control port when a server does. It never
ends in a traceback: every failure is one line on stderr and a non-zero
exit.
"""

import argparse
import io
import json
import os
import socket
import sys
import time

from .commands import COMMANDS, CommandError
from .config import ConfigError, load_config
from .control import read_control_file
from .storage import schema
from .storage.clickhouse import ClickHouseError, directory_holder, open_backend

#: Commands whose arguments are paths (made absolute before they travel).
_PATH_COMMANDS = {"import-test-lists", "import-url-priorities", "import-measurements"}


def _parser():
    parser = argparse.ArgumentParser(prog="ooni-api-admin", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="etc/ooni/api.conf", help="INI configuration file")
    parser.add_argument("command", choices=sorted(COMMANDS), help="what to do")
    parser.add_argument("args", nargs="*", help="the command's arguments")
    return parser


def _through_server(config, name, args, out, err):
    info = read_control_file(config.data_dir)
    holder = directory_holder(config.clickhouse_dir)
    if info is None:
        raise CommandError(
            f"the data directory {config.data_dir} is in use by {holder} "
            "and it offers no control port; stop it and retry"
        )
    port, secret, pid = info
    request = json.dumps({"secret": secret, "command": name, "args": args}).encode("utf-8")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=600) as connection:
            connection.sendall(request + b"\n")
            chunks = []
            while True:
                data = connection.recv(65536)
                if not data:
                    break
                chunks.append(data)
    except OSError as e:
        raise CommandError(
            f"the data directory {config.data_dir} is in use by {holder}, "
            f"whose control port does not answer ({e.strerror or e}); retry or stop it"
        )
    try:
        answer = json.loads(b"".join(chunks).decode("utf-8"))
    except ValueError:
        raise CommandError(f"the server (pid {pid}) gave no answer to {name}")
    out.write(answer.get("output", ""))
    if "error" in answer:
        raise CommandError(answer["error"])
    return int(answer.get("exit", 0))


def _directly(config, name, args, out):
    backend = open_backend(config)
    try:
        if name != "init-db":
            schema.migrate(backend)
        return COMMANDS[name](backend, config, args, out)
    finally:
        backend.close()


def run(argv, out, err):
    """
    Run one admin command; return the exit code.
    """
    options = _parser().parse_args(argv)
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        config = load_config(options.config)
    except ConfigError as e:
        err.write(f"ooni-api-admin: {e}\n")
        return 2
    name = options.command
    args = list(options.args)
    if name in _PATH_COMMANDS:
        args = [os.path.abspath(a) for a in args]
    command = COMMANDS[name]
    try:
        if getattr(command, "runs_locally", False):
            return command(None, config, args, out)
        if not config.clickhouse_url and directory_holder(config.clickhouse_dir):
            return _through_server(config, name, args, out, err)
        return _directly(config, name, args, out)
    except CommandError as e:
        err.write(f"ooni-api-admin: {name}: {e}\n")
        return 1
    except ClickHouseError as e:
        err.write(f"ooni-api-admin: {name}: database error: {e}\n")
        return 1
    except OSError as e:
        err.write(f"ooni-api-admin: {name}: {e}\n")
        return 1


def main():
    out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", line_buffering=True)
    sys.exit(run(sys.argv[1:], out, sys.stderr))
