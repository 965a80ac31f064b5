"""Tests for measurement scoring, blockpage fingerprints and fastpath rows.

Expected scores marked "reference" are transcribed from the unit tests of
the reference fastpath (ooni/backend fastpath/fastpath/tests/test_unit.py as
of the API commit the project follows) for the same measurements, which
tests/data/measurements/all.jsonl holds.
"""

import base64
import binascii
import copy
import csv
import json
import random
from datetime import datetime, timedelta, timezone

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from ooni_twisted.measurements.fastpath_row import (
    COLUMNS,
    NotAMeasurement,
    discard_reason,
    fastpath_row,
    parse_time,
)
from ooni_twisted.measurements.fingerprints import Fingerprints
from ooni_twisted.measurements.scoring import (
    failed_scores,
    flag_wrong_date,
    parse_start_time,
    score_measurement,
    uid_reception_time,
)

DATA = FilePath(__file__).sibling("data")
FP_DIR = DATA.child("fingerprints")

ZERO = {
    "blocking_general": 0.0,
    "blocking_global": 0.0,
    "blocking_country": 0.0,
    "blocking_isp": 0.0,
    "blocking_local": 0.0,
}
FAILED = dict(ZERO, accuracy=0.0)


def scores(**kw):
    """Zero scores updated with ``kw``."""
    out = dict(ZERO)
    out.update(kw)
    return out


def load_samples():
    """{file name: measurement} from all.jsonl and its index."""
    index = DATA.child("measurements").child("index.csv")
    with index.open("r") as f:
        names = [row["file"] for row in csv.DictReader(line.decode() for line in f)]
    lines = DATA.child("measurements").child("all.jsonl").getContent().splitlines()
    assert len(names) == len(lines)
    return {name: json.loads(line) for name, line in zip(names, lines)}


def load_fingerprints(strict=False):
    return Fingerprints.from_files(
        FP_DIR.child("fingerprints_dns.json").path,
        FP_DIR.child("fingerprints_http.json").path,
        strict=strict,
    )


UID = "20250601120000.123456_IT_webconnectivity_0123456789abcdef"
RECEIVED = datetime(2025, 6, 1, 12, 0, 0, 123456)


class _Shared:
    """Data loaded once per test class (trial has no setUpClass), kept on it."""

    def setUp(self):
        cls = type(self)
        if "samples" not in cls.__dict__:
            cls.samples = load_samples()
            cls.fps = load_fingerprints()

    def score(self, name):
        return score_measurement(copy.deepcopy(self.samples[name]), self.fps)


# Reference expectations for sample measurements (test_unit.py).
REFERENCE = {
    "telegram_nourl.json": FAILED,
    "http_header_field_manipulation_1.json": FAILED,
    "http_header_field_manipulation_2.json": FAILED,
    "http_header_field_manipulation_3.json": FAILED,
    "whatsapp.json": scores(
        analysis={
            "registration_server_accessible": True,
            "whatsapp_endpoints_accessible": True,
            "whatsapp_web_accessible": True,
        }
    ),
    "vanilla_tor.json": scores(blocking_general=0.98),
    "vanilla_tor_ok.json": scores(),
    "web_connectivity_odd_hdr.json": scores(
        blocking_general=1.0, analysis={"blocking_type": "dns"}
    ),
    "web_connectivity_no_body.json": scores(),
    "web_connectivity_null.json": FAILED,
    "web_connectivity_null2.json": FAILED,
    "tor.json": scores(extra={"test_runtime": 0.767114298}),
    "tor_list.json": FAILED,
    "riseupvpn.json": scores(blocking_general=1.0, extra={"test_runtime": 1.076507343}),
    "meek.json": scores(blocking_general=1.0),
    "meek2.json": scores(),
    "meek3.json": scores(blocking_general=0.5),
    "http_requests_1.json": FAILED,
    "signal_022.json": scores(),
    "signal_679.json": scores(
        accuracy=0.0,
        blocking_general=1.0,
        analysis={"signal_backend_failure": "android_dns_cache_no_data"},
    ),
    "torsf_1.json": scores(blocking_general=1.0),
    "torsf_2.json": scores(
        extra={"bootstrap_time": 78.980935917, "test_runtime": 79.196301917}
    ),
    "torsf_383.json": FAILED,
    "openvpn.json": scores(extra={"test_runtime": 37.975210163}),
    "browser_web.json": scores(
        extra={"browser_name": "chrome", "load_time_ms": 357.40000000037253}
    ),
    "browser_web_error.json": scores(
        blocking_general=1.0, extra={"browser_name": "chrome", "load_time_ms": 680}
    ),
    "bug_351.json": scores(
        blocking_general=1.0,
        analysis={"blocking_type": "http-failure"},
        accuracy=0.0,
    ),
    "bug_352.json": scores(
        blocking_general=2.0,
        blocking_country=1.0,
        analysis={"blocking_type": "dns"},
        confirmed=True,
        fingerprints=[
            {
                "confidence_no_fp": 10,
                "expected_countries": ["IR"],
                "location_found": "dns",
                "name": "ooni.ir_10dot10_ipv4_1",
                "scope": "nat",
            }
        ],
    ),
    "web_connectivity_ir_fp.json": scores(
        blocking_general=2.0,
        blocking_country=1.0,
        analysis={"blocking_type": "dns"},
        confirmed=True,
        fingerprints=[
            {
                "confidence_no_fp": 10,
                "expected_countries": ["IR"],
                "location_found": "dns",
                "name": "ooni.ir_10dot10_ipv4_1",
                "scope": "nat",
            }
        ],
    ),
    "requests_none.json": scores(
        blocking_general=1.0, analysis={"blocking_type": "dns"}
    ),
    "test_keys_none.json": FAILED,
}


