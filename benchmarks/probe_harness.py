"""
What bench_submit, bench_checkin and bench_import share: a real `twistd -n
ooni-api` server process on a free loopback port with everything embedded in
a temporary data directory, the admin tool, wrk runs parsed into numbers, and
the bare-Klein "hello" server that gives the ceiling of the machine.

Everything is bounded (wrk -d, timeouts on every wait) and loopback only.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.abspath(os.path.join(ROOT, "..", "shared", "data"))
BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")
ADMIN = os.path.join(BIN, "ooni-api-admin")
WRK = "/usr/bin/wrk"

sys.path.insert(0, ROOT)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env():
    out = dict(os.environ)
    out["TZ"] = "UTC"
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, out.get("PYTHONPATH")]))
    return out


def wait_http(url, deadline, proc=None, log=None):
    """Poll C{url} until it answers 200; raise after C{deadline} seconds."""
    give_up = time.monotonic() + deadline
    while time.monotonic() < give_up:
        if proc is not None and proc.poll() is not None:
            tail = open(log, "rb").read()[-3000:].decode("utf-8", "replace") if log else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {deadline} s")


def cpu_seconds(pid):
    """User + system CPU seconds of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class ApiServer:
    """
    One server process with its own data directory (a context manager):
    C{admin()} runs ooni-api-admin on the same configuration.
    """

    def __init__(self, workdir=None, **settings):
        self.own_dir = workdir is None
        self.dir = workdir or tempfile.mkdtemp(prefix="ooni-bench-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = os.path.join(self.dir, "api.conf")
        self.log = os.path.join(self.dir, "server.log")
        values = {
            "listen": f"tcp:{self.port}:interface=127.0.0.1",
            "data_dir": "var",
            "jwt_encryption_key": "benchmark-jwt-key-of-at-least-32-bytes!",
            "account_id_hashing_key": "benchmark-account-hashing-key",
            "collector_id": "1",
        }
        values.update({k: str(v) for k, v in settings.items()})
        with open(self.config, "w", encoding="utf-8") as f:
            f.write("[api]\n")
            for key, value in values.items():
                f.write(f"{key} = {value}\n")
        self.proc = None

    @property
    def data_dir(self):
        return os.path.join(self.dir, "var")

    def admin(self, *args, check=True):
        """Run ooni-api-admin; return (stdout, seconds)."""
        started = time.monotonic()
        result = subprocess.run(
            [ADMIN, "--config", self.config, *args],
            env=env(), capture_output=True, text=True, timeout=1800,
        )
        elapsed = time.monotonic() - started
        if check and result.returncode != 0:
            raise RuntimeError(f"ooni-api-admin {args[0]} failed: {result.stderr}")
        return result.stdout + result.stderr, elapsed

    def start(self):
        logfile = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "ooni-api", "--config", self.config],
            cwd=self.dir, env=env(), stdout=logfile, stderr=subprocess.STDOUT,
        )
        logfile.close()
        wait_http(self.url + "/health", 120, self.proc, self.log)
        return self

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        if self.own_dir and not os.environ.get("KEEP_BENCH_DIR"):
            shutil.rmtree(self.dir, ignore_errors=True)


def query_database(config_path, sql):
    """
    Rows of C{sql} against a stopped server's embedded database, read in a
    child process (chDB holds one data directory per process).
    """
    code = (
        "import json, sys\n"
        "from ooni_twisted.config import load_config\n"
        "from ooni_twisted.storage.clickhouse import open_backend\n"
        "b = open_backend(load_config(sys.argv[1]))\n"
        "try:\n"
        "    print(json.dumps(b.query(sys.argv[2]), default=str))\n"
        "finally:\n"
        "    b.close()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, config_path, sql],
        env=env(), capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return json.loads(result.stdout)


# -- wrk ------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output):
    """Requests/s, latency percentiles (ms) and error counts of a wrk --latency run."""
    out = {"non2xx": 0, "socket_errors": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", output)
    out["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", output)
    out["requests"] = int(m.group(1)) if m else 0
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", output, re.M)
        out[f"p{pct}"] = _ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if m:
        out["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if m:
        out["socket_errors"] = sum(int(x) for x in m.groups())
    return out


def run_wrk(url, script=None, connections=64, threads=1, duration=10, pid=None, script_args=()):
    """
    wrk against C{url}; returns parse_wrk's numbers plus the server's CPU
    seconds per request when C{pid} is given.
    """
    args = [WRK, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "--latency"]
    if script:
        args += ["-s", script]
    cpu0 = cpu_seconds(pid) if pid else None
    result = subprocess.run(
        args + [url] + (["--", *script_args] if script_args else []), capture_output=True, text=True, timeout=duration + 60
    )
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed: {result.stderr}")
    numbers = parse_wrk(result.stdout)
    if pid and numbers["requests"]:
        numbers["cpu_ms_per_request"] = (cpu_seconds(pid) - cpu0) * 1000 / numbers["requests"]
    numbers["raw"] = result.stdout
    return numbers


def describe(name, n):
    """One line of results."""
    parts = [f"{name:<28} {n['rps']:>9.0f} req/s"]
    if n.get("p50") is not None:
        parts.append(f"p50 {n['p50']:.2f} ms  p99 {n['p99']:.2f} ms")
    if n.get("cpu_ms_per_request") is not None:
        parts.append(f"server CPU {n['cpu_ms_per_request']:.3f} ms/req")
    if n["non2xx"] or n["socket_errors"]:
        parts.append(f"non-2xx {n['non2xx']}, socket errors {n['socket_errors']}")
    return "  ".join(parts)


class HelloServer:
    """The bare-Klein hello server (benchmarks/hello_klein.py) as a child process."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "hello_klein.py"), str(self.port)],
            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_http(self.url + "/", 30, self.proc)
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def machine_note():
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def lua_string(data):
    """A Lua long-bracket-free quoted string for arbitrary bytes."""
    return '"' + "".join(
        chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:03d}" for b in data
    ) + '"'
