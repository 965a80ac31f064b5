"""Tests for ooni_twisted.probes.ids (api-routes.md §4.1-§4.3)."""

from datetime import datetime, timedelta, timezone

from twisted.trial.unittest import SynchronousTestCase

from ooni_twisted.probes.ids import (
    ReportIdError,
    import_uid_parts,
    measurement_uid,
    new_report_id,
    normalize_probe_asn,
    normalize_probe_cc,
    parse_report_id,
    random_int_id,
)

NOW = datetime(2021, 7, 9, 0, 43, 40)


def fixed_bytes(data):
    """A rand(n) that always returns the first n bytes of `data`."""
    return lambda n: data[:n]


# base64 of these 12 bytes is "++++////++++////"
PLUS_SLASH = bytes([0xFB, 0xEF, 0xBE, 0xFF, 0xFF, 0xFF]) * 2


class NewReportIdTests(SynchronousTestCase):
    def test_exact_format(self):
        """A report_id is ts, test name without `_`, cc, asn, n<cid> and 16 random characters."""
        rid = new_report_id(
            "web_connectivity", "MY", 4818, "1", NOW, rand=fixed_bytes(bytes(range(12)))
        )
        self.assertEqual(rid, "20210709T004340Z_webconnectivity_MY_4818_n1_AAECAwQFBgcICQoL")

    def test_plus_and_slash_become_o(self):
        """Both non-alphanumeric base64 characters are replaced by `o`."""
        rid = new_report_id("ndt", "IT", 1, "1", NOW, rand=fixed_bytes(PLUS_SLASH))
        self.assertTrue(rid.endswith("_oooooooooooooooo"), rid)

    def test_sixty_one_characters(self):
        """web_connectivity/IE/65550 with a one-character collector id is 61 characters."""
        rid = new_report_id("web_connectivity", "IE", 65550, "1", NOW)
        self.assertEqual(len(rid), 61)
        self.assertIn("_webconnectivity_IE_65550_n1_", rid)
        self.assertEqual(rid.count("_"), 5)

    def test_random_part_uses_rand(self):
        """Two ids generated with the real randomness differ only in the random part."""
        a = new_report_id("tor", "IT", 5, "1", NOW)
        b = new_report_id("tor", "IT", 5, "1", NOW)
        self.assertNotEqual(a, b)
        self.assertEqual(a[:-16], b[:-16])
        self.assertTrue(a[-16:].isalnum())

    def test_test_name_lower_cased(self):
        """The test name is lower-cased with every `_` removed."""
        rid = new_report_id("Web_Connectivity_", "IT", 5, "7", NOW)
        self.assertEqual(rid.split("_")[1], "webconnectivity")

    def test_aware_time_converted_to_utc(self):
        """A timezone-aware now is rendered in UTC."""
        aware = datetime(2021, 7, 9, 2, 43, 40, tzinfo=timezone(timedelta(hours=2)))
        rid = new_report_id("ndt", "IT", 5, "1", aware)
        self.assertTrue(rid.startswith("20210709T004340Z_"), rid)