class ReferenceScoresTests(_Shared, SynchronousTestCase):
    """Scores of the sample measurements pinned by the reference unit tests."""

    def test_reference_expectations(self):
        """Every measurement pinned by the reference gets exactly its scores."""
        self.assertEqual(len(REFERENCE), 31)
        for name, expected in REFERENCE.items():
            self.assertEqual(self.score(name), expected, name)

    def test_b64_incorrect_padding(self):
        """A base64 body with bad padding gives failed but present scores."""
        got = self.score("web_connectivity_b64_incorrect.json")
        self.assertEqual(got["accuracy"], 0.0)
        self.assertNotIn("fingerprints", got)

    def test_header_fingerprint_confirms(self):
        """A redirect to the Indonesian blockpage is confirmed by its Location header."""
        got = self.score(
            "20250527233111.802678_ID_webconnectivity_5a37ec909dbf14e3.json"
        )
        self.assertEqual(
            got,
            scores(
                blocking_general=1.0,
                blocking_country=1.0,
                confirmed=True,
                fingerprints=[
                    {
                        "name": "ooni.id_lamanlabuh_kominfo",
                        "scope": "nat",
                        "location_found": "header.location",
                        "confidence_no_fp": 5,
                        "expected_countries": ["ID"],
                    }
                ],
            ),
        )

    def test_signal_old_test_version(self):
        """A signal test older than 0.2.2 run after 2022-10-19 is a failure."""
        got = self.score("signal_2627.json")
        self.assertEqual(got["accuracy"], 0.0)
        self.assertEqual(
            got["analysis"], {"signal_backend_failure": "ssl_unknown_authority"}
        )

    def test_legacy_tests(self):
        """Legacy http_requests and dns_consistency samples score as clean."""
        self.assertEqual(self.score("yaml16_0.json"), scores())
        self.assertEqual(self.score("yaml17_0.json"), scores())

    def test_http_invalid_request_line_tampering(self):
        """Differences between sent and echoed request lines are anomalies."""
        self.assertEqual(self.score("mbx-1.json"), scores(blocking_general=1.0))
        self.assertEqual(self.score("mbx-2.json"), scores(blocking_general=1.0))


class AllSamplesTests(_Shared, SynchronousTestCase):
    """Every sample line is scored and becomes a well-typed fastpath row."""

    def test_every_line_scores_and_rows(self):
        """No sample raises; each row has exactly the fastpath columns and types."""
        types = {
            "probe_asn": int,
            "test_start_time": datetime,
            "measurement_start_time": datetime,
            "blocking_general": float,
            "is_ssl_expected": int,
            "page_len": int,
            "page_len_ratio": float,
            "server_asn": int,
            "test_runtime": float,
        }
        self.assertEqual(len(self.samples), 43)
        for name, msm in self.samples.items():
            original = copy.deepcopy(msm)
            got = score_measurement(msm, self.fps)
            self.assertEqual(msm, original, f"{name} was modified")
            flag_wrong_date(got, msm, RECEIVED)
            row = fastpath_row(msm, UID, got)
            self.assertEqual(tuple(row), COLUMNS, name)
            for col, value in row.items():
                self.assertIsInstance(value, types.get(col, str), (name, col))
            self.assertIsNone(row["measurement_start_time"].tzinfo)
            self.assertIn(row["anomaly"], ("t", "f"))
            self.assertEqual(json.loads(row["scores"]), got)
            self.assertIsNone(discard_reason(msm), name)

    def test_sample_flags(self):
        """anomaly/confirmed/msm_failure follow the scores of each sample."""
        row = fastpath_row(
            self.samples["bug_352.json"], UID, self.score("bug_352.json")
        )
        self.assertEqual((row["anomaly"], row["confirmed"], row["msm_failure"]),
                         ("t", "t", "f"))
        self.assertEqual(row["blocking_type"], "dns")
        self.assertEqual(row["probe_asn"], 197207)
        row = fastpath_row(
            self.samples["bug_351.json"], UID, self.score("bug_351.json")
        )
        self.assertEqual((row["anomaly"], row["confirmed"], row["msm_failure"]),
                         ("t", "f", "t"))

    def test_openvpn_row(self):
        """The openvpn sample gives the row the reference inserts for it."""
        msm = self.samples["openvpn.json"]
        row = fastpath_row(msm, "bogus_uid", self.score("openvpn.json"))
        expected = {
            "measurement_uid": "bogus_uid",
            "report_id": "",
            "input": "vpn://openvpn.riseup/?addr=198.252.153.109:443"
            "&transport=tcp&obfs=obfs4",
            "probe_cc": "RO",
            "probe_asn": 9009,
            "test_name": "openvpn",
            "test_start_time": datetime(2022, 11, 21, 17, 22, 11),
            "measurement_start_time": datetime(2022, 11, 21, 17, 22, 49),
            "platform": "linux",
            "anomaly": "f",
            "confirmed": "f",
            "msm_failure": "f",
            "blocking_type": "",
            "domain": "openvpn.riseup",
            "software_name": "miniooni",
            "software_version": "3.17.0-alpha",
            "test_version": "0.0.16",
            "test_runtime": 37.975210163,
            "architecture": "amd64",
            "engine_name": "ooniprobe-engine",
            "engine_version": "3.17.0-alpha",
        }
        self.assertEqual({k: row[k] for k in expected}, expected)
        self.assertEqual(
            row["scores"],
            '{"blocking_country":0.0,"blocking_general":0.0,"blocking_global":0.0,'
            '"blocking_isp":0.0,"blocking_local":0.0,'
            '"extra":{"test_runtime":37.975210163}}',
        )

    def test_browser_web_row(self):
        """A measurement without annotations gets platform unset and empty engine."""
        row = fastpath_row(
            self.samples["browser_web.json"], UID, self.score("browser_web.json")
        )
        self.assertEqual(row["platform"], "unset")
        self.assertEqual(row["engine_name"], "")
        self.assertEqual(row["domain"], "www.viber.com")
        self.assertEqual(row["test_start_time"], datetime(2023, 3, 20, 18, 26, 35))

    def test_meek_list_input(self):
        """A meek list input is stored as {a,b} with its first host as domain."""
        row = fastpath_row(self.samples["meek3.json"], UID, self.score("meek3.json"))
        self.assertEqual(row["input"], "{ajax.aspnetcdn.com,az668014.vo.msecnd.net}")
        self.assertEqual(row["domain"], "ajax.aspnetcdn.com")
        # meek3 has no probe_cc / probe_asn at all
        self.assertEqual((row["probe_cc"], row["probe_asn"]), ("", 0))

    def test_test_helper_columns(self):
        """test_helpers.backend gives the test helper address and type."""
        row = fastpath_row(
            self.samples["bug_352.json"], UID, self.score("bug_352.json")
        )
        self.assertEqual(row["test_helper_address"], "https://wcth.ooni.io")
        self.assertEqual(row["test_helper_type"], "https")

    def test_non_url_input_has_no_domain(self):
        """A hostname input (dns_consistency) has an empty domain."""
        row = fastpath_row(self.samples["yaml17_0.json"], UID, scores())
        self.assertEqual((row["input"], row["domain"]), ("google.com", ""))


