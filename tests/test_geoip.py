"""Tests for ooni_twisted.probes.geoip against real .mmdb files (tests/mmdb.py)."""

import os

import maxminddb
from twisted.trial.unittest import SynchronousTestCase

from ooni_twisted.probes.geoip import GeoIP
from tests.mmdb import build_test_mmdbs


class GeoIPTests(SynchronousTestCase):
    def setUp(self):
        directory = self.mktemp()
        os.makedirs(directory)
        self.cc_path, self.asn_path = build_test_mmdbs(directory)
        self.geoip = GeoIP(self.cc_path, self.asn_path)
        self.addCleanup(self.geoip.close)

    def test_lookup_known_network(self):
        """An address in both databases gives cc, AS<n> and the organisation."""
        self.assertEqual(
            self.geoip.lookup("5.6.7.8"),
            ("DE", "AS6805", "Telefonica Germany GmbH & Co.OHG"),
        )
        self.assertEqual(self.geoip.lookup("8.8.8.8"), ("US", "AS15169", "GOOGLE"))
        cc, asn, name = self.geoip.lookup("192.33.4.12")
        self.assertEqual((cc, asn), ("US", "AS2149"))
        self.assertIsNotNone(name)

    def test_lookup_country_only(self):
        """An address missing from the ASN database gives AS0 and no name."""
        self.assertEqual(self.geoip.lookup("1.2.3.4"), ("AU", "AS0", None))

    def test_lookup_unknown(self):
        """Unknown, IPv6, malformed or non-string addresses give ZZ, AS0, None."""
        for ip in ["9.9.9.9", "::1", "2001:db8::1", "bogus", "", "1.2.3.4\x00", None, 1234]:
            self.assertEqual(self.geoip.lookup(ip), ("ZZ", "AS0", None), repr(ip))

    def test_ipv4_mapped_address(self):
        """An IPv4-mapped IPv6 address (dual-stack socket) is looked up as IPv4."""
        self.assertEqual(self.geoip.lookup("::ffff:8.8.8.8"), ("US", "AS15169", "GOOGLE"))

    def test_geolookup_values(self):
        """geolookup gives as_name, asn (int) and cc, with null for what is unknown."""
        self.assertEqual(
            self.geoip.geolookup("5.6.7.8"),
            {"as_name": "Telefonica Germany GmbH & Co.OHG", "asn": 6805, "cc": "DE"},
        )
        self.assertEqual(
            self.geoip.geolookup("1.2.3.4"), {"as_name": None, "asn": None, "cc": "AU"}
        )
        self.assertEqual(
            self.geoip.geolookup("::1"), {"as_name": None, "asn": None, "cc": None}
        )
        self.assertEqual(
            self.geoip.geolookup("not an ip"), {"as_name": None, "asn": None, "cc": None}
        )

    def test_closed_reader_answers_unknown(self):
        """After close() lookups answer unknown instead of failing."""
        self.geoip.close()
        self.assertEqual(self.geoip.lookup("5.6.7.8"), ("ZZ", "AS0", None))
        self.geoip.close()  # idempotent

    def test_without_databases(self):
        """Without configured databases every address is unknown."""
        geoip = GeoIP(None, None)
        self.assertEqual(geoip.lookup("5.6.7.8"), ("ZZ", "AS0", None))
        self.assertEqual(
            geoip.geolookup("5.6.7.8"), {"as_name": None, "asn": None, "cc": None}
        )
        geoip = GeoIP("", "")
        self.assertEqual(geoip.lookup("5.6.7.8"), ("ZZ", "AS0", None))

    def test_databases_are_independent(self):
        """With only one database the other half stays unknown."""
        cc_only = GeoIP(self.cc_path, None)
        self.addCleanup(cc_only.close)
        self.assertEqual(cc_only.lookup("5.6.7.8"), ("DE", "AS0", None))
        asn_only = GeoIP(None, self.asn_path)
        self.addCleanup(asn_only.close)
        self.assertEqual(
            asn_only.lookup("5.6.7.8"), ("ZZ", "AS6805", "Telefonica Germany GmbH & Co.OHG")
        )
        self.assertEqual(
            asn_only.geolookup("8.8.8.8"), {"as_name": "GOOGLE", "asn": 15169, "cc": None}
        )

    def test_missing_file_fails_at_construction(self):
        """A configured but missing database fails loudly when the service starts."""
        with self.assertRaises(FileNotFoundError):
            GeoIP(self.cc_path, os.path.join(self.mktemp(), "missing.mmdb"))

    def test_not_a_database_fails_at_construction(self):
        """A file that is not an MMDB database is refused at construction."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"not a database")
        with self.assertRaises(maxminddb.InvalidDatabaseError):
            GeoIP(path, None)
