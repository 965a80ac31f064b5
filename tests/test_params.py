"""
The parameter validators of api-routes.md section 3.
"""

import datetime

from twisted.trial import unittest

from ooni_twisted.web import params
from ooni_twisted.web.errors import BadRequest


class ValidatorTests(unittest.SynchronousTestCase):
    def bad(self, function, *args):
        return self.assertRaises(BadRequest, function, *args).message

    def test_asn(self):
        """ASNs accept AS123 and 123; anything else is a 400."""
        self.assertEqual(params.parse_asn("AS123"), 123)
        self.assertEqual(params.parse_asn("123"), 123)
        self.assertIsNone(params.parse_asn(""))
        self.bad(params.parse_asn, "as123")
        self.bad(params.parse_asn, "AS12x")
        self.assertEqual(params.parse_asn_list("AS3,2,AS3"), ["2", "3"])
        self.assertEqual(
            self.bad(params.parse_asn_list, "AS3,foo"), "Invalid ASN value in parameter probe_asn"
        )

    def test_cc_list(self):
        """Country lists are upper-case two-letter codes, deduplicated and sorted."""
        self.assertEqual(params.parse_cc_list("US,IT,,US"), ["IT", "US"])
        self.assertEqual(self.bad(params.parse_cc_list, "us"), "Invalid characters")
        self.assertEqual(
            self.bad(params.parse_cc_list, "USA"), "Invalid CC value in parameter probe_cc"
        )

    def test_test_names_and_simple_patterns(self):
        """Test names are lower case with underscores; other patterns likewise."""
        self.assertEqual(params.parse_test_name_list("web_connectivity,dnscheck"), ["dnscheck", "web_connectivity"])
        self.bad(params.parse_test_name_list, "Web")
        self.assertEqual(params.parse_lower_underscore("probe_cc"), "probe_cc")
        self.bad(params.parse_lower_underscore, "probe-cc")
        self.assertEqual(params.parse_upper("NEWS"), "NEWS")
        self.bad(params.parse_upper, "news")
        self.assertEqual(params.parse_comma_list("b,a,,b"), ["a", "b"])

    def test_dates(self):
        """Dates are parsed leniently into naive UTC; nonsense is a 400."""
        self.assertEqual(params.parse_date("2021-7-9"), datetime.datetime(2021, 7, 9))
        self.assertEqual(params.parse_date("20210709"), datetime.datetime(2021, 7, 9))
        self.assertEqual(
            params.parse_date("2016-10-20T10:30:00"), datetime.datetime(2016, 10, 20, 10, 30)
        )
        self.assertEqual(
            params.parse_date("2016-10-20T10:30:00+02:00"), datetime.datetime(2016, 10, 20, 8, 30)
        )
        self.assertIsNone(params.parse_date(None))
        self.bad(params.parse_date, "yesterday")
        self.bad(params.parse_date, "2021-02-30")

    def test_bool(self):
        """Empty means no filter; 'true' in any case is true; anything else false."""
        self.assertIsNone(params.parse_bool(""))
        self.assertTrue(params.parse_bool("TRUE"))
        self.assertFalse(params.parse_bool("yes"))

    def test_domains(self):
        """Domains, IPs and host:port validate; single labels and junk do not."""
        for good in ("foo.org", "doh-de.blahdns.com", "8.8.4.4", "8.8.8.8:853",
                     "[2a00:5a60::ad2:0ff]:853", "www.example.com:8080", "ünicode.de"):
            self.assertEqual(params.parse_domain(good), good, good)
        for bad in ("localhost", "foo.org/path", "a b.org", "'; drop", "foo.1"):
            self.assertEqual(self.bad(params.parse_domain, bad), "Invalid characters in domain field")
        self.assertEqual(params.parse_domain_list("b.org,a.org"), ["a.org", "b.org"])
        self.assertEqual(params.parse_url("https://foo.org/x?y"), "https://foo.org/x?y")
        self.bad(params.parse_url, "https://bad host/")

    def test_report_id(self):
        """Report ids need 15-100 characters of A-Za-z0-9_."""
        rid = "20210709T004340Z_webconnectivity_MY_4818_n1_YCM7J9mGcEHds2K3"
        self.assertEqual(params.parse_report_id(rid), rid)
        self.assertIsNone(params.parse_report_id(""))
        self.assertEqual(self.bad(params.parse_report_id, "", True), "Invalid report_id")
        self.assertEqual(self.bad(params.parse_report_id, "short"), "Invalid report_id field")
        self.assertEqual(self.bad(params.parse_report_id, "x" * 20 + ";"), "Invalid characters")

    def test_input(self):
        """Inputs allow URL characters and any non-ASCII text, not quotes or brackets."""
        self.assertEqual(params.parse_input("https://x.org/a?b=c&d#e"), "https://x.org/a?b=c&d#e")
        self.assertEqual(params.parse_input("https://пример.рф/"), "https://пример.рф/")
        for bad in ("a'b", 'a"b', "a<b", "a\\b", "a@b", "a;b", "a~b"):
            self.assertEqual(self.bad(params.parse_input, bad), "Invalid characters in input field")

    def test_integers(self):
        """Integers beyond 64 bits or not integers are 400s."""
        self.assertEqual(params.parse_int("10", "limit"), 10)
        self.assertEqual(params.parse_int(None, "limit", default=100), 100)
        self.bad(params.parse_int, "1.5", "limit")
        self.bad(params.parse_int, str(2**63), "limit")
        self.bad(params.parse_int, "-1", "offset", None, 0)

    def test_measurement_uid(self):
        """measurement_uid needs 10 to 100 characters."""
        self.assertEqual(params.parse_measurement_uid("x" * 10), "x" * 10)
        self.assertEqual(self.bad(params.parse_measurement_uid, "short"), "Invalid measurement_uid field")
        self.bad(params.parse_measurement_uid, None)

    def test_query_args(self):
        """The first occurrence wins; invalid UTF-8 and NUL are 400s."""
        args = params.QueryArgs({b"a": [b"1", b"2"], b"b": [b"\xff"], b"c": [b"x\x00"]})
        self.assertEqual(args.get("a"), "1")
        self.assertIsNone(args.get("missing"))
        self.bad(args.get, "b")
        self.bad(args.get, "c")