class WebConnectivityTests(_Shared, SynchronousTestCase):
    """web_connectivity scoring with crafted measurements (reference cases)."""

    def wc(self, cc, test_keys, **extra):
        msm = {
            "input": "foo",
            "measurement_start_time": "",
            "probe_asn": "1",
            "report_id": "123",
            "test_name": "web_connectivity",
            "test_start_time": "",
            "probe_cc": cc,
            "test_keys": test_keys,
        }
        msm.update(extra)
        return score_measurement(msm, self.fps)

    def test_empty_test_keys(self):
        """No blocking verdict and no fingerprint is a failed measurement."""
        self.assertEqual(self.wc("IE", {}), FAILED)

    def test_confirmed_body(self):
        """An Italian blockpage body confirms country-level blocking in IT."""
        got = self.wc(
            "IT",
            {
                "requests": [{"response": {"body": "GdF Stop Page"}}],
                "blocking": False,
                "accessible": True,
            },
        )
        self.assertEqual(
            got,
            scores(
                blocking_general=1.0,
                blocking_country=1.0,
                confirmed=True,
                fingerprints=[
                    {
                        "confidence_no_fp": 5,
                        "expected_countries": ["IT"],
                        "location_found": "body",
                        "name": "ooni.it_0",
                        "scope": "nat",
                    }
                ],
            ),
        )

    def test_missing_probe_cc_fails(self):
        """Without probe_cc the reference cannot score: failed scores."""
        msm = {"test_name": "web_connectivity", "test_keys": {"blocking": "dns"}}
        self.assertEqual(score_measurement(msm, self.fps), FAILED)

    def test_unknown_failure(self):
        """An unknown_failure in a *_failure key makes the measurement failed."""
        got = self.wc("IT", {"blocking": False, "http_experiment_failure": "unknown_failure x"})
        self.assertEqual(got, FAILED)

    def test_unsupported_blocking_value(self):
        """An unexpected blocking value is reported and failed."""
        got = self.wc("IT", {"blocking": "weird"})
        self.assertEqual(
            got, scores(accuracy=0.0, analysis={"msg": "Unsupported blocking type"})
        )

    def test_bad_title_match(self):
        """A non-boolean title_match is failed before anything else."""
        self.assertEqual(self.wc("IT", {"title_match": "x", "blocking": "dns"}), FAILED)

    def test_blocking_none_but_confirmed(self):
        """blocking null with a confirmed fingerprint is trusted (not failed)."""
        got = self.wc(
            "MY",
            {
                "blocking": None,
                "accessible": None,
                "requests": [{"response": {"body": "x Makluman/Notification y"}}],
            },
        )
        self.assertNotIn("accuracy", got)
        self.assertTrue(got["confirmed"])
        self.assertEqual(got["blocking_general"], 1.0)

    def test_no_fingerprints(self):
        """Without fingerprints nothing is confirmed but the rest is scored."""
        msm = {
            "test_name": "web_connectivity",
            "probe_cc": "IT",
            "test_keys": {
                "blocking": "http-diff",
                "requests": [{"response": {"body": "GdF Stop Page"}}],
            },
        }
        self.assertEqual(
            score_measurement(msm, None),
            scores(blocking_general=1.0, analysis={"blocking_type": "http-diff"}),
        )

    def test_bad_base64_body(self):
        """A body that is not base64 makes a failed, fingerprint-less score."""
        got = self.wc(
            "IT",
            {
                "blocking": "dns",
                "requests": [
                    {"response": {"body": {"format": "base64", "data": "abc"}}}
                ],
            },
        )
        self.assertEqual(
            got, scores(blocking_general=1.0, analysis={"blocking_type": "dns"}, accuracy=0.0)
        )


def _fp(name, location, ptype, pattern, scope="isp", cc="", conf=5):
    return {
        "name": name,
        "scope": scope,
        "other_names": "",
        "location_found": location,
        "pattern_type": ptype,
        "pattern": pattern,
        "confidence_no_fp": conf,
        "expected_countries": cc,
    }


PATTERN_TYPE_FPS = [
    _fp("body_full", "body", "full", "<HTML></HTML>"),
    _fp("body_prefix", "body", "prefix", "<html>Stop"),
    _fp("body_contains", "body", "contains", "Access denied by policy"),
    _fp("body_regexp", "body", "regexp", "blocked by .* gateway"),
    _fp("hdr_full", "header.server", "full", "BlockServer/1.0"),
    _fp("hdr_prefix", "header.location", "prefix", "http://block.example/"),
    _fp("hdr_contains", "header.location", "contains", "warning.example"),
    _fp("hdr_regexp", "header.via", "regexp", "^1\\.1 filter-[0-9]+$"),
]


def _names(matches):
    return [m["name"] for m in matches]


