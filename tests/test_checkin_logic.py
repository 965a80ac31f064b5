"""Tests for ooni_twisted.probes.checkin (api-routes.md §9, §12.10)."""

import json
from collections import Counter
from datetime import datetime, timedelta, timezone

from twisted.trial.unittest import SynchronousTestCase

from ooni_twisted.probes.checkin import (
    CHECKIN_V1_TESTS,
    CHECKIN_V2_NETTESTS,
    DNSCHECK_INPUTS,
    STUNREACHABILITY_INPUTS,
    BadProbeRequest,
    CheckinRequest,
    bouncer_response,
    build_checkin_v1,
    build_checkin_v2,
    choose_location,
    collectors,
    open_report,
    parse_checkin_body,
    probe_client_id_claims,
    probe_token_claims,
    probe_token_expire,
    test_helpers,
    url_limit,
)
from ooni_twisted.probes.ids import parse_report_id

NOW = datetime(2023, 9, 27, 10, 0, 0, 123456)
GEO = ("US", "AS2149", "COGENT-2149")
URLS = [
    {"category_code": "NEWS", "country_code": "XX", "url": "https://a.org/"},
    {"category_code": "GRP", "country_code": "US", "url": "https://b.org/"},
]


def rotated(helpers):
    return [h["address"] for h in helpers["web-connectivity"][:4]]


class TestHelpersTests(SynchronousTestCase):
    def test_rotation_counts(self):
        """Over 1.2.3.0-1.2.3.199, 0.th comes first 20 times and 1.th, 2.th, 3.th 60 times each."""
        firsts = Counter(
            test_helpers("1.2.3.%d" % n)["web-connectivity"][0]["address"] for n in range(200)
        )
        self.assertEqual(
            firsts,
            {
                "https://0.th.ooni.org": 20,
                "https://1.th.ooni.org": 60,
                "https://2.th.ooni.org": 60,
                "https://3.th.ooni.org": 60,
            },
        )

    def test_unparsable_address(self):
        """Without a usable address the order is 1, 2, 3, 0."""
        expected = ["https://%d.th.ooni.org" % n for n in (1, 2, 3, 0)]
        for ip in ("bogus", "", None, "1.2.3.4, 5.6.7.8"):
            self.assertEqual(rotated(test_helpers(ip)), expected, repr(ip))

    def test_rotation_rule(self):
        """q = address mod 100 picks the shift: q < 10 none, else q mod 3 + 1."""
        # 1.2.3.4 = 16909060, q = 60 -> shift 1
        self.assertEqual(
            rotated(test_helpers("1.2.3.4")),
            ["https://%d.th.ooni.org" % n for n in (1, 2, 3, 0)],
        )
        # 0.0.0.5 -> q 5 -> shift 0
        self.assertEqual(
            rotated(test_helpers("0.0.0.5")),
            ["https://%d.th.ooni.org" % n for n in (0, 1, 2, 3)],
        )
        # ::1e (30) -> q 30 -> shift 1; IPv6 works too
        self.assertEqual(rotated(test_helpers("::1e"))[0], "https://1.th.ooni.org")
        # 0.0.0.11 -> q 11 -> shift 3
        self.assertEqual(rotated(test_helpers("0.0.0.11"))[0], "https://3.th.ooni.org")

    def test_shape(self):
        """Six keys; legacy lists hold one entry twice; the cloudfront helper comes last."""
        helpers = test_helpers("1.2.3.4")
        self.assertEqual(
            set(helpers),
            {
                "dns",
                "http-return-json-headers",
                "ssl",
                "tcp-echo",
                "traceroute",
                "web-connectivity",
            },
        )
        self.assertEqual(
            helpers["dns"], [{"address": "37.218.241.93:57004", "type": "legacy"}] * 2
        )
        self.assertEqual(
            helpers["http-return-json-headers"],
            [{"address": "http://37.218.241.94:80", "type": "legacy"}] * 2,
        )
        self.assertEqual(
            helpers["ssl"], [{"address": "https://37.218.241.93", "type": "legacy"}] * 2
        )
        plain = [{"address": "37.218.241.93", "type": "legacy"}] * 2
        self.assertEqual(helpers["tcp-echo"], plain)
        self.assertEqual(helpers["traceroute"], plain)
        wc = helpers["web-connectivity"]
        self.assertEqual(len(wc), 5)
        self.assertEqual({h["type"] for h in wc[:4]}, {"https"})
        self.assertEqual(
            wc[4],
            {
                "address": "https://d33d1gs9kpq1c5.cloudfront.net",
                "front": "d33d1gs9kpq1c5.cloudfront.net",
                "type": "cloudfront",
            },
        )


