"""Identifiers handed out to probes and given to received measurements.

Pure functions: the clock and the randomness source are arguments, so that
tests can pin them and callers decide what "now" is (api-routes.md §4.1-§4.3).
"""

import os
import re
from base64 import b64encode
from collections import namedtuple
from datetime import timezone
from hashlib import sha512

__all__ = [
    "ReportIdError",
    "ParsedReportId",
    "new_report_id",
    "new_report_ids",
    "parse_report_id",
    "measurement_uid",
    "import_uid_parts",
    "random_int_id",
    "normalize_probe_asn",
    "normalize_probe_cc",
]


class ReportIdError(ValueError):
    """A submission's report_id is not in the new format.

    The message is the one the route answers with (400, E1).
    """

    def __init__(self, message="Incorrect format"):
        super().__init__(message)


ParsedReportId = namedtuple(
    "ParsedReportId", ["ts", "testname", "cc", "asn", "cid", "random"]
)
ParsedReportId.__doc__ = """The six parts of a new-format report_id.

`asn` is an int; `cid` is the collector id without its leading `n`; the
other parts are the strings found in the report_id, unchanged.
"""

# Report ids and uids end up in spool directory names, so the parts used
# there are held to plain ASCII letters and digits.
_ALNUM = re.compile(r"[A-Za-z0-9]+\Z")
_ASN_PART = re.compile(r"[+-]?[0-9]+\Z")
_DIGITS = re.compile(r"[0-9]+\Z")


def _utc_naive(when):
    """Accept naive-UTC or aware datetimes; return naive UTC."""
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc).replace(tzinfo=None)
    return when


def _random_part(rand):
    """16 URL-safe characters: base64 of 12 bytes with `+` and `/` as `o`."""
    return b64encode(rand(12), b"oo").decode("ascii")


def _report_timestamp(now):
    return _utc_naive(now).strftime("%Y%m%dT%H%M%SZ")


def _report_tail(cc, asn, collector_id):
    """`_<CC>_<asn>_n<cid>_`: what follows the test name."""
    return "_%s_%d_n%s_" % (cc, int(asn), collector_id)


def new_report_id(test_name, cc, asn, collector_id, now, rand=os.urandom):
    """Build `<ts>_<testname>_<CC>_<asn>_n<cid>_<random>` (§4.1).

    `cc` and `asn` must already be normalised (see normalize_probe_cc /
    normalize_probe_asn); `rand(n)` returns n random bytes.
    """
    testname = test_name.lower().replace("_", "")
    return "%s_%s%s%s" % (
        _report_timestamp(now),
        testname,
        _report_tail(cc, asn, collector_id),
        _random_part(rand),
    )


def new_report_ids(test_names, cc, asn, collector_id, now, rand=os.urandom):
    """new_report_id for each of `test_names`, as a list in the same order.

    A check-in hands out one id per test: the timestamp and the common
    parts are formatted once, and the random parts come from a single
    rand(12 * len(test_names)) call (each id gets the next 12 bytes, so
    the ids are those of consecutive new_report_id calls on a stream).
    """
    prefix = _report_timestamp(now) + "_"
    tail = _report_tail(cc, asn, collector_id)
    randoms = b64encode(rand(12 * len(test_names)), b"oo").decode("ascii")
    # 12 bytes are exactly 16 base64 characters, so the encoding of the
    # whole is the concatenation of the encodings of each 12-byte slice.
    return [
        prefix + name.lower().replace("_", "") + tail + randoms[16 * i : 16 * i + 16]
        for i, name in enumerate(test_names)
    ]


def parse_report_id(report_id):
    """Split a submitted report_id into its parts or raise ReportIdError.

    Rules of §4.1 "Parsing on submission": six `_`-separated parts, a
    2-character cc, an alphanumeric test name of 2-29 characters and an
    integer asn; the timestamp and random parts are not checked.  cc and
    test name must be ASCII alphanumerics because they name spool
    directories.
    """
    if not isinstance(report_id, str):
        raise ReportIdError()
    parts = report_id.split("_")
    if len(parts) != 6:
        raise ReportIdError()
    ts, testname, cc, asn, cid, rnd = parts
    if len(cc) != 2 or not _ALNUM.match(cc):
        raise ReportIdError()
    if not (2 <= len(testname) <= 29) or not _ALNUM.match(testname):
        raise ReportIdError()
    if not _ASN_PART.match(asn):
        raise ReportIdError()
    if cid.startswith("n"):
        cid = cid[1:]
    return ParsedReportId(ts, testname, cc, int(asn), cid, rnd)


def measurement_uid(received, cc, testname, body):
    """`<YYYYmmddHHMMSS.ffffff>_<cc>_<testname>_<hash16>` (§4.2).

    `body` is the stored body (bytes, after zstd decompression); `cc` and
    `testname` are used verbatim.
    """
    ts = _utc_naive(received).strftime("%Y%m%d%H%M%S.%f")
    digest = sha512(body).hexdigest()[:16]
    return "%s_%s_%s_%s" % (ts, cc, testname, digest)


def import_uid_parts(report_id, measurement):
    """The (cc, testname) of the uid of an imported measurement.

    New-format report_ids give their own parts, as for a submission.  Any
    other report_id (legacy formats, missing) falls back to the
    measurement's `probe_cc` (`ZZ` when missing) and `test_name` without
    `_` (CONTRACT.md, import-measurements).  Characters that would break
    the uid's four parts or a directory name are dropped; a cc that is then
    not two characters becomes `ZZ`, a test name left empty `unknown`.
    """
    try:
        parsed = parse_report_id(report_id)
    except ReportIdError:
        pass
    else:
        return parsed.cc, parsed.testname
    if not isinstance(measurement, dict):
        measurement = {}
    cc = measurement.get("probe_cc")
    cc = _keep_alnum(cc) if isinstance(cc, str) else ""
    if len(cc) != 2:
        cc = "ZZ"
    testname = measurement.get("test_name")
    testname = _keep_alnum(testname) if isinstance(testname, str) else ""
    if not testname:
        testname = "unknown"
    return cc, testname


def _keep_alnum(text):
    return "".join(c for c in text if c.isascii() and c.isalnum())


def random_int_id(collector_id, rand=os.urandom):
    """`random32 * 100 + collector number` for incidents and OONI Run (§4.3).

    A collector id that is not a decimal number counts as 0.
    """
    cid = str(collector_id)
    cid_num = int(cid) if _DIGITS.match(cid) else 0
    random32 = int.from_bytes(rand(4), "big")
    return random32 * 100 + cid_num


def normalize_probe_asn(value):
    """The asn number of an opened report (POST /report, §12.10).

    Upper-cased `AS<n>` of 3-12 characters, else 0; a number part that is
    not a decimal integer also gives 0.  None (missing) and non-strings
    give 0 too.
    """
    if not isinstance(value, str):
        return 0
    asn = value.upper()
    if not (3 <= len(asn) <= 12) or not asn.startswith("AS"):
        return 0
    number = asn[2:]
    if not _DIGITS.match(number):
        return 0
    return int(number)


def normalize_probe_cc(value):
    """The country code of an opened report (POST /report, §12.10).

    Upper-cased, `_` removed; anything but two ASCII letters or digits
    becomes `ZZ` (so every issued report_id can be submitted back).
    """
    if not isinstance(value, str):
        return "ZZ"
    cc = value.upper().replace("_", "")
    if len(cc) != 2 or not _ALNUM.match(cc):
        return "ZZ"
    return cc