class FingerprintTests(_Shared, SynchronousTestCase):
    """Compiled fingerprint matching, as the reference matches."""

    def test_counts(self):
        """The shipped fingerprint files load completely."""
        self.assertEqual(len(self.fps), 150 + 1699)

    def test_no_match(self):
        """A measurement without DNS answers or responses matches nothing."""
        self.assertEqual(self.fps.match_web_connectivity({"requests": []}), [])

    def test_body_match(self):
        """A body containing a national blockpage string matches it."""
        got = self.fps.match_web_connectivity(
            {"requests": [{"response": {"body": "foo ... Makluman/Notification ... foo"}}]}
        )
        self.assertEqual(
            got,
            [
                {
                    "confidence_no_fp": 5,
                    "expected_countries": ["MY"],
                    "location_found": "body",
                    "name": "ooni.my_0",
                    "scope": "nat",
                }
            ],
        )

    def test_dns_match(self):
        """A DNS answer equal to a poisoned address matches; a CNAME does not."""
        tk = {
            "queries": [
                {
                    "hostname": "beeg.com",
                    "answers": [
                        {"hostname": "beeg.com", "answer_type": "CNAME", "ttl": 0},
                        {"ipv4": "195.175.254.2", "answer_type": "A", "ttl": 0},
                    ],
                }
            ]
        }
        self.assertEqual(
            self.fps.match_web_connectivity(tk),
            [
                {
                    "confidence_no_fp": 5,
                    "expected_countries": ["TR"],
                    "location_found": "dns",
                    "name": "ooni.tr_6",
                    "scope": "nat",
                }
            ],
        )

    def test_dns_answer_kinds(self):
        """ipv4 wins over hostname, which wins over ipv6; odd answers are skipped."""
        fps = Fingerprints.from_lists(
            [_fp("a", "dns", "full", "1.2.3.4"), _fp("b", "dns", "full", "::1")], []
        )
        self.assertEqual(_names(fps.match_dns_answer({"ipv4": "1.2.3.4", "ipv6": "::1"})), ["a"])
        self.assertEqual(_names(fps.match_dns_answer({"ipv6": "::1"})), ["b"])
        self.assertEqual(fps.match_dns_answer({"hostname": "x", "ipv6": "::1"}), [])
        self.assertEqual(fps.match_dns_answer({"ipv4": None}), [])
        self.assertEqual(fps.match_dns_queries([None, {"answers": None}, "x"]), [])

    def test_base64_body_without_match(self):
        """A base64 body is decoded and searched (here: no match)."""
        body = {
            "data": "q82BgAABAAEAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQABwAwAAQABAAA/+AAEXbjYIg==",
            "format": "base64",
        }
        self.assertEqual(self.fps.match_body(body), [])

    def test_base64_body_match(self):
        """A blockpage string inside a base64 body (with UTF-8) is found."""
        text = "é Makluman/Notification ü"
        body = {
            "format": "base64",
            "data": base64.b64encode(text.encode("utf-8")).decode(),
        }
        self.assertEqual(_names(self.fps.match_body(body)), ["ooni.my_0"])

    def test_base64_headers_sample(self):
        """The reference's base64-header sample matches nothing."""
        tk = self.samples["web_connectivity_b64_hdr.json"]["test_keys"]
        self.assertEqual(self.fps.match_web_connectivity(tk), [])

    def test_bad_base64_raises(self):
        """Undecodable base64 raises binascii.Error, as the reference does."""
        self.assertRaises(
            binascii.Error, self.fps.match_body, {"format": "base64", "data": "abc"}
        )

    def test_other_dict_body(self):
        """A dict body that is not base64 is ignored."""
        self.assertEqual(self.fps.match_body({"data": "x"}), [])

    def test_expected_countries(self):
        """expected_countries is split, upper-cased, without ZZ, sorted."""
        fps = Fingerprints.from_lists(
            [
                _fp("a", "dns", "full", "1", cc=""),
                _fp("b", "dns", "full", "2", cc=",ru"),
                _fp("c", "dns", "full", "3", cc="AU,DE,DK,FR "),
                _fp("d", "dns", "full", "4", cc="ZZ,IT"),
            ],
            [],
        )
        got = [fps.match_dns_answer({"ipv4": ip})[0]["expected_countries"] for ip in "1234"]
        self.assertEqual(got, [[], ["RU"], ["AU", "DE", "DK", "FR"], ["IT"]])

    def test_summary_is_a_copy(self):
        """Changing a returned match does not change later matches."""
        fps = Fingerprints.from_lists([_fp("a", "dns", "full", "1", cc="IT")], [])
        first = fps.match_dns_answer({"ipv4": "1"})[0]
        first["expected_countries"].append("XX")
        first["name"] = "changed"
        self.assertEqual(
            fps.match_dns_answer({"ipv4": "1"}),
            [
                {
                    "name": "a",
                    "scope": "isp",
                    "location_found": "dns",
                    "confidence_no_fp": 5,
                    "expected_countries": ["IT"],
                }
            ],
        )

    def test_order_and_duplicates(self):
        """Matches come as DNS, then body, then headers, each in list order."""
        fps = Fingerprints.from_lists(
            [_fp("d2", "dns", "full", "9.9.9.9"), _fp("d1", "dns", "full", "9.9.9.9")],
            [
                _fp("h", "header.location", "prefix", "http://b/"),
                _fp("b2", "body", "contains", "zeta"),
                _fp("b1", "body", "contains", "alpha"),
            ],
        )
        tk = {
            "queries": [{"answers": [{"ipv4": "9.9.9.9"}, {"ipv4": "9.9.9.9"}]}],
            "requests": [
                {"response": {"body": "alpha zeta", "headers": {"Location": "http://b/x"}}},
                {"response": None},
                {"response": {"body": "alpha"}},
            ],
        }
        self.assertEqual(
            _names(fps.match_web_connectivity(tk)),
            ["d2", "d1", "d2", "d1", "b2", "b1", "h", "b1"],
        )

    def test_reference_pattern_types(self):
        """Default mode: body patterns are substrings; headers full/prefix only."""
        fps = Fingerprints.from_lists([], PATTERN_TYPE_FPS)
        body = "xx <HTML></HTML> Access denied by policy blocked by .* gateway <html>Stop"
        self.assertEqual(
            _names(fps.match_body(body)),
            ["body_full", "body_prefix", "body_contains", "body_regexp"],
        )
        # the regexp text is not used as a regexp, "full" not as equality
        self.assertEqual(_names(fps.match_body("blocked by the gateway")), [])
        headers = {
            "Server": "BlockServer/1.0",
            "LOCATION": "http://block.example/page?warning.example",
            "Via": "1.1 filter-12",
        }
        self.assertEqual(_names(fps.match_headers(headers)), ["hdr_full", "hdr_prefix"])
        self.assertEqual(_names(fps.match_headers({"Server": "BlockServer/1.0 x"})), [])

    def test_reference_base64_header(self):
        """A base64 header value is decoded (latin-1) for prefix patterns only."""
        fps = Fingerprints.from_lists([], PATTERN_TYPE_FPS)
        enc = base64.b64encode(b"http://block.example/\xe9").decode()
        got = fps.match_headers({"Location": {"format": "base64", "data": enc}})
        self.assertEqual(_names(got), ["hdr_prefix"])
        enc = base64.b64encode(b"BlockServer/1.0").decode()
        self.assertEqual(fps.match_headers({"Server": {"format": "base64", "data": enc}}), [])

    def test_strict_pattern_types(self):
        """Strict mode honours full, prefix, contains and regexp everywhere."""
        fps = Fingerprints.from_lists([], PATTERN_TYPE_FPS, strict=True)
        self.assertEqual(_names(fps.match_body("<HTML></HTML>")), ["body_full"])
        self.assertEqual(_names(fps.match_body(" <HTML></HTML>")), [])
        self.assertEqual(_names(fps.match_body("<html>Stop here")), ["body_prefix"])
        self.assertEqual(_names(fps.match_body("x <html>Stop")), [])
        self.assertEqual(
            _names(fps.match_body("a Access denied by policy b")), ["body_contains"]
        )
        self.assertEqual(_names(fps.match_body("blocked by the gateway")), ["body_regexp"])
        headers = {
            "Server": "BlockServer/1.0",
            "Location": "https://x/?warning.example",
            "Via": "1.1 filter-12",
        }
        self.assertEqual(
            _names(fps.match_headers(headers)), ["hdr_full", "hdr_contains", "hdr_regexp"]
        )
        enc = base64.b64encode(b"BlockServer/1.0").decode()
        got = fps.match_headers({"Server": {"format": "base64", "data": enc}})
        self.assertEqual(_names(got), ["hdr_full"])

    def test_strict_dns_types(self):
        """Strict mode applies prefix, contains and regexp to DNS answers."""
        fps = Fingerprints.from_lists(
            [
                _fp("full", "dns", "full", "10.10.34.36"),
                _fp("prefix", "dns", "prefix", "10.10."),
                _fp("contains", "dns", "contains", ".34."),
                _fp("regexp", "dns", "regexp", "^10\\.10\\.[0-9]+\\.36$"),
            ],
            [],
            strict=True,
        )
        self.assertEqual(
            _names(fps.match_dns_answer({"ipv4": "10.10.34.36"})),
            ["full", "prefix", "contains", "regexp"],
        )
        self.assertEqual(_names(fps.match_dns_answer({"ipv4": "10.10.1.2"})), ["prefix"])

    def test_bad_fingerprints(self):
        """Malformed fingerprint lists raise ValueError."""
        self.assertRaises(ValueError, Fingerprints.from_lists, {}, [])
        self.assertRaises(ValueError, Fingerprints.from_lists, [], ["x"])
        self.assertRaises(ValueError, Fingerprints.from_lists, [], [{"name": "x"}])
        bad = [_fp("r", "body", "regexp", "(")]
        self.assertRaises(ValueError, Fingerprints.from_lists, [], bad, strict=True)
        Fingerprints.from_lists([], bad)  # never used as a regexp by default
        self.assertRaises(
            ValueError,
            Fingerprints.from_lists,
            [],
            [_fp("t", "body", "glob", "*")],
            strict=True,
        )

    def test_bad_file(self):
        """A fingerprint file that is not JSON raises ValueError."""
        path = FilePath(self.mktemp())
        path.setContent(b"not json")
        self.assertRaises(ValueError, Fingerprints.from_files, path.path, path.path)

    def test_body_index_is_exact(self):
        """The tokenised body search finds exactly what a plain substring scan finds."""
        patterns = [
            fp["pattern"]
            for fp in json.loads(FP_DIR.child("fingerprints_http.json").getContent())
            if fp["location_found"] == "body"
        ]
        names = [
            fp["name"]
            for fp in json.loads(FP_DIR.child("fingerprints_http.json").getContent())
            if fp["location_found"] == "body"
        ]
        bodies = []
        for msm in self.samples.values():
            for req in (msm.get("test_keys") or {}).get("requests") or []:
                body = (req.get("response") or {}).get("body")
                if isinstance(body, str):
                    bodies.append(body)
        rnd = random.Random(7)
        glue = ["", " ", "x", "<", "é", "Z", "_", "\n"]
        for _ in range(400):
            parts = []
            for _ in range(rnd.randint(1, 6)):
                p = rnd.choice(patterns)
                if rnd.random() < 0.5:
                    a = rnd.randint(0, len(p))
                    p = p[a : rnd.randint(a, len(p))]
                parts.append(p)
                parts.append(rnd.choice(glue))
            bodies.append("".join(parts))
        found_any = 0
        for body in bodies:
            expected = [n for n, p in zip(names, patterns) if p in body]
            got = [m["name"] for m in self.fps.match_body(body)]
            self.assertEqual(got, expected, body[:200])
            found_any += bool(expected)
            b64 = {"format": "base64", "data": base64.b64encode(body.encode()).decode()}
            self.assertEqual([m["name"] for m in self.fps.match_body(b64)], expected)
        self.assertGreater(found_any, 100)

    def test_empty_pattern(self):
        """An empty body pattern matches every body, as a substring search would."""
        fps = Fingerprints.from_lists([], [_fp("e", "body", "contains", "")])
        self.assertEqual(_names(fps.match_body("anything")), ["e"])
        self.assertEqual(fps.match_body(None), [])