class UrlLimitTests(SynchronousTestCase):
    def test_limits(self):
        """Manual runs get 9999 URLs, timed runs 100 when charging and 20 on battery."""
        self.assertEqual(url_limit("manual", False), 9999)
        self.assertEqual(url_limit("timed", True), 100)
        self.assertEqual(url_limit("timed", False), 20)
        self.assertEqual(url_limit("whatever", None), 20)


class ParseCheckinBodyTests(SynchronousTestCase):
    def test_defaults(self):
        """An empty body means ZZ, AS0, timed, charging, no categories."""
        request = parse_checkin_body({})
        self.assertEqual(request, CheckinRequest("ZZ", "AS0", "timed", True, ()))
        self.assertEqual(request.url_limit, 100)

    def test_values(self):
        """cc is upper-cased; unknown fields are ignored; battery timed runs get 20 URLs."""
        request = parse_checkin_body(
            {
                "probe_cc": "us",
                "probe_asn": "AS1234",
                "charging": False,
                "run_type": "timed",
                "platform": "android",
                "on_wifi": True,
                "software_name": "x",
                "software_version": "1",
                "web_connectivity": {"category_codes": ["NEWS", "CULTR", "NEWS"]},
            }
        )
        self.assertEqual(request.probe_cc, "US")
        self.assertEqual(request.probe_asn, "AS1234")
        self.assertEqual(request.category_codes, ("NEWS", "CULTR"))
        self.assertEqual(request.url_limit, 20)

    def test_manual(self):
        """run_type manual gets the whole list."""
        self.assertEqual(parse_checkin_body({"run_type": "manual"}).url_limit, 9999)

    def test_category_codes_as_string(self):
        """A comma-separated category string is accepted; empty items are ignored."""
        request = parse_checkin_body({"web_connectivity": {"category_codes": "NEWS,GRP,"}})
        self.assertEqual(request.category_codes, ("NEWS", "GRP"))
        request = parse_checkin_body({"web_connectivity": {"category_codes": ""}})
        self.assertEqual(request.category_codes, ())

    def test_null_means_absent(self):
        """Null fields take their defaults."""
        request = parse_checkin_body(
            {"probe_cc": None, "probe_asn": None, "web_connectivity": None}
        )
        self.assertEqual((request.probe_cc, request.probe_asn), ("ZZ", "AS0"))
        request = parse_checkin_body({"web_connectivity": {"category_codes": None}})
        self.assertEqual(request.category_codes, ())

    def test_invalid(self):
        """Bad cc, asn, category codes or body types raise BadProbeRequest with the 400 message."""
        cases = [
            ([], "JSON expected"),
            ("x", "JSON expected"),
            (None, "JSON expected"),
            ({"probe_cc": "USA"}, "Invalid probe_cc"),
            ({"probe_cc": "U1"}, "Invalid probe_cc"),
            ({"probe_cc": ""}, "Invalid probe_cc"),
            ({"probe_cc": "\u00df"}, "Invalid probe_cc"),
            ({"probe_cc": 12}, "Invalid probe_cc"),
            ({"probe_asn": "1234"}, "Invalid probe_asn"),
            ({"probe_asn": "AS"}, "Invalid probe_asn"),
            ({"probe_asn": "as12"}, "Invalid probe_asn"),
            ({"probe_asn": "AS1x"}, "Invalid probe_asn"),
            ({"probe_asn": 1234}, "Invalid probe_asn"),
            ({"web_connectivity": []}, "Invalid web_connectivity"),
            ({"web_connectivity": {"category_codes": ["NEWS", "N3WS"]}}, "Invalid category_codes"),
            ({"web_connectivity": {"category_codes": ["NEWS", 1]}}, "Invalid category_codes"),
            ({"web_connectivity": {"category_codes": ["NEWS", ""]}}, "Invalid category_codes"),
            ({"web_connectivity": {"category_codes": "NEWS, GRP"}}, "Invalid category_codes"),
            ({"web_connectivity": {"category_codes": 5}}, "Invalid category_codes"),
        ]
        for body, message in cases:
            with self.assertRaises(BadProbeRequest, msg=repr(body)) as cm:
                parse_checkin_body(body)
            self.assertEqual(str(cm.exception), message)
        self.assertTrue(issubclass(BadProbeRequest, ValueError))


