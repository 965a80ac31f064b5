"""What probes are told: check-in, test helpers, collectors, bouncer, open report.

Pure builders (api-routes.md §9 and §12.10): the route hands in the parsed
JSON body, the geolocation, the client address, the URL list, the clock
and the randomness source, and renders what comes back.  Bad input raises
BadProbeRequest, whose message is the 400 error text.

The check-in answers exist twice: build_checkin_v1/v2 state them as plain
objects, and CheckinEncoder renders the same bytes (the hot path of the
probe routes) without a generic JSON pass over each answer.
"""

import ipaddress
import json
import os
import re
from dataclasses import dataclass
from datetime import timedelta, timezone
from json.encoder import encode_basestring_ascii as _quote

from ooni_twisted.probes.ids import (
    new_report_id,
    new_report_ids,
    normalize_probe_asn,
    normalize_probe_cc,
)
from ooni_twisted.web.jsonenc import dumps

__all__ = [
    "BadProbeRequest",
    "CheckinRequest",
    "CHECKIN_V1_TESTS",
    "CHECKIN_V2_NETTESTS",
    "DNSCHECK_INPUTS",
    "STUNREACHABILITY_INPUTS",
    "test_helpers",
    "url_limit",
    "parse_checkin_body",
    "choose_location",
    "build_checkin_v1",
    "build_checkin_v2",
    "CheckinEncoder",
    "collectors",
    "bouncer_response",
    "open_report",
    "probe_client_id_claims",
    "probe_token_claims",
    "probe_token_expire",
]

JSON_EXPECTED = "JSON expected"


class BadProbeRequest(ValueError):
    """A probe request the API answers with 400 {"error": str(exc)}."""


# Every test of the v1 check-in gets a report_id (§9.4).
CHECKIN_V1_TESTS = (
    "bridge_reachability",
    "dash",
    "dns_consistency",
    "dnscheck",
    "facebook_messenger",
    "http_header_field_manipulation",
    "http_host",
    "http_invalid_request_line",
    "http_requests",
    "meek_fronted_requests_test",
    "multi_protocol_traceroute",
    "ndt",
    "psiphon",
    "riseupvpn",
    "tcp_connect",
    "telegram",
    "tor",
    "urlgetter",
    "vanilla_tor",
    "web_connectivity",
    "whatsapp",
)

# The v2 check-in lists these, in this order (§9.5).
CHECKIN_V2_NETTESTS = (
    "bridge_reachability",
    "dash",
    "dns_consistency",
    "dnscheck",
    "dnsping",
    "echcheck",
    "facebook_messenger",
    "http_header_field_manipulation",
    "http_host",
    "http_invalid_request_line",
    "http_requests",
    "meek_fronted_requests_test",
    "multi_protocol_traceroute",
    "ndt",
    "portfiltering",
    "psiphon",
    "quicping",
    "riseupvpn",
    "signal",
    "simplequicping",
    "sniblocking",
    "stunreachability",
    "tcp_connect",
    "tcpping",
    "telegram",
    "tlsmiddlebox",
    "tlsping",
    "tor",
    "torsf",
    "urlgetter",
    "vanilla_tor",
    "web_connectivity",
    "whatsapp",
)

DNSCHECK_INPUTS = (
    "https://dns.google/dns-query",
    "https://8.8.8.8/dns-query",
    "dot://8.8.8.8:853/",
    "dot://8.8.4.4:853/",
    "https://8.8.4.4/dns-query",
    "https://cloudflare-dns.com/dns-query",
    "https://1.1.1.1/dns-query",
    "https://1.0.0.1/dns-query",
    "dot://1.1.1.1:853/",
    "dot://1.0.0.1:853/",
    "https://dns.quad9.net/dns-query",
    "https://9.9.9.9/dns-query",
    "dot://9.9.9.9:853/",
    "dot://dns.quad9.net/",
    "https://family.cloudflare-dns.com/dns-query",
    "dot://family.cloudflare-dns.com/dns-query",
    "https://dns11.quad9.net/dns-query",
    "dot://dns11.quad9.net/dns-query",
    "https://dns9.quad9.net/dns-query",
    "dot://dns9.quad9.net/dns-query",
    "https://dns12.quad9.net/dns-query",
    "dot://dns12.quad9.net/dns-query",
    "https://1dot1dot1dot1.cloudflare-dns.com/dns-query",
    "dot://1dot1dot1dot1.cloudflare-dns.com/dns-query",
    "https://dns.adguard.com/dns-query",
    "dot://dns.adguard.com/dns-query",
    "https://dns-family.adguard.com/dns-query",
    "dot://dns-family.adguard.com/dns-query",
    "https://dns.cloudflare.com/dns-query",
    "https://adblock.doh.mullvad.net/dns-query",
    "dot://adblock.doh.mullvad.net/dns-query",
    "https://dns.alidns.com/dns-query",
    "dot://dns.alidns.com/dns-query",
    "https://doh.opendns.com/dns-query",
    "https://dns.nextdns.io/dns-query",
    "dot://dns.nextdns.io/dns-query",
    "https://dns10.quad9.net/dns-query",
    "dot://dns10.quad9.net/dns-query",
    "https://security.cloudflare-dns.com/dns-query",
    "dot://security.cloudflare-dns.com/dns-query",
    "https://dns.switch.ch/dns-query",
    "dot://dns.switch.ch/dns-query",
)

