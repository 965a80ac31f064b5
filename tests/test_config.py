"""
The INI file becomes one frozen Config, or one clear error naming the key.
"""

import os
import subprocess
import sys

from twisted.trial import unittest

from ooni_twisted.config import ConfigError, load_config, parse_config


class ConfigTests(unittest.SynchronousTestCase):
    def write(self, text):
        folder = self.mktemp()
        os.makedirs(folder)
        path = os.path.join(folder, "api.conf")
        with open(path, "w") as f:
            f.write(text)
        return folder, path

    def test_defaults_and_relative_paths(self):
        """Defaults apply and relative paths resolve against the file's folder."""
        folder, path = self.write("[api]\ndevelopment = true\ndata_dir = data\n")
        config = load_config(path)
        self.assertEqual(config.listen, "tcp:8000:interface=127.0.0.1")
        self.assertEqual(config.data_dir, os.path.join(os.path.abspath(folder), "data"))
        self.assertEqual(config.spool_dir, os.path.join(config.data_dir, "spool"))
        self.assertEqual(config.quota_dir, os.path.join(config.data_dir, "quotas"))
        self.assertEqual(config.session_expiry_days, 2)
        self.assertEqual(config.rate_limit("ipaddr_per_day"), 4000.0)
        self.assertEqual(config.ingest_interval, 2.0)

    def test_frozen(self):
        """The configuration cannot be changed once read."""
        _, path = self.write("[api]\ndevelopment = true\n")
        config = load_config(path)
        with self.assertRaises(Exception):
            config.listen = "tcp:1"

    def test_unknown_key(self):
        """An unknown key is an error that names it."""
        _, path = self.write("[api]\ndevelopment = true\nlisten_port = 80\n")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertIn("'listen_port'", str(error))

    def test_bad_values(self):
        """Bad values are errors that name their key."""
        cases = {
            "mail_use_ssl = perhaps": "mail_use_ssl",
            "query_timeout = soon": "query_timeout",
            "ingest_interval = -1": "ingest_interval",
            "rate_limits = ipaddr_per_year=5": "rate_limits",
            "trusted_proxies = not-an-ip": "trusted_proxies",
            "clickhouse_url = http://x": "clickhouse_url",
            "peers = ftp://x": "peers",
            "session_expiry_days = 1.5": "session_expiry_days",
        }
        for line, key in cases.items():
            _, path = self.write(f"[api]\ndevelopment = true\n{line}\n")
            error = self.assertRaises(ConfigError, load_config, path)
            self.assertIn(key, str(error))

    def test_missing_secret(self):
        """Outside development the secrets must be set."""
        _, path = self.write("[api]\n")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertIn("jwt_encryption_key", str(error))
        config = parse_config(
            {"jwt_encryption_key": "k", "account_id_hashing_key": "h"}, "/tmp"
        )
        self.assertEqual(config.jwt_encryption_key, "k")

    def test_booleans_and_lists(self):
        """Booleans take true/false, yes/no, 1/0; lists are comma-separated."""
        _, path = self.write(
            "[api]\ndevelopment = yes\nmail_use_ssl = 1\n"
            "peers = http://a:1, https://b/\ncollectors = x.org, y.org\n"
        )
        config = load_config(path)
        self.assertTrue(config.mail_use_ssl)
        self.assertEqual(config.peers, ("http://a:1", "https://b"))
        self.assertEqual(config.collectors, ("x.org", "y.org"))

    def test_unknown_section_and_malformed(self):
        """Other sections and malformed files are refused with one line."""
        _, path = self.write("[api]\ndevelopment = true\n[other]\nx = 1\n")
        self.assertIn("[other]", str(self.assertRaises(ConfigError, load_config, path)))
        _, path = self.write("no section here\n")
        message = str(self.assertRaises(ConfigError, load_config, path))
        self.assertNotIn("\n", message)
        self.assertIn("malformed", message)

    def test_twistd_reports_one_line(self):
        """twistd with a bad config exits non-zero with one line and no traceback."""
        _, path = self.write("[api]\ndevelopment = true\nbogus = 1\n")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        result = subprocess.run(
            [twistd, "-n", "--pidfile=", "ooni-api", "--config", path],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("unknown key 'bogus'", result.stderr)
        self.assertNotIn("Traceback", result.stderr + result.stdout)