class ChooseLocationTests(SynchronousTestCase):
    def test_probe_defaults_use_geoip(self):
        """A probe that sent ZZ and AS0 gets the looked-up cc and asn."""
        self.assertEqual(choose_location(parse_checkin_body({}), GEO), ("US", 2149))
        self.assertEqual(
            choose_location(parse_checkin_body({}), ("ZZ", "AS0", None)), ("ZZ", 0)
        )

    def test_probe_values_win(self):
        """Otherwise the probe's own values are used, even when only one is known."""
        request = parse_checkin_body({"probe_cc": "IT", "probe_asn": "AS0"})
        self.assertEqual(choose_location(request, GEO), ("IT", 0))
        request = parse_checkin_body({"probe_asn": "AS1234"})
        self.assertEqual(choose_location(request, GEO), ("ZZ", 1234))


class CheckinV1Tests(SynchronousTestCase):
    def build(self, client_ip="1.2.3.4", cc="US", asn=1234, urls=URLS):
        return build_checkin_v1(GEO, cc, asn, urls, client_ip, "1", NOW)

    def test_keys(self):
        """The v1 response has exactly the documented keys."""
        response = self.build()
        self.assertEqual(
            set(response),
            {"v", "probe_cc", "probe_asn", "probe_network_name", "utc_time", "conf", "tests"},
        )
        self.assertEqual(set(response["conf"]), {"features", "test_helpers"})
        self.assertEqual(set(response["tests"]), set(CHECKIN_V1_TESTS))
        self.assertEqual(len(CHECKIN_V1_TESTS), 21)
        self.assertEqual(set(response["tests"]["web_connectivity"]), {"report_id", "urls"})
        for name in CHECKIN_V1_TESTS:
            if name != "web_connectivity":
                self.assertEqual(set(response["tests"][name]), {"report_id"}, name)
        json.dumps(response)  # serialisable as is

    def test_values(self):
        """The response reports the looked-up location, the time and the URLs."""
        response = self.build()
        self.assertEqual(response["v"], 1)
        self.assertEqual(
            (response["probe_cc"], response["probe_asn"], response["probe_network_name"]), GEO
        )
        self.assertEqual(response["utc_time"], "2023-09-27T10:00:00Z")
        self.assertEqual(len(response["utc_time"]), 20)
        self.assertEqual(response["tests"]["web_connectivity"]["urls"], URLS)
        self.assertEqual(response["conf"]["test_helpers"], test_helpers("1.2.3.4"))

    def test_report_ids(self):
        """Each test gets its own report_id for the chosen cc and asn."""
        response = self.build(cc="IT", asn=30722)
        ids = set()
        for name in CHECKIN_V1_TESTS:
            rid = response["tests"][name]["report_id"]
            parsed = parse_report_id(rid)
            self.assertEqual(parsed.testname, name.replace("_", ""))
            self.assertEqual((parsed.cc, parsed.asn, parsed.cid), ("IT", 30722, "1"))
            self.assertEqual(parsed.ts, "20230927T100000Z")
            ids.add(rid)
        self.assertEqual(len(ids), len(CHECKIN_V1_TESTS))

    def test_features(self):
        """torsf is on; webconnectivity_0.5 only for second octets 34 and 239."""
        self.assertEqual(self.build("1.2.3.4")["conf"]["features"], {"torsf_enabled": True})
        for ip in ("10.34.0.1", "10.239.7.7", "::ffff:10.34.0.1"):
            self.assertEqual(
                self.build(ip)["conf"]["features"],
                {"torsf_enabled": True, "webconnectivity_0.5": True},
                ip,
            )
        for ip in ("34.1.1.1", "2001:34::1", "bogus", None):
            self.assertNotIn("webconnectivity_0.5", self.build(ip)["conf"]["features"], ip)