STUNREACHABILITY_INPUTS = (
    "stun://stun.voip.blackberry.com:3478",
    "stun://stun.antisip.com:3478",
    "stun://stun.bluesip.net:3478",
    "stun://stun.dus.net:3478",
    "stun://stun.epygi.com:3478",
    "stun://stun.sonetel.com:3478",
    "stun://stun.sonetel.net:3478",
    "stun://stun.uls.co.za:3478",
    "stun://stun.voipgate.com:3478",
    "stun://stun.voys.nl:3478",
)

_CLOUDFRONT_TH = "d33d1gs9kpq1c5.cloudfront.net"
_CLOUDFRONT_COLLECTOR = "dkyhjv0wpi2dk.cloudfront.net"
_ONION_COLLECTOR = "httpo://guegdifjy7bjpequ.onion"


# Test helpers (§9.6)


def _legacy_pair(address):
    return [{"address": address, "type": "legacy"} for _ in range(2)]


def _address(client_ip):
    """The parsed client address, or None when it is not one."""
    try:
        return ipaddress.ip_address(client_ip)
    except (ValueError, TypeError):
        return None


def _rotation_shift(address):
    """How far the four https helpers are rotated for this client.

    Addresses whose integer value ends (mod 100) in 0..9 start with 0.th,
    which is kept for about 10 % of probes to trial new releases; the rest
    spread over 1.th-3.th.  Unparsable addresses (None) behave like q = 12.
    """
    q = 12 if address is None else int(address) % 100
    return 0 if q < 10 else q % 3 + 1


def test_helpers(client_ip):
    """The test helpers object of check-in and GET /api/v1/test-helpers."""
    return _helpers_for_shift(_rotation_shift(_address(client_ip)))


def _helpers_for_shift(shift):
    web_connectivity = [
        {"address": "https://%d.th.ooni.org" % ((n + shift) % 4), "type": "https"}
        for n in range(4)
    ]
    web_connectivity.append(
        {
            "address": "https://" + _CLOUDFRONT_TH,
            "front": _CLOUDFRONT_TH,
            "type": "cloudfront",
        }
    )
    return {
        "dns": _legacy_pair("37.218.241.93:57004"),
        "http-return-json-headers": _legacy_pair("http://37.218.241.94:80"),
        "ssl": _legacy_pair("https://37.218.241.93"),
        "tcp-echo": _legacy_pair("37.218.241.93"),
        "traceroute": _legacy_pair("37.218.241.93"),
        "web-connectivity": web_connectivity,
    }


# Check-in request (§9.1-§9.3)


def url_limit(run_type, charging):
    """How many URLs a probe gets: all when run by hand, few on battery."""
    if run_type == "manual":
        return 9999
    return 100 if charging else 20


@dataclass(frozen=True)
class CheckinRequest:
    """The parts of a check-in body that matter, validated.

    probe_cc is upper-cased ("ZZ" unknown); probe_asn is "AS<n>" ("AS0"
    unknown); category_codes keeps the probe's order without repeats.
    """

    probe_cc: str = "ZZ"
    probe_asn: str = "AS0"
    run_type: str = "timed"
    charging: bool = True
    category_codes: tuple = ()

    @property
    def url_limit(self):
        return url_limit(self.run_type, self.charging)


_CC = re.compile(r"[A-Z]{2}\Z")
_ASN = re.compile(r"AS[0-9]{1,10}\Z")
_CATEGORY = re.compile(r"[A-Za-z]+\Z")