class ConfirmationTests(SynchronousTestCase):
    """Which matched fingerprints confirm blocking, and at which locality."""

    def score_with(self, cc, scope, expected_countries):
        fps = Fingerprints.from_lists(
            [], [_fp("f", "body", "contains", "BLOCKPAGE", scope=scope, cc=expected_countries)]
        )
        msm = {
            "test_name": "web_connectivity",
            "probe_cc": cc,
            "test_keys": {
                "blocking": False,
                "requests": [{"response": {"body": "a BLOCKPAGE b"}}],
            },
        }
        return score_measurement(msm, fps)

    def test_expected_country(self):
        """A fingerprint expected in the probe's country confirms (any scope)."""
        got = self.score_with("IT", "bogus", "IT")
        self.assertTrue(got["confirmed"])
        self.assertEqual(got["blocking_general"], 1.0)

    def test_other_country(self):
        """A fingerprint expected elsewhere, with a weak scope, does not confirm."""
        got = self.score_with("IT", "bogus", "FR")
        self.assertNotIn("confirmed", got)
        self.assertEqual(len(got["fingerprints"]), 1)
        self.assertEqual(got["blocking_general"], 0.0)

    def test_zz_never_expected(self):
        """ZZ is never an expected country."""
        self.assertNotIn("confirmed", self.score_with("ZZ", "bogus", "ZZ"))

    def test_national_and_isp_scopes(self):
        """nat and isp fingerprints confirm in any country, at their locality."""
        got = self.score_with("IT", "nat", "")
        self.assertEqual((got["blocking_country"], got["blocking_general"]), (1.0, 1.0))
        got = self.score_with("IT", "isp", "FR")
        self.assertEqual((got["blocking_isp"], got["blocking_general"]), (1.0, 1.0))

    def test_inst_and_prod_scopes(self):
        """inst confirms locally, prod generally, when the country is expected."""
        got = self.score_with("it", "inst", "IT")
        self.assertEqual((got["blocking_local"], got["blocking_general"]), (1.0, 1.0))
        got = self.score_with("IT", "prod", "IT")
        self.assertEqual(got["blocking_general"], 1.0)
        self.assertTrue(got["confirmed"])