class CheckinV2Tests(SynchronousTestCase):
    def build(self, client_ip="1.2.3.4"):
        return build_checkin_v2(GEO, "US", 1234, URLS, client_ip, "1", NOW)

    def test_keys(self):
        """The v2 response has nettests instead of tests and no torsf flag."""
        response = self.build()
        self.assertEqual(
            set(response),
            {"v", "probe_cc", "probe_asn", "probe_network_name", "utc_time", "conf", "nettests"},
        )
        self.assertEqual(response["v"], 2)
        self.assertEqual(set(response["conf"]), {"features", "test_helpers"})
        self.assertEqual(response["conf"]["features"], {})
        self.assertEqual(
            self.build("1.239.0.0")["conf"]["features"], {"webconnectivity_0.5": True}
        )
        json.dumps(response)

    def test_nettests(self):
        """33 nettests in the documented order, each with its report_id and targets."""
        nettests = self.build()["nettests"]
        self.assertEqual([n["test_name"] for n in nettests], list(CHECKIN_V2_NETTESTS))
        self.assertEqual(len(nettests), 33)
        self.assertEqual(nettests[0]["test_name"], "bridge_reachability")
        self.assertEqual(nettests[-1]["test_name"], "whatsapp")
        for n in nettests:
            self.assertEqual(set(n), {"test_name", "report_id", "targets"})
            parsed = parse_report_id(n["report_id"])
            self.assertEqual(
                (parsed.testname, parsed.cc, parsed.asn),
                (n["test_name"].replace("_", ""), "US", 1234),
            )

    def test_targets(self):
        """web_connectivity targets are the URLs; dnscheck and stunreachability the fixed inputs."""
        by_name = {n["test_name"]: n["targets"] for n in self.build()["nettests"]}
        self.assertEqual(
            by_name["web_connectivity"],
            [
                {
                    "attributes": {"category_code": "NEWS", "country_code": "XX"},
                    "input": "https://a.org/",
                    "options": {},
                },
                {
                    "attributes": {"category_code": "GRP", "country_code": "US"},
                    "input": "https://b.org/",
                    "options": {},
                },
            ],
        )
        dnscheck = by_name["dnscheck"]
        self.assertEqual(len(dnscheck), 42)
        self.assertEqual(
            dnscheck[0], {"attributes": {}, "input": "https://dns.google/dns-query", "options": {}}
        )
        self.assertEqual(dnscheck[-1]["input"], "dot://dns.switch.ch/dns-query")
        self.assertEqual([t["input"] for t in dnscheck], list(DNSCHECK_INPUTS))
        stun = by_name["stunreachability"]
        self.assertEqual(len(stun), 10)
        self.assertEqual([t["input"] for t in stun], list(STUNREACHABILITY_INPUTS))
        self.assertEqual(stun[0]["input"], "stun://stun.voip.blackberry.com:3478")
        for name, targets in by_name.items():
            if name not in ("web_connectivity", "dnscheck", "stunreachability"):
                self.assertEqual(targets, [], name)


class CollectorsTests(SynchronousTestCase):
    def test_default(self):
        """Without configuration the reference's three collectors are listed twice."""
        three = [
            {"address": "httpo://guegdifjy7bjpequ.onion", "type": "onion"},
            {"address": "https://ams-pg.ooni.org:443", "type": "https"},
            {
                "address": "https://dkyhjv0wpi2dk.cloudfront.net",
                "front": "dkyhjv0wpi2dk.cloudfront.net",
                "type": "cloudfront",
            },
        ]
        for configured in (None, "", [], [" "], " , "):
            self.assertEqual(collectors(configured), three + three, repr(configured))

    def test_configured(self):
        """Configured hosts are listed as https collectors, in order."""
        expected = [
            {"address": "https://a.example.org", "type": "https"},
            {"address": "https://b.example.org", "type": "https"},
        ]
        self.assertEqual(collectors(["a.example.org", "b.example.org"]), expected)
        self.assertEqual(collectors("a.example.org, b.example.org"), expected)


BOUNCER = {
    "net-tests": [
        {
            "collector": "httpo://guegdifjy7bjpequ.onion",
            "collector-alternate": [
                {"type": "https", "address": "https://ams-pg.ooni.org"},
                {
                    "front": "dkyhjv0wpi2dk.cloudfront.net",
                    "type": "cloudfront",
                    "address": "https://dkyhjv0wpi2dk.cloudfront.net",
                },
            ],
            "input-hashes": None,
            "name": "web_connectivity",
            "test-helpers": {
                "tcp-echo": "37.218.241.93",
                "http-return-json-headers": "http://37.218.241.94:80",
                "web-connectivity": "httpo://y3zq5fwelrzkkv3s.onion",
            },
            "test-helpers-alternate": {
                "web-connectivity": [
                    {"type": "https", "address": "https://wcth.ooni.io"},
                    {
                        "front": "d33d1gs9kpq1c5.cloudfront.net",
                        "type": "cloudfront",
                        "address": "https://d33d1gs9kpq1c5.cloudfront.net",
                    },
                ]
            },
            "version": "0.0.1",
        }
    ]
}