def _category_codes(web_connectivity):
    if web_connectivity is None:
        return ()
    if not isinstance(web_connectivity, dict):
        raise BadProbeRequest("Invalid web_connectivity")
    codes = web_connectivity.get("category_codes")
    if codes is None:
        return ()
    if isinstance(codes, str):
        # comma-separated form; empty items (e.g. "" or "NEWS,") mean nothing
        codes = [c for c in codes.split(",") if c]
    elif not isinstance(codes, list):
        raise BadProbeRequest("Invalid category_codes")
    out = {}  # ordered set
    for code in codes:
        if not isinstance(code, str) or not _CATEGORY.match(code):
            raise BadProbeRequest("Invalid category_codes")
        out[code] = None
    return tuple(out)


def parse_checkin_body(obj):
    """Validate a decoded check-in body into a CheckinRequest.

    Missing or null fields take their defaults; a cc that is not two
    letters, an asn that is not `AS<n>`, a non-alphabetic category code or
    a field of an unusable type raise BadProbeRequest.
    """
    if not isinstance(obj, dict):
        raise BadProbeRequest(JSON_EXPECTED)
    probe_cc = obj.get("probe_cc")
    if probe_cc is None:
        probe_cc = "ZZ"
    if (
        not isinstance(probe_cc, str)
        or not probe_cc.isascii()
        or not _CC.match(probe_cc.upper())
    ):
        raise BadProbeRequest("Invalid probe_cc")
    probe_asn = obj.get("probe_asn")
    if probe_asn is None:
        probe_asn = "AS0"
    if not isinstance(probe_asn, str) or not _ASN.match(probe_asn):
        raise BadProbeRequest("Invalid probe_asn")
    run_type = obj.get("run_type", "timed")
    charging = obj.get("charging", True)
    return CheckinRequest(
        probe_cc=probe_cc.upper(),
        probe_asn=probe_asn,
        run_type=run_type if isinstance(run_type, str) else "",
        charging=bool(charging),
        category_codes=_category_codes(obj.get("web_connectivity")),
    )


def choose_location(request, geo):
    """(cc, asn int) for the test list and the report ids.

    The probe's own values win unless it sent both defaults (it may sit
    behind a circumvention tool whose address we see); `geo` is
    GeoIP.lookup()'s (cc, "AS<n>", name).
    """
    cc, asn = request.probe_cc, request.probe_asn
    if cc == "ZZ" and asn == "AS0":
        cc, asn = geo[0], geo[1]
    return cc, int(asn[2:])


# Check-in responses (§9.4, §9.5)


def _second_octet(address):
    if address is None:
        return None
    if address.version == 6:
        address = address.ipv4_mapped
        if address is None:
            return None
    return address.packed[1]


def _client_variant(client_ip):
    """(helper rotation, webconnectivity_0.5 flag): all the conf depends on."""
    address = _address(client_ip)
    return _rotation_shift(address), _second_octet(address) in (34, 239)


def _features(webconnectivity_05, torsf):
    """Feature flags; webconnectivity_0.5 goes to second octets 34 and 239."""
    features = {"torsf_enabled": True} if torsf else {}
    if webconnectivity_05:
        features["webconnectivity_0.5"] = True
    return features


def _conf(client_ip, torsf):
    shift, webconnectivity_05 = _client_variant(client_ip)
    return {
        "features": _features(webconnectivity_05, torsf),
        "test_helpers": _helpers_for_shift(shift),
    }


def _as_utc(now):
    """Aware datetimes in UTC; naive ones are already UTC."""
    if now.tzinfo is None:
        return now.replace(tzinfo=timezone.utc)
    return now.astimezone(timezone.utc)


def _utc_time(now):
    return _as_utc(now).strftime("%Y-%m-%dT%H:%M:%SZ")


def _head(geo, now):
    cc, asn, network_name = geo
    return {
        "probe_cc": cc,
        "probe_asn": asn,
        "probe_network_name": network_name,
        "utc_time": _utc_time(now),
    }


def build_checkin_v1(geo, cc, asn, urls, client_ip, collector_id, now, rand=os.urandom):
    """The /api/v1/check-in response object.

    geo: GeoIP.lookup() result, reported as is; cc, asn: choose_location();
    urls: the web_connectivity items {category_code, country_code, url}.
    """
    report_ids = new_report_ids(CHECKIN_V1_TESTS, cc, asn, collector_id, now, rand)
    tests = {}
    for test_name, report_id in zip(CHECKIN_V1_TESTS, report_ids):
        tests[test_name] = {"report_id": report_id}
    tests["web_connectivity"]["urls"] = urls
    response = {"v": 1}
    response.update(_head(geo, now))
    response["conf"] = _conf(client_ip, torsf=True)
    response["tests"] = tests
    return response


