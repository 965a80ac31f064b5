"""
ooni-api-admin: the commands on their own, and through a running server.
"""

import io
import os
import sys

import jwt
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from ooni_twisted import admin
from ooni_twisted.accounts import tokens
from ooni_twisted.testlists import rules

from .support import DATA, HASH_KEY, JWT_KEY, deferred_test, start_server

ADMIN = os.path.join(os.path.dirname(sys.executable), "ooni-api-admin")


def write_config(folder, extra=""):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "api.conf")
    with open(path, "w") as f:
        f.write(
            "[api]\nlisten = tcp:0:interface=127.0.0.1\ndata_dir = var\n"
            f"jwt_encryption_key = {JWT_KEY}\naccount_id_hashing_key = {HASH_KEY}\n" + extra
        )
    return path


class AdminDirectTests(unittest.TestCase):
    """
    Commands that open the data directory themselves.
    """

    def setUp(self):
        self.conf = write_config(os.path.abspath(self.mktemp()))

    def run_admin(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        code = admin.run(["--config", self.conf] + list(argv), out, err)
        return code, out.getvalue(), err.getvalue()

    def test_import_test_lists(self):
        """The test lists load 1467 global and 47 US rows."""
        code, out, err = self.run_admin("init-db")
        self.assertEqual((code, err), (0, ""))
        code, out, err = self.run_admin("import-test-lists", DATA.child("test-lists").path)
        self.assertEqual(code, 0, err)
        self.assertIn("imported 1514 rows (ZZ 1467, us 47)", out)

    def test_bad_rows_reported(self):
        """Bad rows are reported with file:line and the rest imported."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(folder, "lists"))
        with open(os.path.join(folder, "lists", "it.csv"), "w") as f:
            f.write(
                "url,category_code,category_description,date_added,source,notes\n"
                "https://good.example.org/,NEWS,,,,\n"
                "not a url,NEWS,,,,\n"
                "ftp://files.example.org/,FILE,,,,\n"
                "http://ok.example.net:8080/x,GRP,,,,\n"
            )
        with open(os.path.join(folder, "lists", "00-LEGEND.csv"), "w") as f:
            f.write("ignored\n")
        code, out, err = self.run_admin("import-test-lists", folder)
        self.assertEqual(code, 0, err)
        self.assertIn("it.csv:3: invalid URL", out)
        self.assertIn("it.csv:4: invalid URL", out)
        self.assertIn("imported 2 rows (it 2)", out)

    def test_url_priorities_and_roles(self):
        """Rules are replaced exactly; set-role then create-token carries the role."""
        code, out, err = self.run_admin("import-url-priorities", DATA.child("url_priorities_us.json").path)
        self.assertEqual(code, 0, err)
        self.assertIn("48 live rules", out)
        code, out, err = self.run_admin("set-role", "Admin@Example.org ", "admin")
        self.assertEqual(code, 0, err)
        code, out, err = self.run_admin("create-token", "admin@example.org")
        self.assertEqual(code, 0, err)
        claims = jwt.decode(out.strip(), JWT_KEY, algorithms=["HS256"], audience="user_auth")
        self.assertEqual(claims["role"], "admin")
        self.assertEqual(claims["account_id"], tokens.account_id("admin@example.org", HASH_KEY))
        self.assertEqual(claims["iat"], claims["nbf"])
        self.assertEqual(claims["login_time"], claims["iat"])
        self.assertEqual(claims["exp"], claims["iat"] + 2 * 86400)
        code, out, err = self.run_admin("create-token", "nobody@example.org")
        claims = jwt.decode(out.strip(), JWT_KEY, algorithms=["HS256"], audience="user_auth")
        self.assertEqual(claims["role"], "user")
        code, out, err = self.run_admin("set-role", "x@example.org", "emperor")
        self.assertEqual(code, 1)
        self.assertIn("unknown role", err)

    def test_bad_config(self):
        """A config with an unknown key fails with one line and exit 2."""
        folder = os.path.abspath(self.mktemp())
        conf = write_config(folder, "bogus_key = 1\n")
        out, err = io.StringIO(), io.StringIO()
        code = admin.run(["--config", conf, "init-db"], out, err)
        self.assertEqual(code, 2)
        self.assertEqual(err.getvalue().count("\n"), 1)
        self.assertIn("bogus_key", err.getvalue())


class RulesTests(unittest.SynchronousTestCase):
    def test_normalise(self):
        """Empty rule fields are stored as '*'; priorities must be integers."""
        self.assertEqual(
            rules.normalise_rule({"category_code": "NEWS", "cc": "", "priority": "5"}),
            {"category_code": "NEWS", "cc": "*", "domain": "*", "url": "*", "priority": 5},
        )
        self.assertRaises(ValueError, rules.normalise_rule, {"priority": "high"})
        self.assertRaises(ValueError, rules.normalise_rule, ["x"])


class AdminThroughServerTests(unittest.TestCase):
    """
    While a server holds the data directory, commands go through it.
    """

    @deferred_test
    async def test_commands_through_server(self):
        """import-test-lists and create-token work while the server runs, and the data is the server's."""
        folder = os.path.abspath(self.mktemp())
        conf = write_config(folder)
        from ooni_twisted.config import load_config

        server = await start_server(self, load_config(conf))
        out, err, code = await getProcessOutputAndValue(
            ADMIN, ["--config", conf, "import-test-lists", DATA.child("test-lists").path],
            env=dict(os.environ), reactor=reactor,
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"ZZ 1467, us 47", out)
        rows = await server.clickhouse.query(
            "SELECT cc, count() AS n FROM citizenlab GROUP BY cc ORDER BY cc"
        )
        self.assertEqual(rows, [{"cc": "ZZ", "n": 1467}, {"cc": "us", "n": 47}])
        out, err, code = await getProcessOutputAndValue(
            ADMIN, ["--config", conf, "create-token", "a@b.org"], env=dict(os.environ), reactor=reactor
        )
        self.assertEqual(code, 0, err)
        claims = jwt.decode(out.strip(), JWT_KEY, algorithms=["HS256"], audience="user_auth")
        self.assertEqual(claims["role"], "user")

    @deferred_test
    async def test_busy_without_control_port(self):
        """With the directory held and no control port, the tool says so in one line."""
        folder = os.path.abspath(self.mktemp())
        conf = write_config(folder)
        from ooni_twisted.config import load_config

        await start_server(self, load_config(conf))
        control = os.path.join(folder, "var", "control.json")
        saved = open(control).read()
        os.remove(control)
        self.addCleanup(lambda: open(control, "w").write(saved))
        out, err, code = await getProcessOutputAndValue(
            ADMIN, ["--config", conf, "set-role", "a@b.org", "admin"], env=dict(os.environ), reactor=reactor
        )
        self.assertEqual(code, 1)
        self.assertIn(b"is in use by process", err)
        self.assertEqual(err.count(b"\n"), 1)
        self.assertNotIn(b"Traceback", err)


class TwistdBusyTests(unittest.TestCase):
    @deferred_test
    async def test_second_server_refused(self):
        """A second twistd on a held data directory exits with one clear line."""
        folder = os.path.abspath(self.mktemp())
        conf = write_config(folder)
        from ooni_twisted.config import load_config

        await start_server(self, load_config(conf))
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        out, err, code = await getProcessOutputAndValue(
            twistd, ["-n", "--pidfile=", "ooni-api", "--config", conf],
            env=dict(os.environ), reactor=reactor,
        )
        self.assertNotEqual(code, 0)
        self.assertIn(b"is in use by process", err)
        self.assertNotIn(b"Traceback", err + out)