class OtherTestsScoringTests(SynchronousTestCase):
    """Scorers of tests without a sample measurement, and the fallbacks."""

    def test_stunreachability(self):
        """stunreachability reports the endpoint and fails on any failure."""
        ok = {"test_name": "stunreachability",
              "test_keys": {"endpoint": "stun.l.google.com:19302", "failure": None}}
        self.assertEqual(
            score_measurement(ok), scores(extra={"endpoint": "stun.l.google.com:19302"})
        )
        bad = {"test_name": "stunreachability", "test_keys": {"failure": "boo"}}
        self.assertEqual(
            score_measurement(bad),
            scores(blocking_general=1.0, extra={"endpoint": None, "failure": "boo"}),
        )

    def test_dash(self):
        """dash: no keys fails; network errors score 0.1; others are probe errors."""
        self.assertEqual(score_measurement({"test_name": "dash"}), FAILED)
        got = score_measurement({"test_name": "dash", "test_keys": {"failure": "eof_error"}})
        self.assertEqual(got, scores(blocking_general=0.1, accuracy=0.0))
        got = score_measurement(
            {"test_name": "dash", "test_keys": {"failure": "ssl_error: x"}}
        )
        self.assertEqual(got, scores(blocking_general=0.1, accuracy=0.0))
        got = score_measurement({"test_name": "dash", "test_keys": {"failure": "odd"}})
        self.assertEqual(got, scores(msg="Probe error", accuracy=0.0))
        got = score_measurement({"test_name": "dash", "test_keys": {"failure": None, "x": 1}})
        self.assertEqual(got, scores())

    def test_ndt(self):
        """ndt has no scoring: empty scores, so neither anomaly nor failure."""
        msm = {"test_name": "ndt", "report_id": "r", "test_keys": {}}
        self.assertEqual(score_measurement(msm), {})
        row = fastpath_row(msm, UID, {})
        self.assertEqual((row["anomaly"], row["msm_failure"]), ("f", "f"))

    def test_unsupported_tests(self):
        """dnscheck and unknown tests get the failed scores, as in the reference."""
        for name in ("dnscheck", "dns_injection", "bogus", None, 3):
            self.assertEqual(score_measurement({"test_name": name}), FAILED)
        self.assertEqual(score_measurement({}), FAILED)

    def test_tcp_connect(self):
        """tcp_connect: success clean, known errors 0.8, others 1.0, no input fails."""
        def tc(conn, inp="1.2.3.4:443"):
            return score_measurement(
                {"test_name": "tcp_connect", "input": inp, "test_keys": {"connection": conn}}
            )
        self.assertEqual(tc("success"), scores())
        self.assertEqual(tc("generic_timeout_error"), scores(blocking_general=0.8))
        self.assertEqual(tc("connection_refused_error"), scores(blocking_general=0.8))
        self.assertEqual(tc("weird"), scores(blocking_general=1.0))
        self.assertEqual(tc("success", inp=""), FAILED)

    def test_psiphon(self):
        """psiphon: failures block; missing resolver_ip fails; extra has times."""
        base = {"test_name": "psiphon", "test_runtime": 7.1, "resolver_ip": "1.1.1.1"}
        got = score_measurement(dict(base, test_keys={"failure": None, "bootstrap_time": 6.3}))
        self.assertEqual(
            got, scores(accuracy=1.0, extra={"test_runtime": 7.1, "bootstrap_time": 6.3})
        )
        got = score_measurement(dict(base, test_keys={"failure": "x"}))
        self.assertEqual(
            got,
            scores(blocking_general=1.0, accuracy=1.0,
                   extra={"test_runtime": 7.1, "bootstrap_time": 0}),
        )
        del base["resolver_ip"]
        got = score_measurement(dict(base, test_keys={"failure": None, "bootstrap_time": 6.3}))
        self.assertEqual(got["accuracy"], 0.0)

    def test_facebook_messenger(self):
        """Each inconsistency adds 0.5; the all-consistent false positive is 0."""
        keys = {
            "facebook_b_api_dns_consistent": True,
            "facebook_b_api_reachable": True,
            "facebook_b_graph_dns_consistent": True,
            "facebook_b_graph_reachable": True,
            "facebook_dns_blocking": True,
            "facebook_edge_dns_consistent": True,
            "facebook_edge_reachable": True,
            "facebook_star_dns_consistent": True,
            "facebook_star_reachable": True,
            "facebook_stun_dns_consistent": True,
            "facebook_tcp_blocking": False,
        }
        msm = {"test_name": "facebook_messenger", "test_keys": keys}
        self.assertEqual(score_measurement(msm), scores())
        keys = dict(keys, facebook_edge_reachable=False)
        got = score_measurement({"test_name": "facebook_messenger", "test_keys": keys})
        self.assertEqual(
            got,
            scores(blocking_general=1.0, facebook_edge_reachable=False,
                   facebook_dns_blocking=True),
        )

    def test_telegram(self):
        """telegram adds unreachable and failed fractions and a blocked web app."""
        tk = {
            "telegram_web_status": "blocked",
            "tcp_connect": [
                {"status": {"success": True}},
                {"status": {"success": False}},
            ],
            "requests": [
                {"request": {"url": "http://149.154.175.50/"}, "failure": None},
                {"request": {"url": "https://web.telegram.org/"}, "failure": "eof"},
            ],
        }
        got = score_measurement({"test_name": "telegram", "test_keys": tk})
        self.assertEqual(
            got,
            scores(
                blocking_general=1.5,
                web_failure="eof",
                accessible_endpoints=1,
                unreachable_endpoints=1,
                http_success_cnt=1,
                http_failure_cnt=0,
                msg="failure: eof",
            ),
        )

    def test_hhfm_tampering(self):
        """Changed request headers seen by the helper are an anomaly."""
        sent = {"Accept": "*/*", "User-Agent": "x"}
        echoed = {"headers_dict": {"Accept": ["*/*"], "User-agent": ["x"]}}
        msm = {
            "test_name": "http_header_field_manipulation",
            "report_id": "r",
            "test_keys": {
                "requests": [
                    {"request": {"headers": sent},
                     "response": {"body": json.dumps(echoed)}}
                ]
            },
        }
        got = score_measurement(msm)
        self.assertEqual(got, scores(blocking_general=1.1, msg="2 unexpected header change"))
        msm["test_keys"]["requests"][0]["response"]["body"] = "{"
        self.assertEqual(
            score_measurement(msm),
            scores(blocking_general=1.0, msg="Malformed ctrl_headers"),
        )
        msm["test_keys"]["requests"][0]["response"]["body"] = None
        self.assertEqual(
            score_measurement(msm),
            scores(blocking_general=1.0, total_tampering=True, msg="Empty body"),
        )