def _targets(test_name, urls):
    if test_name == "web_connectivity":
        return [
            {
                "attributes": {
                    "category_code": item["category_code"],
                    "country_code": item["country_code"],
                },
                "input": item["url"],
                "options": {},
            }
            for item in urls
        ]
    if test_name == "dnscheck":
        inputs = DNSCHECK_INPUTS
    elif test_name == "stunreachability":
        inputs = STUNREACHABILITY_INPUTS
    else:
        return []
    return [{"attributes": {}, "input": i, "options": {}} for i in inputs]


def build_checkin_v2(geo, cc, asn, urls, client_ip, collector_id, now, rand=os.urandom):
    """The experimental /api/_/check-in response object (same arguments as v1)."""
    response = {"v": 2}
    response.update(_head(geo, now))
    response["conf"] = _conf(client_ip, torsf=False)
    report_ids = new_report_ids(CHECKIN_V2_NETTESTS, cc, asn, collector_id, now, rand)
    response["nettests"] = [
        {
            "test_name": test_name,
            "report_id": report_id,
            "targets": _targets(test_name, urls),
        }
        for test_name, report_id in zip(CHECKIN_V2_NETTESTS, report_ids)
    ]
    return response


# Check-in responses as bytes: the hot path of the probe routes


def _fragment(value):
    """The JSON text jsonenc.dumps gives for `value`, without its newline."""
    if type(value) is str:
        return _quote(value)
    return dumps(value)[:-1].decode("ascii")


def _plain_url(item):
    """(category_code, country_code, url) of a plain list item, else None."""
    if type(item) is not dict or len(item) != 3:
        return None
    parts = (item.get("category_code"), item.get("country_code"), item.get("url"))
    for part in parts:
        if type(part) is not str:
            return None
    return parts


def _urls_v1(urls):
    out = []
    for item in urls:
        parts = _plain_url(item)
        if parts is None:
            return _fragment(urls)
        out.append(
            '{"category_code":%s,"country_code":%s,"url":%s}'
            % (_quote(parts[0]), _quote(parts[1]), _quote(parts[2]))
        )
    return "[" + ",".join(out) + "]"


def _urls_v2(urls):
    out = []
    for item in urls:
        parts = _plain_url(item)
        if parts is None:
            return _fragment(_targets("web_connectivity", urls))
        out.append(
            '{"attributes":{"category_code":%s,"country_code":%s},"input":%s,"options":{}}'
            % (_quote(parts[0]), _quote(parts[1]), _quote(parts[2]))
        )
    return "[" + ",".join(out) + "]"


def _conf_fragments(torsf):
    """{(rotation, webconnectivity_0.5 flag): JSON of the conf object}."""
    return {
        (shift, flag): _fragment(
            {"features": _features(flag, torsf), "test_helpers": _helpers_for_shift(shift)}
        )
        for shift in range(4)
        for flag in (False, True)
    }


def _literal(text):
    """Constant JSON text for use in a %-template."""
    return text.replace("%", "%%")


def _v1_template():
    """The v1 answer as a %-template, and where its report ids come from.

    Fields, in text order: conf, probe_asn, probe_cc, probe_network_name,
    then the report id of each test in key order (the URLs right after
    web_connectivity's), utc_time.  Returns (template, the index into
    CHECKIN_V1_TESTS of each report id slot, the slot followed by the URLs).
    """
    names = sorted(CHECKIN_V1_TESTS)
    tests = []
    for name in names:
        urls = ',"urls":%s' if name == "web_connectivity" else ""
        tests.append(_literal(_quote(name)) + ':{"report_id":%s' + urls + "}")
    template = (
        '{"conf":%s,"probe_asn":%s,"probe_cc":%s,"probe_network_name":%s,"tests":{'
        + ",".join(tests)
        + '},"utc_time":%s,"v":1}\n'
    )
    order = tuple(CHECKIN_V1_TESTS.index(name) for name in names)
    return template, order, names.index("web_connectivity")


