"""
A throwaway ClickHouse server (Debian's clickhouse-server) on a free
loopback port, for testing the clickhouse-driver backend for real.
"""

import os
import shutil
import socket
import subprocess
import time

SERVER = shutil.which("clickhouse-server") or "/usr/sbin/clickhouse-server"

_CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><console>1</console></logger>
  <tcp_port>{port}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{root}/data/</path>
  <tmp_path>{root}/tmp/</tmp_path>
  <mark_cache_size>5368709</mark_cache_size>
  <users_config>{root}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
</yandex>
"""

_USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks>
  <profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"""


def available():
    return os.path.exists(SERVER)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(root):
    """
    Start a server under C{root}; return (process, url). Blocks until it
    accepts connections (a few seconds at most).
    """
    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    port = _free_port()
    with open(os.path.join(root, "config.xml"), "w") as f:
        f.write(_CONFIG.format(port=port, root=root))
    with open(os.path.join(root, "users.xml"), "w") as f:
        f.write(_USERS)
    log = open(os.path.join(root, "server.log"), "wb")
    process = subprocess.Popen(
        [SERVER, f"--config-file={root}/config.xml"], stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, f"clickhouse://127.0.0.1:{port}/default"
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"clickhouse-server did not start; see {root}/server.log")


def stop(process):
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