class DateFlagTests(SynchronousTestCase):
    """flag_wrong_date and the reception time of a measurement_uid."""

    def flag(self, start, received=RECEIVED):
        return flag_wrong_date(scores(), {"measurement_start_time": start}, received)

    def test_uid_reception_time(self):
        """The uid's first part is the reception time with microseconds."""
        self.assertEqual(uid_reception_time(UID), RECEIVED)
        for bad in ("bogus_uid", "19990101000000.000000_IT_x_y", "2021070900552.664022_MY",
                    "20210709005529.66402_MY_x_y", None, 5):
            self.assertIsNone(uid_reception_time(bad), bad)

    def test_future(self):
        """More than an hour in the future is flagged; exactly an hour is not."""
        future = (RECEIVED + timedelta(hours=1, seconds=1)).strftime("%Y-%m-%d %H:%M:%S")
        self.assertEqual(
            self.flag(future),
            scores(accuracy=0.0, msg="Measurement start time from the future"),
        )
        self.assertEqual(self.flag("2025-06-01 13:00:00"), scores())

    def test_too_old(self):
        """More than 365 days before reception is flagged as too old."""
        self.assertEqual(
            self.flag("2024-06-01 11:59:59"),
            scores(accuracy=0.0, msg="Measurement start time too old"),
        )
        self.assertEqual(self.flag("2024-06-01 12:00:01"), scores())

    def test_unparsable_start(self):
        """Start times that are missing or in another format are left alone."""
        for start in ("", None, "2025-06-01T12:00:00Z", 12, "garbage"):
            self.assertEqual(self.flag(start), scores(), start)
        self.assertEqual(flag_wrong_date(scores(), "x", RECEIVED), scores())

    def test_aware_reception_time(self):
        """An aware reception time is compared in UTC."""
        received = datetime(2025, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
        self.assertEqual(self.flag("2025-06-01 12:30:00", received), scores())
        self.assertEqual(self.flag("2025-06-01 13:30:00", received)["accuracy"], 0.0)

    def test_old_sample_imported_today(self):
        """An old sample received now ends up failed in its row."""
        msm = {"test_name": "signal", "report_id": "r", "probe_cc": "IT",
               "measurement_start_time": "2022-11-18 10:44:20",
               "test_keys": {"signal_backend_status": "ok", "failure": None,
                             "failed_operation": None}}
        got = flag_wrong_date(score_measurement(msm), msm, RECEIVED)
        self.assertEqual(fastpath_row(msm, UID, got)["msm_failure"], "t")

    def test_parse_start_time(self):
        """The strict start time parser accepts the measurement format only."""
        self.assertEqual(
            parse_start_time("2022-11-18 10:44:20"), datetime(2022, 11, 18, 10, 44, 20)
        )
        self.assertEqual(parse_start_time("2022-1-8 10:44:20"), datetime(2022, 1, 8, 10, 44, 20))
        self.assertRaises(ValueError, parse_start_time, "2022-11-18T10:44:20")
        self.assertRaises(ValueError, parse_start_time, None)


def _nullify(obj, rnd, depth=0):
    """A copy of a JSON object with random parts replaced by odd values."""
    odd = [None, None, [], {}, "", 0, "x", True, [None], {"": None}]
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out[k] = rnd.choice(odd) if rnd.random() < 0.15 else _nullify(v, rnd, depth + 1)
        return out
    if isinstance(obj, list) and depth < 6:
        return [rnd.choice(odd) if rnd.random() < 0.15 else _nullify(v, rnd, depth + 1)
                for v in obj[:20]]
    return obj


class NullsTests(_Shared, SynchronousTestCase):
    """Null or odd parts are scored, never raised on."""

    def test_test_keys_null_for_every_test(self):
        """test_keys null gets the reference's scores for every test name."""
        expected = {
            "browser_web": scores(
                accuracy=0.0, extra={"browser_name": "", "load_time_ms": 0}
            ),
            "dash": FAILED,
            "dns_consistency": scores(),
            "dnscheck": FAILED,
            "facebook_messenger": scores(),
            "http_header_field_manipulation": FAILED,
            "http_invalid_request_line": FAILED,
            "http_requests": FAILED,
            "meek_fronted_requests_test": scores(blocking_general=1.0, accuracy=0),
            "ndt": {},
            "openvpn": scores(accuracy=0.0, extra={"test_runtime": None}),
            "psiphon": scores(
                accuracy=0.0, extra={"test_runtime": None, "bootstrap_time": 0}
            ),
            "riseupvpn": scores(extra={"test_runtime": None}),
            "signal": FAILED,
            "stunreachability": scores(extra={"endpoint": None}),
            "tcp_connect": scores(blocking_general=1.0),
            "telegram": scores(
                blocking_general=1.0,
                web_failure=None,
                accessible_endpoints=0,
                unreachable_endpoints=0,
                http_success_cnt=0,
                http_failure_cnt=0,
            ),
            "tor": FAILED,
            "torsf": scores(extra={"bootstrap_time": None, "test_runtime": None}),
            "vanilla_tor": FAILED,
            "web_connectivity": FAILED,
            "whatsapp": FAILED,
        }
        names = {msm["test_name"] for msm in self.samples.values()}
        self.assertEqual(names - set(expected), set())
        for name, want in sorted(expected.items()):
            msm = {"test_name": name, "test_keys": None, "report_id": "r",
                   "probe_cc": "IT", "input": "http://x/"}
            got = score_measurement(msm, self.fps)
            self.assertEqual(got, want, name)
            self.assertEqual(tuple(fastpath_row(msm, UID, got)), COLUMNS)

    def test_each_top_level_key_null(self):
        """Setting any single top-level or test_keys field to null never raises."""
        for name, msm in self.samples.items():
            if name == "mbx-1.json":
                continue  # large; covered by the other tests
            for key in list(msm):
                odd = dict(msm)
                odd[key] = None
                got = score_measurement(odd, self.fps)
                fastpath_row(odd, UID, flag_wrong_date(got, odd, RECEIVED))
            tk = msm.get("test_keys")
            if isinstance(tk, dict):
                for key in list(tk):
                    odd = dict(msm, test_keys=dict(tk))
                    odd["test_keys"][key] = None
                    got = score_measurement(odd, self.fps)
                    fastpath_row(odd, UID, got)

    def test_random_odd_values(self):
        """Randomly replaced nested parts never make scoring or rows raise."""
        rnd = random.Random(3)
        small = [m for n, m in sorted(self.samples.items()) if n != "mbx-1.json"]
        for _ in range(8):
            for msm in small:
                odd = _nullify(msm, rnd)
                got = score_measurement(odd, self.fps)
                self.assertIsInstance(got, dict)
                fastpath_row(odd, UID, flag_wrong_date(got, odd, RECEIVED))

    def test_not_a_measurement(self):
        """Non-objects are failed by scoring and rejected by the row builder."""
        for value in (None, "x", [], 3):
            self.assertEqual(score_measurement(value, self.fps), failed_scores())
            self.assertRaises(NotAMeasurement, fastpath_row, value, UID, scores())
            self.assertRaises(NotAMeasurement, discard_reason, value)
        self.assertEqual(NotAMeasurement("not_an_object").reason, "not_an_object")


class DiscardTests(SynchronousTestCase):
    """The ingestion discard rules of section 4.6."""

    def test_rules(self):
        """No report_id, probe_cc ZZ or probe_asn AS0 are discarded."""
        good = {"report_id": "r", "probe_cc": "IT", "probe_asn": "AS3269"}
        self.assertIsNone(discard_reason(good))
        self.assertIsNone(discard_reason(dict(good, report_id="")))
        self.assertEqual(discard_reason({"probe_cc": "IT"}), "no_report_id")
        self.assertEqual(discard_reason(dict(good, report_id=None)), "no_report_id")
        self.assertEqual(discard_reason(dict(good, probe_cc="zz")), "probe_cc_zz")
        self.assertEqual(discard_reason(dict(good, probe_asn="as0")), "probe_asn_0")
        self.assertIsNone(discard_reason(dict(good, probe_asn=None, probe_cc=None)))


class RowFieldTests(SynchronousTestCase):
    """Column conversions of fastpath_row."""

    def row(self, **fields):
        msm = {"report_id": "r", "test_name": "web_connectivity"}
        msm.update(fields)
        return fastpath_row(msm, UID, scores())

    def test_times(self):
        """Times are parsed from several formats into naive UTC, or fall back."""
        self.assertEqual(parse_time("2019-07-20 20:18:30"), datetime(2019, 7, 20, 20, 18, 30))
        self.assertEqual(
            parse_time("2019-07-20T22:18:30.5+02:00"), datetime(2019, 7, 20, 20, 18, 30)
        )
        self.assertEqual(parse_time("2019-07-20T20:18:30Z"), datetime(2019, 7, 20, 20, 18, 30))
        self.assertEqual(parse_time(1441317442.0), datetime(2015, 9, 3, 21, 57, 22))
        for bad in ("", "x", None, True, float("nan"), "0001-01-01 00:00:00", 1e20, "2200-01-01"):
            self.assertIsNone(parse_time(bad), bad)
        row = self.row(measurement_start_time="bad", test_start_time="2020-01-01 00:00:00")
        self.assertEqual(row["measurement_start_time"], datetime(2020, 1, 1))
        row = self.row(measurement_start_time="2020-01-01 00:00:05")
        self.assertEqual(row["test_start_time"], datetime(2020, 1, 1, 0, 0, 5))
        row = self.row()
        self.assertEqual(row["measurement_start_time"], datetime(2025, 6, 1, 12, 0, 0))
        self.assertEqual(row["test_start_time"], datetime(2025, 6, 1, 12, 0, 0))
        row = fastpath_row({}, "bogus_uid", scores())
        self.assertEqual(row["measurement_start_time"], datetime(1970, 1, 1))
        aware = datetime(2025, 1, 2, 5, 0, 0, 999, tzinfo=timezone(timedelta(hours=2)))
        row = fastpath_row({}, "bogus_uid", scores(), received=aware)
        self.assertEqual(row["measurement_start_time"], datetime(2025, 1, 2, 3, 0, 0))
        row = fastpath_row({}, UID, scores(), received=datetime(2024, 3, 4, 5, 6, 7))
        self.assertEqual(row["test_start_time"], datetime(2024, 3, 4, 5, 6, 7))

    def test_asn(self):
        """probe_asn becomes a number without AS; odd values become 0."""
        for value, expected in (("AS3269", 3269), ("as12", 12), ("123", 123), (77, 77),
                                ("ASx", 0), (None, 0), (True, 0), (-1, 0), ("AS" + "9" * 12, 0),
                                ("AS١٢", 0)):
            self.assertEqual(self.row(probe_asn=value)["probe_asn"], expected, value)

    def test_domain(self):
        """domain is host[:port] of a URL input, empty for non-URLs."""
        for inp, domain in (("https://user:pw@example.org:8443/x", "example.org:8443"),
                            ("http://[::1]:80/", "[::1]:80"),
                            ("http://[::1", ""),
                            ("example.org", ""),
                            (None, ""),
                            ([], "")):
            self.assertEqual(self.row(input=inp)["domain"], domain, inp)
        self.assertEqual(self.row(input=None)["input"], "")
        self.assertEqual(self.row(input=["a", 3])["input"], "{a,3}")

    def test_text_columns(self):
        """Odd values of text columns become JSON text; null becomes empty."""
        row = self.row(probe_cc=None, software_name=5, test_version=0.2,
                       annotations={"platform": None, "engine_name": ["e"]},
                       test_helpers={"backend": "httpo://x"})
        self.assertEqual(row["probe_cc"], "")
        self.assertEqual(row["software_name"], "5")
        self.assertEqual(row["test_version"], "0.2")
        self.assertEqual(row["platform"], "unset")
        self.assertEqual(row["engine_name"], '["e"]')
        self.assertEqual(row["test_helper_address"], "")
        row = self.row(annotations="x", test_runtime="1.5")
        self.assertEqual((row["platform"], row["test_runtime"]), ("unset", 1.5))
        self.assertEqual(self.row(test_runtime={"x": 1})["test_runtime"], 0.0)

    def test_flags_and_scores_text(self):
        """Flags follow the scores; scores are compact JSON with sorted keys."""
        msm = {"report_id": "r"}
        row = fastpath_row(msm, UID, {"blocking_general": 0.5, "accuracy": 0.5})
        self.assertEqual((row["anomaly"], row["msm_failure"]), ("f", "f"))
        row = fastpath_row(
            msm, UID,
            {"confirmed": True, "blocking_general": 0.51, "accuracy": 0.49,
             "analysis": {"blocking_type": "dns"}},
        )
        self.assertEqual((row["anomaly"], row["confirmed"], row["msm_failure"]), ("t", "t", "t"))
        self.assertEqual(row["blocking_type"], "dns")
        self.assertEqual(
            row["scores"],
            '{"accuracy":0.49,"analysis":{"blocking_type":"dns"},'
            '"blocking_general":0.51,"confirmed":true}',
        )
        row = fastpath_row(msm, UID, {"blocking_general": "x", "analysis": "y"})
        self.assertEqual((row["anomaly"], row["blocking_type"]), ("f", ""))
        self.assertRaises(TypeError, fastpath_row, msm, UID, None)