def _v2_template():
    """The v2 answer as a %-template.

    Fields, in text order: conf, the report id of each nettest in
    CHECKIN_V2_NETTESTS order (web_connectivity's followed by its targets,
    the URLs), probe_asn, probe_cc, probe_network_name, utc_time.
    Returns (template, the index of web_connectivity).
    """
    nettests = []
    for name in CHECKIN_V2_NETTESTS:
        if name == "web_connectivity":
            targets = "%s"
        else:
            targets = _literal(_fragment(_targets(name, ())))
        nettests.append(
            '{"report_id":%s,"targets":' + targets
            + ',"test_name":' + _literal(_quote(name)) + "}"
        )
    template = (
        '{"conf":%s,"nettests":[' + ",".join(nettests)
        + '],"probe_asn":%s,"probe_cc":%s,"probe_network_name":%s,"utc_time":%s,"v":2}\n'
    )
    return template, CHECKIN_V2_NETTESTS.index("web_connectivity")


class _EncodedLists:
    """The JSON of the URL lists seen last, by list identity, within bounds."""

    def __init__(self, encode, max_lists, max_chars):
        self._encode = encode
        self._max_lists = max_lists
        self._max_chars = max_chars
        self._chars = 0
        self._by_id = {}

    def __len__(self):
        return len(self._by_id)

    @property
    def chars(self):
        return self._chars

    def encode(self, urls):
        if type(urls) is not list:
            return self._encode(urls)
        hit = self._by_id.get(id(urls))
        if hit is not None and hit[0] is urls:
            return hit[1]
        fragment = self._encode(urls)
        size = len(fragment)
        if size <= self._max_chars:
            by_id = self._by_id
            while by_id and (
                len(by_id) >= self._max_lists or self._chars + size > self._max_chars
            ):
                _, dropped = by_id.pop(next(iter(by_id)))
                self._chars -= len(dropped)
            # The list is kept with its JSON, so its id cannot be reused.
            by_id[id(urls)] = (urls, fragment)
            self._chars += size
        return fragment


class CheckinEncoder:
    """The check-in answers, rendered straight to response bytes.

    Gives exactly jsonenc.dumps(build_checkin_v1(...)) (v2 likewise) for
    the same arguments and randomness, but spends its time only on what
    varies per probe: the conf object exists in eight variants and the
    test names and fixed targets never change, so their JSON is made
    once, into a template; a URL list is encoded once per list object and
    remembered (the prioritisation snapshot hands out the same list for
    the same network and filters until it is replaced), so `urls` must
    not be mutated afterwards.  Per version, at most `max_lists` lists and
    `max_chars` characters of their JSON are remembered (oldest dropped).
    """

    def __init__(self, max_lists=1024, max_chars=8_000_000):
        self._conf_v1 = _conf_fragments(torsf=True)
        self._conf_v2 = _conf_fragments(torsf=False)
        self._v1, self._v1_order, self._v1_urls_slot = _v1_template()
        self._v2, self._v2_urls_slot = _v2_template()
        self._urls_v1 = _EncodedLists(_urls_v1, max_lists, max_chars)
        self._urls_v2 = _EncodedLists(_urls_v2, max_lists, max_chars)

    def v1(self, geo, cc, asn, urls, client_ip, collector_id, now, rand=os.urandom):
        """Bytes of the /api/v1/check-in answer (arguments of build_checkin_v1)."""
        geo_cc, geo_asn, network_name = geo
        report_ids = new_report_ids(CHECKIN_V1_TESTS, cc, asn, collector_id, now, rand)
        fields = [
            self._conf_v1[_client_variant(client_ip)],
            _fragment(geo_asn),
            _fragment(geo_cc),
            _fragment(network_name),
        ]
        fields.extend([_quote(report_ids[index]) for index in self._v1_order])
        fields.insert(5 + self._v1_urls_slot, self._urls_v1.encode(urls))
        fields.append(_quote(_utc_time(now)))
        return (self._v1 % tuple(fields)).encode("utf-8")

    def v2(self, geo, cc, asn, urls, client_ip, collector_id, now, rand=os.urandom):
        """Bytes of the /api/_/check-in answer (arguments of build_checkin_v2)."""
        geo_cc, geo_asn, network_name = geo
        conf = self._conf_v2[_client_variant(client_ip)]
        report_ids = new_report_ids(CHECKIN_V2_NETTESTS, cc, asn, collector_id, now, rand)
        fields = [conf]
        fields.extend([_quote(report_id) for report_id in report_ids])
        fields.insert(2 + self._v2_urls_slot, self._urls_v2.encode(urls))
        fields.extend(
            (_fragment(geo_asn), _fragment(geo_cc), _fragment(network_name), _quote(_utc_time(now)))
        )
        return (self._v2 % tuple(fields)).encode("utf-8")