class ParseReportIdTests(SynchronousTestCase):
    def test_valid(self):
        """A new-format report_id splits into six parts with an integer asn."""
        parsed = parse_report_id("20210709T004340Z_webconnectivity_MY_4818_n1_YCM7J9mGcEHds2K3")
        self.assertEqual(
            tuple(parsed),
            ("20210709T004340Z", "webconnectivity", "MY", 4818, "1", "YCM7J9mGcEHds2K3"),
        )
        self.assertEqual(parsed.cc, "MY")
        self.assertEqual(parsed.asn, 4818)

    def test_round_trip(self):
        """Every generated report_id parses back to its own parts."""
        rid = new_report_id("http_invalid_request_line", "DE", 3320, "12", NOW)
        parsed = parse_report_id(rid)
        self.assertEqual(
            (parsed.testname, parsed.cc, parsed.asn, parsed.cid),
            ("httpinvalidrequestline", "DE", 3320, "12"),
        )

    def test_zero_asn_and_zz_are_valid_ids(self):
        """Discardable ids (asn 0, cc ZZ) still parse; discarding is the caller's job."""
        parsed = parse_report_id("20230101T000000Z_integtest_ZZ_0_n1_integtest0000000")
        self.assertEqual((parsed.cc, parsed.asn), ("ZZ", 0))

    def test_timestamp_not_validated(self):
        """The timestamp part is not checked."""
        parsed = parse_report_id("whenever_ndt_IT_5_n1_x")
        self.assertEqual(parsed.ts, "whenever")

    def test_rejections(self):
        """Wrong part count, cc length, test name shape or asn raise ReportIdError."""
        bad = [
            "bogus",
            "",
            "20190113T202156Z_AS327931_CgoC3KbgM6zKajvIIt1AxxybJ1HbjwwWJjsJnlxy9rpcGY54VH",
            "20210709T004340Z_webconnectivity_MY_4818_n1",
            "20210709T004340Z_web_connectivity_MY_4818_n1_x",
            "20210709T004340Z_webconnectivity_MYS_4818_n1_x",
            "20210709T004340Z_webconnectivity_M_4818_n1_x",
            "20210709T004340Z_w_MY_4818_n1_x",
            "20210709T004340Z_" + "a" * 30 + "_MY_4818_n1_x",
            "20210709T004340Z_web-conn_MY_4818_n1_x",
            "20210709T004340Z_webconnectivity_MY_AS4818_n1_x",
            "20210709T004340Z_webconnectivity_MY__n1_x",
            "20210709T004340Z_webconnectivity_/._4818_n1_x",
            None,
            12,
        ]
        for rid in bad:
            with self.assertRaises(ReportIdError, msg=repr(rid)) as cm:
                parse_report_id(rid)
            self.assertEqual(str(cm.exception), "Incorrect format")

    def test_limits_of_test_name_length(self):
        """Test names of 2 and 29 characters are accepted."""
        parse_report_id("t_ab_IT_1_n1_x")
        parse_report_id("t_" + "a" * 29 + "_IT_1_n1_x")

    def test_report_id_error_is_value_error(self):
        """ReportIdError is a ValueError, so generic handlers catch it."""
        self.assertTrue(issubclass(ReportIdError, ValueError))


class MeasurementUidTests(SynchronousTestCase):
    received = datetime(2021, 7, 9, 0, 55, 29, 664022)

    def test_exact_format(self):
        """The uid is reception time with microseconds, cc, test name and 16 hex of SHA-512."""
        uid = measurement_uid(self.received, "MY", "webconnectivity", b'{"format": "json"}')
        self.assertEqual(uid, "20210709005529.664022_MY_webconnectivity_db523e2d5808170b")

    def test_shape(self):
        """A uid starts with 20, has four parts and begins with the reception hour."""
        uid = measurement_uid(self.received, "it", "ndt", b"")
        self.assertTrue(uid.startswith("20"))
        self.assertEqual(len(uid.split("_")), 4)
        self.assertEqual(uid[:10], "2021070900")
        self.assertEqual(uid.split("_")[1], "it")  # verbatim, not re-normalised

    def test_zero_microseconds_kept(self):
        """Microseconds are always six digits."""
        uid = measurement_uid(datetime(2021, 7, 9), "IT", "ndt", b"x")
        self.assertTrue(uid.startswith("20210709000000.000000_IT_ndt_"), uid)

    def test_lexicographic_is_chronological(self):
        """Sorting uids as strings sorts them by reception time."""
        times = [self.received + timedelta(microseconds=n * 37_123_457) for n in range(50)]
        uids = [measurement_uid(t, "ZW", "zz", b"%d" % i) for i, t in enumerate(times)]
        self.assertEqual(sorted(uids), uids)

    def test_hash_depends_on_body(self):
        """Different bodies received at the same moment get different uids."""
        a = measurement_uid(self.received, "IT", "ndt", b"a")
        b = measurement_uid(self.received, "IT", "ndt", b"b")
        self.assertNotEqual(a, b)