class BouncerTests(SynchronousTestCase):
    request = {
        "net-tests": [
            {
                "input-hashes": None,
                "name": "web_connectivity",
                "test-helpers": ["web-connectivity"],
                "version": "0.0.1",
            }
        ]
    }

    def test_response(self):
        """The bouncer answers the documented object for the first test."""
        self.assertEqual(bouncer_response(self.request), BOUNCER)
        self.assertEqual(bouncer_response(json.dumps(self.request).encode()), BOUNCER)

    def test_malformed(self):
        """Missing body, empty list or missing keys raise "Malformed request"."""
        for body in (
            b"",
            b"{not json",
            None,
            [],
            {},
            {"net-tests": []},
            {"net-tests": "abc"},
            {"net-tests": [{"name": "x"}]},
            {"net-tests": [{"version": "1"}]},
            {"net-tests": ["x"]},
        ):
            with self.assertRaises(BadProbeRequest, msg=repr(body)) as cm:
                bouncer_response(body)
            self.assertEqual(str(cm.exception), "Malformed request")


class OpenReportTests(SynchronousTestCase):
    def test_reference_example(self):
        """AS65550/IE/web_connectivity gives a 61-character id and the fixed fields."""
        body = {
            "data_format_version": "0.2.0",
            "format": "json",
            "probe_asn": "AS65550",
            "probe_cc": "IE",
            "software_name": "ooni-integ-test",
            "software_version": "0.0.0",
            "test_name": "web_connectivity",
            "test_start_time": "2020-09-09 14:11:11",
            "test_version": "0.1.0",
        }
        response = open_report(body, "1", NOW)
        self.assertEqual(set(response), {"backend_version", "report_id", "supported_formats"})
        self.assertEqual(response["backend_version"], "1.3.5")
        self.assertEqual(response["supported_formats"], ["yaml", "json"])
        rid = response["report_id"]
        self.assertIn("_webconnectivity_IE_65550_", rid)
        self.assertEqual(len(rid), 61)
        self.assertTrue(rid.startswith("20230927T100000Z_"))

    def test_normalisation(self):
        """Bad asn becomes 0, cc loses `_` and is upper-cased, test name lower-cased."""
        rid = open_report(
            {"probe_asn": "as12", "probe_cc": "i_t", "test_name": "NDT"}, "3", NOW
        )["report_id"]
        self.assertEqual(rid.split("_")[1:5], ["ndt", "IT", "12", "n3"])
        rid = open_report({"probe_asn": "12", "probe_cc": "ITA"}, "3", NOW)["report_id"]
        self.assertEqual(rid.split("_")[1:4], ["", "ZZ", "0"])
        rid = open_report({}, "3", NOW)["report_id"]
        self.assertEqual(rid.split("_")[2:4], ["ZZ", "0"])

    def test_invalid(self):
        """A non-object body or non-string fields raise BadProbeRequest."""
        for body, message in (
            ([], "JSON expected"),
            (None, "JSON expected"),
            ({"probe_cc": 5}, "Invalid probe_cc"),
            ({"probe_asn": ["AS1"]}, "Invalid probe_asn"),
            ({"test_name": {}}, "Invalid test_name"),
        ):
            with self.assertRaises(BadProbeRequest, msg=repr(body)) as cm:
                open_report(body, "1", NOW)
            self.assertEqual(str(cm.exception), message)


class ProbeCredentialClaimsTests(SynchronousTestCase):
    def test_client_id_claims(self):
        """The client id carries iat (integer Unix seconds) and aud probe_login only."""
        self.assertEqual(
            probe_client_id_claims(datetime(2012, 1, 14)),
            {"iat": 1326499200, "aud": "probe_login"},
        )
        aware = datetime(2012, 1, 14, 1, 0, 0, 999999, tzinfo=timezone(timedelta(hours=1)))
        self.assertEqual(probe_client_id_claims(aware)["iat"], 1326499200)

    def test_token_claims(self):
        """The probe token carries registration_time (or null) and aud probe_token, no exp."""
        self.assertEqual(
            probe_token_claims(1326499200),
            {"registration_time": 1326499200, "aud": "probe_token"},
        )
        self.assertEqual(
            probe_token_claims(None), {"registration_time": None, "aud": "probe_token"}
        )

    def test_expire(self):
        """The advisory expire string is now + 7 days as YYYY-MM-DDTHH:MM:SSZ."""
        self.assertEqual(probe_token_expire(NOW), "2023-10-04T10:00:00Z")