# Other probe services (§12.10)


def _default_collectors():
    entries = [
        {"address": _ONION_COLLECTOR, "type": "onion"},
        {"address": "https://ams-pg.ooni.org:443", "type": "https"},
        {
            "address": "https://" + _CLOUDFRONT_COLLECTOR,
            "front": _CLOUDFRONT_COLLECTOR,
            "type": "cloudfront",
        },
    ]
    return entries + [dict(e) for e in entries]


def collectors(configured=None):
    """GET /api/v1/collectors: the configured hosts, else the reference list.

    `configured` is the `collectors` setting: a comma-separated string or a
    sequence of host names; blanks are ignored.
    """
    if isinstance(configured, str):
        configured = configured.split(",")
    hosts = [h.strip() for h in (configured or ()) if h and h.strip()]
    if not hosts:
        return _default_collectors()
    return [{"address": "https://" + host, "type": "https"} for host in hosts]


def bouncer_response(body):
    """POST /bouncer/net-tests for the first requested test.

    `body` is the raw request body (bytes) or its decoded JSON; anything
    but {"net-tests": [{"name": ..., "version": ...}, ...]} raises
    BadProbeRequest("Malformed request").
    """
    malformed = BadProbeRequest("Malformed request")
    if isinstance(body, (bytes, bytearray)):
        try:
            body = json.loads(body)
        except (ValueError, RecursionError):
            raise malformed
    if not isinstance(body, dict):
        raise malformed
    net_tests = body.get("net-tests")
    if not isinstance(net_tests, list) or not net_tests:
        raise malformed
    first = net_tests[0]
    if not isinstance(first, dict) or "name" not in first or "version" not in first:
        raise malformed
    return {
        "net-tests": [
            {
                "collector": _ONION_COLLECTOR,
                "collector-alternate": [
                    {"type": "https", "address": "https://ams-pg.ooni.org"},
                    {
                        "front": _CLOUDFRONT_COLLECTOR,
                        "type": "cloudfront",
                        "address": "https://" + _CLOUDFRONT_COLLECTOR,
                    },
                ],
                "input-hashes": None,
                "name": first["name"],
                "test-helpers": {
                    "tcp-echo": "37.218.241.93",
                    "http-return-json-headers": "http://37.218.241.94:80",
                    "web-connectivity": "httpo://y3zq5fwelrzkkv3s.onion",
                },
                "test-helpers-alternate": {
                    "web-connectivity": [
                        {"type": "https", "address": "https://wcth.ooni.io"},
                        {
                            "front": _CLOUDFRONT_TH,
                            "type": "cloudfront",
                            "address": "https://" + _CLOUDFRONT_TH,
                        },
                    ]
                },
                "version": first["version"],
            }
        ]
    }


def _optional_str(obj, key, default):
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise BadProbeRequest("Invalid " + key)
    return value


def open_report(body, collector_id, now, rand=os.urandom):
    """POST /report: a fresh report_id for the described test; nothing stored.

    `body` is the decoded JSON object.  Unusable asn/cc values become
    AS0/ZZ (so the report's measurements will be discarded); fields of a
    non-string type raise BadProbeRequest.
    """
    if not isinstance(body, dict):
        raise BadProbeRequest(JSON_EXPECTED)
    asn = normalize_probe_asn(_optional_str(body, "probe_asn", "AS0"))
    cc = normalize_probe_cc(_optional_str(body, "probe_cc", "ZZ"))
    test_name = _optional_str(body, "test_name", "").lower()
    return {
        "backend_version": "1.3.5",
        "report_id": new_report_id(test_name, cc, asn, collector_id, now, rand),
        "supported_formats": ["yaml", "json"],
    }


# Probe credentials (§6.5, §6.9): claims only; signing is the JWT module's job.


def probe_client_id_claims(now):
    """Claims of the client_id returned by POST /api/v1/register (no expiry)."""
    return {"iat": int(_as_utc(now).timestamp()), "aud": "probe_login"}


def probe_token_claims(registration_time):
    """Claims of the token returned by POST /api/v1/login.

    `registration_time` is the client_id's `iat`, or None for a legacy
    login whose username is not a JWT.  No `exp`: see probe_token_expire.
    """
    return {"registration_time": registration_time, "aud": "probe_token"}


def probe_token_expire(now):
    """The advisory `expire` string returned beside the probe token (now + 7 days)."""
    return _utc_time(_as_utc(now) + timedelta(days=7))