class ImportUidPartsTests(SynchronousTestCase):
    def test_new_format_report_id_wins(self):
        """A new-format report_id gives its own cc and test name."""
        msmt = {"probe_cc": "US", "test_name": "web_connectivity"}
        parts = import_uid_parts("20210709T004340Z_webconnectivity_MY_4818_n1_x", msmt)
        self.assertEqual(parts, ("MY", "webconnectivity"))

    def test_legacy_report_id(self):
        """A legacy report_id falls back to probe_cc and test_name without `_`."""
        rid = "20190720T201820Z_AS20115_" + "x" * 50
        msmt = {"report_id": rid, "probe_cc": "US", "test_name": "web_connectivity"}
        self.assertEqual(import_uid_parts(rid, msmt), ("US", "webconnectivity"))

    def test_missing_values(self):
        """Missing probe_cc becomes ZZ; a missing test name becomes `unknown`."""
        self.assertEqual(import_uid_parts(None, {}), ("ZZ", "unknown"))
        self.assertEqual(import_uid_parts(None, None), ("ZZ", "unknown"))
        self.assertEqual(
            import_uid_parts("", {"probe_cc": None, "test_name": 5}), ("ZZ", "unknown")
        )

    def test_unsafe_characters_dropped(self):
        """Characters that would break the uid or a directory name are dropped."""
        msmt = {"probe_cc": "U_S", "test_name": "../web_conn"}
        self.assertEqual(import_uid_parts("legacy", msmt), ("US", "webconn"))

    def test_cc_not_two_characters(self):
        """A probe_cc that is not two characters gives a ZZ uid part."""
        self.assertEqual(import_uid_parts("legacy", {"probe_cc": "USA", "test_name": "x"}), ("ZZ", "x"))
        self.assertEqual(import_uid_parts("legacy", {"probe_cc": "U", "test_name": "x"}), ("ZZ", "x"))


class RandomIntIdTests(SynchronousTestCase):
    def test_numeric_collector(self):
        """The id is random32 * 100 + the collector number."""
        rand = fixed_bytes(b"\x00\x00\x01\x00")
        self.assertEqual(random_int_id("7", rand=rand), 256 * 100 + 7)
        self.assertEqual(random_int_id(3, rand=rand), 256 * 100 + 3)

    def test_non_numeric_collector(self):
        """A non-numeric collector id counts as 0, so ids end with 00."""
        rand = fixed_bytes(b"\xff\xff\xff\xff")
        self.assertEqual(random_int_id("ams-pg", rand=rand), 0xFFFFFFFF * 100)
        self.assertEqual(random_int_id("ams-pg") % 100, 0)

    def test_range(self):
        """Ids fit an unsigned 64-bit integer."""
        for _ in range(20):
            self.assertLess(random_int_id("99"), 2**64)


class NormalizeTests(SynchronousTestCase):
    def test_asn(self):
        """Open-report asn: upper-cased AS<n> of 3-12 characters, else 0."""
        cases = {
            "AS65550": 65550,
            "as123": 123,
            "AS0": 0,
            "AS": 0,
            "ASX": 0,
            "1234": 0,
            "AS1234567890": 1234567890,
            "AS12345678901": 0,
            "AS-5": 0,
            "": 0,
            None: 0,
            1234: 0,
        }
        for value, expected in cases.items():
            self.assertEqual(normalize_probe_asn(value), expected, repr(value))

    def test_cc(self):
        """Open-report cc: upper-cased, `_` removed, else ZZ."""
        cases = {
            "ie": "IE",
            "I_E": "IE",
            "USA": "ZZ",
            "U": "ZZ",
            "": "ZZ",
            None: "ZZ",
            "./": "ZZ",
            42: "ZZ",
        }
        for value, expected in cases.items():
            self.assertEqual(normalize_probe_cc(value), expected, repr(value))
