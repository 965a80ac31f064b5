"""Measurement scoring: what ingestion writes into fastpath ``scores``.

The results are those of the reference fastpath (ooni/backend
``fastpath/fastpath/core.py`` at the API commit the project follows) so that
``anomaly`` / ``confirmed`` / ``msm_failure`` mean what OONI Explorer and the
API users expect (api-routes.md section 11.1).  Everything here is pure: no
I/O, no clock; the reception time is passed in.

Where the reference would raise (and so drop the measurement without a
fastpath row), :func:`score_measurement` never raises: it returns the
"failed" scores (all localities 0.0 and ``accuracy`` 0.0), the same result
the reference gives to the broken measurements it does recognise.
"""

import binascii
import json
import re
from datetime import datetime

__all__ = [
    "score_measurement",
    "flag_wrong_date",
    "uid_reception_time",
    "parse_start_time",
    "failed_scores",
]

_LOCALITIES = ("general", "global", "country", "isp", "local")

# Where a confirmed fingerprint puts its 1.0, by fingerprint scope.
_SCOPE_TO_LOCALITY = {
    "inst": "blocking_local",
    "isp": "blocking_isp",
    "nat": "blocking_country",
    "prod": "blocking_general",
}

_WC_BLOCKING_TYPES = ("tcp_ip", "dns", "http-diff", "http-failure")

_FUTURE_TOLERANCE = 3600  # seconds
_MAX_AGE = 365 * 24 * 3600  # seconds


def _init():
    return {
        "blocking_general": 0.0,
        "blocking_global": 0.0,
        "blocking_country": 0.0,
        "blocking_isp": 0.0,
        "blocking_local": 0.0,
    }


def failed_scores():
    """The scores of a measurement that cannot be interpreted."""
    scores = _init()
    scores["accuracy"] = 0.0
    return scores


def _get(d, key, default):
    """``d[key]``, or ``default`` when the key is missing or null."""
    value = d.get(key)
    return default if value is None else value


def _get_path(d, *keys, default=None):
    """Nested :func:`_get`; intermediate missing or null levels give ``{}``."""
    for key in keys[:-1]:
        d = _get(d, key, {})
    return _get(d, keys[-1], default)


# -- times -------------------------------------------------------------


def parse_start_time(value):
    """Parse ``YYYY-MM-DD HH:MM:SS`` (the measurement format) or raise ValueError.

    The common shape goes through ``fromisoformat`` (fast); anything else
    gets the exact ``strptime`` rule of the reference.
    """
    if not isinstance(value, str):
        raise ValueError("not a string")
    if len(value) == 19 and value[10] == " " and value[4] == "-":
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    return datetime.strptime(value, "%Y-%m-%d %H:%M:%S")


def uid_reception_time(measurement_uid):
    """Reception time encoded in a measurement_uid (api-routes.md 4.2), or None.

    The uid starts with ``YYYYmmddHHMMSS.ffffff_`` (parsed by hand: strptime
    costs more than the rest of a row).
    """
    uid = measurement_uid
    if (
        not isinstance(uid, str)
        or len(uid) < 22
        or not uid.startswith("20")
        or uid[14] != "."
        or uid[21] != "_"
    ):
        return None
    digits = uid[:14] + uid[15:21]
    if not (digits.isascii() and digits.isdigit()):
        return None
    try:
        return datetime(
            int(uid[0:4]),
            int(uid[4:6]),
            int(uid[6:8]),
            int(uid[8:10]),
            int(uid[10:12]),
            int(uid[12:14]),
            int(uid[15:21]),
        )
    except ValueError:
        return None


def flag_wrong_date(scores, msm, received):
    """Mark as failed a measurement whose start time is implausible.

    More than one hour in the future of its reception, or more than 365 days
    before it, sets ``accuracy`` 0.0 and a ``msg``.  Unparsable start times
    are left alone (as the reference does).  Changes ``scores`` in place and
    returns it.
    """
    if not isinstance(received, datetime) or not isinstance(msm, dict):
        return scores
    try:
        start = parse_start_time(msm.get("measurement_start_time") or "")
    except ValueError:
        return scores
    if received.tzinfo is not None:
        received = received.replace(tzinfo=None) - (received.utcoffset())
    delta = (received - start).total_seconds()
    if delta < -_FUTURE_TOLERANCE:
        scores["accuracy"] = 0.0
        scores["msg"] = "Measurement start time from the future"
    elif delta > _MAX_AGE:
        scores["accuracy"] = 0.0
        scores["msg"] = "Measurement start time too old"
    return scores


# -- versions (signal) --------------------------------------------------

_VERSION_RE = re.compile(
    r"""
    v?
    (?:(?P<epoch>[0-9]+)!)?
    (?P<release>[0-9]+(?:\.[0-9]+)*)
    (?P<pre>[-_.]?(?:a|b|c|rc|alpha|beta|pre|preview)[-_.]?[0-9]*)?
    (?P<post>-[0-9]+|[-_.]?(?:post|rev|r)[-_.]?[0-9]*)?
    (?P<dev>[-_.]?dev[-_.]?[0-9]*)?
    (?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?
    """,
    re.VERBOSE | re.IGNORECASE,
)


def _version_below(version, threshold):
    """True if the PEP 440 ``version`` sorts before release ``threshold``.

    Raises ValueError for a string that is not a PEP 440 version, which the
    signal scorer turns into a failed measurement like the reference does.
    """
    if not isinstance(version, str):
        raise ValueError("version is not a string")
    m = _VERSION_RE.fullmatch(version.strip())
    if m is None:
        raise ValueError(f"invalid version {version!r}")
    if m.group("epoch") and int(m.group("epoch")) > 0:
        return False
    release = tuple(int(x) for x in m.group("release").split("."))
    width = max(len(release), len(threshold))
    release += (0,) * (width - len(release))
    threshold = tuple(threshold) + (0,) * (width - len(threshold))
    if release != threshold:
        return release < threshold
    # same release: pre-releases and dev releases come before it
    return bool(m.group("pre")) or (bool(m.group("dev")) and not m.group("post"))


# -- helpers shared by scorers -------------------------------------------


def _detect_unknown_failure(tk):
    """A ``*_failure`` key starting with ``unknown_failure`` marks a probe bug."""
    for key in tk:
        if key.endswith("_failure"):
            value = tk[key] or ""
            if value.startswith("unknown_failure"):
                return True
    return False


def _count_tcp_connect(tk):
    """(accessible, unreachable) endpoints of a ``tcp_connect`` list."""
    accessible = unreachable = 0
    for entry in _get(tk, "tcp_connect", []):
        success = _get_path(entry, "status", "success")
        if success is True:
            accessible += 1
        elif success is False:
            unreachable += 1
    return accessible, unreachable


def _is_confirmed(probe_cc, fp):
    """A match confirms blocking in its expected country, or if ISP/national."""
    if probe_cc != "ZZ" and probe_cc in fp["expected_countries"]:
        return True
    return fp["scope"] in ("isp", "nat")


def _apply_fingerprints(scores, msm, matches):
    """Record matched fingerprints and the localities they confirm."""
    if matches:
        scores["fingerprints"] = matches
    probe_cc = _get(msm, "probe_cc", "ZZ").upper()
    for fp in matches:
        if _is_confirmed(probe_cc, fp):
            locality = _SCOPE_TO_LOCALITY.get(fp["scope"], "blocking_general")
            scores[locality] = 1.0
            scores["confirmed"] = True


# -- per-test scorers ------------------------------------------------------
# Each takes (msm, fingerprints) and returns a new scores dict.


def _score_web_connectivity(msm, fingerprints):
    try:
        matches = _match_web_connectivity(msm, fingerprints)
    except binascii.Error:
        scores = _web_connectivity_scores(msm, [])
        scores["accuracy"] = 0.0
        return scores
    return _web_connectivity_scores(msm, matches)


def _match_web_connectivity(msm, fingerprints):
    msm["probe_cc"]  # the reference needs it: a KeyError makes a failed score
    tk = msm.get("test_keys")
    if tk is None or fingerprints is None:
        return []
    return fingerprints.match_web_connectivity(tk)


def _web_connectivity_scores(msm, matches):
    scores = _init()
    tk = _get(msm, "test_keys", {})
    _apply_fingerprints(scores, msm, matches)

    title_match = tk.get("title_match")
    if title_match not in (True, False, None):
        scores["accuracy"] = 0.0
        return scores

    blocking = tk.get("blocking")
    if blocking in _WC_BLOCKING_TYPES:
        scores["blocking_general"] = 1.0
        scores["analysis"] = {"blocking_type": blocking}
    elif blocking == False:  # noqa: E712 - 0 counts as False, as in the reference
        pass
    elif blocking is None:
        # a half-broken measurement, trusted only when a fingerprint matched
        if not matches:
            scores["accuracy"] = 0.0
    else:
        scores["analysis"] = {"msg": "Unsupported blocking type"}
        scores["accuracy"] = 0.0

    if _detect_unknown_failure(tk):
        scores["accuracy"] = 0.0

    scores["blocking_general"] += (
        scores["blocking_country"]
        + scores["blocking_global"]
        + scores["blocking_isp"]
        + scores["blocking_local"]
    )
    if "accessible" in tk and tk["accessible"] is None and not matches:
        scores["accuracy"] = 0.0
    return scores


_FB_CONSISTENCY_KEYS = (
    "facebook_b_api_dns_consistent",
    "facebook_b_api_reachable",
    "facebook_b_graph_dns_consistent",
    "facebook_b_graph_reachable",
    "facebook_edge_dns_consistent",
    "facebook_edge_reachable",
    "facebook_external_cdn_dns_consistent",
    "facebook_external_cdn_reachable",
    "facebook_scontent_cdn_dns_consistent",
    "facebook_scontent_cdn_reachable",
    "facebook_star_dns_consistent",
    "facebook_star_reachable",
    "facebook_stun_dns_consistent",
)
_FB_ANOMALY_KEYS = ("facebook_tcp_blocking", "facebook_dns_blocking")
# Probes reported facebook_dns_blocking true together with everything
# consistent and reachable: that combination is not an anomaly.
_FB_FALSE_POSITIVE_TRUES = (
    "facebook_b_api_dns_consistent",
    "facebook_b_api_reachable",
    "facebook_b_graph_dns_consistent",
    "facebook_b_graph_reachable",
    "facebook_dns_blocking",
    "facebook_edge_dns_consistent",
    "facebook_edge_reachable",
    "facebook_star_dns_consistent",
    "facebook_star_reachable",
    "facebook_stun_dns_consistent",
)


def _score_facebook_messenger(msm, fingerprints):
    tk = _get(msm, "test_keys", {})
    scores = _init()
    score = 0.0
    false_positive = all(
        tk.get(k) is True for k in _FB_FALSE_POSITIVE_TRUES
    ) and (tk.get("facebook_tcp_blocking") is False)
    if not false_positive:
        for key in _FB_CONSISTENCY_KEYS:
            if tk.get(key) is False:
                score += 0.5
                scores[key] = False
        for key in _FB_ANOMALY_KEYS:
            if tk.get(key) is True:
                score += 0.5
                scores[key] = True
    scores["blocking_general"] = score
    return scores


_TELEGRAM_WEB_URLS = ("https://web.telegram.org/", "http://web.telegram.org/")


def _score_telegram(msm, fingerprints):
    tk = _get(msm, "test_keys", {})
    web_status = tk.get("telegram_web_status")
    accessible, unreachable = _count_tcp_connect(tk)

    http_ok = http_failed = 0
    web_failure = None
    for request in _get(tk, "requests", ()):
        try:
            url = request["request"]["url"]
        except KeyError:
            return failed_scores()
        if url in _TELEGRAM_WEB_URLS:
            # the web app is judged by its status, not counted with the DCs
            if request["failure"] is not None:
                web_failure = request["failure"]
            continue
        if request["failure"] is None:
            http_ok += 1
        else:
            http_failed += 1

    if accessible + unreachable > 0:
        score = unreachable / (accessible + unreachable)
    else:
        score = 0.5
    if http_ok + http_failed > 0:
        score += http_failed / (http_ok + http_failed)
    else:
        score += 0.5
    if web_status == "blocked":
        score += 1

    scores = _init()
    scores["blocking_general"] = score
    scores["web_failure"] = web_failure
    scores["accessible_endpoints"] = accessible
    scores["unreachable_endpoints"] = unreachable
    scores["http_success_cnt"] = http_ok
    scores["http_failure_cnt"] = http_failed
    if web_failure is not None:
        scores["msg"] = "failure: {}".format(web_failure)
    return scores


def _score_http_header_field_manipulation(msm, fingerprints):
    tk = _get(msm, "test_keys", {})
    msm["report_id"]  # required, as in the reference
    scores = _init()
    try:
        first = tk["requests"][0]
        response = first.get("response", {})
    except (KeyError, IndexError, TypeError):
        scores["accuracy"] = 0.0
        return scores
    if response is None:
        scores["accuracy"] = 0.0
        return scores

    body = response.get("body")
    if body is None:
        scores["total_tampering"] = True
        scores["blocking_general"] = 1.0
        scores["msg"] = "Empty body"
        return scores
    try:
        echoed = json.loads(body)["headers_dict"]
    except Exception:
        scores["blocking_general"] = 1.0
        scores["msg"] = "Malformed ctrl_headers"
        return scores

    # the helper echoes each header as a list of values
    received = {(name, values[0]) for name, values in echoed.items()}
    sent = set(first.get("request", {}).get("headers", {}).items())
    received.discard(("Connection", "close"))
    sent.discard(("Connection", "close"))
    if sent == received:
        return scores
    scores["blocking_general"] = 1.1
    scores["msg"] = "{} unexpected header change".format(len(sent ^ received))
    return scores


def _score_http_invalid_request_line(msm, fingerprints):
    tk = _get(msm, "test_keys", {})
    msm["report_id"]  # required, as in the reference
    scores = _init()
    sent = tk.get("sent", [])
    received = tk.get("received", [])
    if not len(sent) and not len(received):
        scores["accuracy"] = 0.0
        return scores
    if any(s != r for s, r in zip(sent, received)):
        scores["blocking_general"] = 1.0
    return scores


def _score_whatsapp(msm, fingerprints):
    tk = _get(msm, "test_keys", {})
    scores = _init()
    if _detect_unknown_failure(tk):
        scores["accuracy"] = 0.0

    web_failure = tk.get("whatsapp_web_failure", "")
    if web_failure and "unknown_failure 'ascii' co" in web_failure:
        _require_report_id(msm)
        scores["accuracy"] = 0.0
        return scores

    requests = tk.get("requests", ()) or ()
    if not requests:
        _require_report_id(msm)
        scores["accuracy"] = 0.0
        return scores

    webapp_ok = None
    registration_ok = None
    for req in requests:
        url = req.get("request", {}).get("url", "")
        if url == "https://web.whatsapp.com/":
            webapp_ok = req.get("failure", True) in (None, "", False)
        elif url == "https://v.whatsapp.net/v2/register":
            registration_ok = req.get("failure") is None

    if webapp_ok is None or registration_ok is None:
        scores["accuracy"] = 0.0
        return scores
    if webapp_ok is not True or registration_ok is not True:
        scores["blocking_general"] = 1.0
        return scores

    accessible, unreachable = _count_tcp_connect(tk)
    if not accessible and not unreachable:
        scores["accuracy"] = 0.0
    elif accessible == 0:
        scores["blocking_general"] = 1.0
    scores["analysis"] = {
        "registration_server_accessible": registration_ok,
        "whatsapp_web_accessible": webapp_ok,
        "whatsapp_endpoints_accessible": accessible > 0,
    }
    return scores


class _ProbeBug(Exception):
    """A measurement the reference rejects with an assertion."""


def _require_report_id(msm):
    if not msm["report_id"]:
        raise _ProbeBug("whatsapp measurement without report_id")


_TOR_DONE = ("Bootstrapped 100%: Done", "Bootstrapped 100% (done): Done")


def _score_vanilla_tor(msm, fingerprints):
    tk = _get(msm, "test_keys", {})
    scores = _init()
    logs = tk.get("tor_logs") or tk.get("tor_log")
    if logs is None:
        scores["accuracy"] = 0.0
        return scores
    if _TOR_DONE[0] in logs or _TOR_DONE[1] in logs:
        return scores
    progress = min(100, max(0, float(tk.get("tor_progress", 0))))
    if progress == 100:
        return scores
    # a slow or throttled bootstrap scores less than one that never starts
    scores["blocking_general"] = 1.0 - progress * 0.004
    return scores


def _score_ndt(msm, fingerprints):
    return {}


_TCP_CONNECT_TIMEOUTS = (
    "generic_timeout_error",
    "connection_refused_error",
    "connect_error",
    "tcp_timed_out_error",
)


def _score_tcp_connect(msm, fingerprints):
    scores = _init()
    tk = _get(msm, "test_keys", {})
    if not msm["input"]:
        raise _ProbeBug("tcp_connect without input")
    result = tk.get("connection")
    if result == "success":
        return scores
    scores["blocking_general"] = 0.8 if result in _TCP_CONNECT_TIMEOUTS else 1.0
    return scores


_DASH_NETWORK_FAILURES = (
    "connection_aborted",
    "json_parse_error",
    "eof_error",
    "json_processing_error",
    "http_request_failed",
    "connect_error",
    "generic_timeout_error",
    "broken_pipe",
    "connection_refused",
)


def _score_dash(msm, fingerprints):
    scores = _init()
    tk = _get(msm, "test_keys", {})
    failure = tk.get("failure")
    if tk == {}:
        scores["accuracy"] = 0.0
        return scores
    if failure is None:
        pass
    elif failure in _DASH_NETWORK_FAILURES or "ssl_error" in failure:
        scores["blocking_general"] = 0.1
        scores["accuracy"] = 0.0
    else:
        scores["msg"] = "Probe error"
        scores["accuracy"] = 0.0
    return scores


def _score_meek_fronted_requests_test(msm, fingerprints):
    scores = _init()
    tk = _get(msm, "test_keys", {})
    requests = tk.get("requests", ()) or ()
    if len(requests) == 0:
        scores["blocking_general"] = 1.0
        scores["accuracy"] = 0
        return scores
    for req in requests:
        response = req.get("response", {})
        if response is None or response.get("code", 0) != 200:
            # one failed request is enough
            scores["blocking_general"] = 1.0
            return scores
        headers = response.get("headers", {})
        if isinstance(headers, list):
            # legacy probes: [[name, [value, ...]], ...]
            headers = {h[0]: h[1][0] for h in headers if h}
        if not headers.get("Server", "").startswith("ECAcc "):
            scores["blocking_general"] += 0.5
    return scores


def _score_psiphon(msm, fingerprints):
    scores = _init()
    tk = _get(msm, "test_keys", {})
    failure = tk.get("failure")
    bootstrap_time = tk.get("bootstrap_time", 0)
    if failure is None:
        scores["accuracy"] = 0.0 if bootstrap_time == 0 else 1.0
    else:
        scores["accuracy"] = 1.0
        scores["blocking_general"] = 1.0
    if "resolver_ip" not in msm:
        scores["accuracy"] = 0.0
    scores["extra"] = {
        "test_runtime": msm.get("test_runtime"),
        "bootstrap_time": bootstrap_time,
    }
    return scores


def _score_tor(msm, fingerprints):
    scores = _init()
    tk = _get(msm, "test_keys", {})
    targets = tk.get("targets", {})
    if not targets or isinstance(targets, list):
        # lists come from early experimental versions of the test
        scores["accuracy"] = 0.0
        return scores
    blocked = succeeded = 0
    for target in targets.values():
        if "failure" not in target or "network_events" not in target:
            scores["accuracy"] = 0.0
            return scores
        failure = target["failure"]
        if failure is False:
            continue  # not run
        if failure is None:
            succeeded += 1
        elif failure == "":
            raise _ProbeBug("tor target with an empty failure")
        else:
            blocked += 1
    if blocked + succeeded:
        scores["blocking_general"] = blocked / (blocked + succeeded)
    else:
        scores["accuracy"] = 0.0
    scores["extra"] = {"test_runtime": msm.get("test_runtime")}
    return scores


def _score_http_requests(msm, fingerprints):
    scores = _init()
    tk = _get(msm, "test_keys", {})
    body_length_match = tk.get("body_length_match")
    headers_match = tk.get("headers_match")
    failed = msm.get("control_failure") or msm.get("experiment_failure")
    if failed or body_length_match is None or headers_match is None:
        scores["accuracy"] = 0.0
        return scores
    if not (bool(body_length_match) and bool(headers_match)):
        scores["blocking_general"] = 1.0
    matches = []
    if fingerprints is not None:
        # one request of each pair went over Tor: only the direct one counts
        matches = fingerprints.match_requests(
            _get(tk, "requests", []), skip_tor=True
        )
    _apply_fingerprints(scores, msm, matches)
    return scores


def _score_dns_consistency(msm, fingerprints):
    return _init()


def _score_signal(msm, fingerprints):
    scores = _init()
    tk = _get(msm, "test_keys", {})
    if tk.get("failed_operation", True) or tk.get("failure", True):
        scores["accuracy"] = 0.0
    try:
        # probe bugs that made old test / engine versions report false
        # results after a given date
        test_version = _get(msm, "test_version", "0.0.0")
        if _version_below(test_version, (0, 2, 2)):
            start = msm.get("measurement_start_time")
            if start is None or parse_start_time(start) >= datetime(2022, 10, 19):
                scores["accuracy"] = 0.0
        engine_version = _get(_get(msm, "annotations", {}), "engine_version", "0.0.0")
        if _version_below(engine_version, (3, 17, 2)):
            start = _get(msm, "measurement_start_time", "2023-05-05 00:00:00")
            if parse_start_time(start) >= datetime(2023, 5, 2):
                scores["accuracy"] = 0.0
    except Exception:
        scores["accuracy"] = 0.0

    status = tk.get("signal_backend_status")
    if status == "ok":
        pass
    elif status == "blocked":
        scores["blocking_general"] = 1.0
        scores["analysis"] = {
            "signal_backend_failure": tk.get("signal_backend_failure")
        }
    else:
        scores["accuracy"] = 0.0
    return scores


def _score_stunreachability(msm, fingerprints):
    scores = _init()
    tk = _get(msm, "test_keys", {})
    scores["extra"] = {"endpoint": tk.get("endpoint")}
    failure = tk.get("failure")
    if failure:
        scores["blocking_general"] = 1.0
        scores["extra"]["failure"] = failure
    return scores


def _score_torsf(msm, fingerprints):
    scores = _init()
    tk = _get(msm, "test_keys", {})
    software_name = msm.get("software_name", "unknown")
    software_version = msm.get("software_version", "unknown")
    if software_version == "3.8.3" and software_name.startswith("ooniprobe-android"):
        # that release reported snowflake failures it caused itself
        scores["accuracy"] = 0.0
        return scores
    if tk.get("failure"):
        scores["blocking_general"] = 1.0
        return scores
    scores["extra"] = {
        "bootstrap_time": tk.get("bootstrap_time"),
        "test_runtime": msm.get("test_runtime"),
    }
    return scores


def _score_riseupvpn(msm, fingerprints):
    scores = _init()
    tk = _get(msm, "test_keys", {})
    transports = tk.get("transport_status") or {}
    if (
        tk.get("api_status") == "blocked"
        or tk.get("ca_cert_status") is False
        or transports.get("obfs4") == "blocked"
        or transports.get("openvpn") == "blocked"
    ):
        scores["blocking_general"] = 1.0
    scores["extra"] = {"test_runtime": msm.get("test_runtime")}
    return scores


def _score_openvpn(msm, fingerprints):
    scores = _init()
    success = _get_path(msm, "test_keys", "success")
    if success is False:
        scores["blocking_general"] = 1.0
    elif success is None:
        scores["accuracy"] = 0.0
    scores["extra"] = {"test_runtime": msm.get("test_runtime")}
    return scores


def _score_browser_web(msm, fingerprints):
    scores = _init()
    tk = _get(msm, "test_keys", {})
    result = _get(tk, "result", "")
    if result == "ok":
        pass
    elif result == "error":
        scores["blocking_general"] = 1.0
    else:
        scores["accuracy"] = 0.0
    scores["extra"] = {
        "browser_name": _get(tk, "browser_name", ""),
        "load_time_ms": _get(tk, "load_time_ms", 0),
    }
    return scores


_SCORERS = {
    "telegram": _score_telegram,
    "facebook_messenger": _score_facebook_messenger,
    "http_header_field_manipulation": _score_http_header_field_manipulation,
    "http_invalid_request_line": _score_http_invalid_request_line,
    "whatsapp": _score_whatsapp,
    "vanilla_tor": _score_vanilla_tor,
    "web_connectivity": _score_web_connectivity,
    "ndt": _score_ndt,
    "tcp_connect": _score_tcp_connect,
    "dash": _score_dash,
    "meek_fronted_requests_test": _score_meek_fronted_requests_test,
    "psiphon": _score_psiphon,
    "tor": _score_tor,
    "http_requests": _score_http_requests,
    "dns_consistency": _score_dns_consistency,
    "signal": _score_signal,
    "stunreachability": _score_stunreachability,
    "torsf": _score_torsf,
    "riseupvpn": _score_riseupvpn,
    "openvpn": _score_openvpn,
    "browser_web": _score_browser_web,
}


def score_measurement(msm, fingerprints=None):
    """Score one measurement; never raises.

    ``fingerprints`` is a :class:`~.fingerprints.Fingerprints` (or None:
    nothing can be confirmed).  Tests without a scorer of their own (e.g.
    ``dnscheck``, legacy ``dns_injection``) get the failed scores, like in
    the reference.
    """
    if not isinstance(msm, dict):
        return failed_scores()
    name = msm.get("test_name")
    scorer = _SCORERS.get(name) if isinstance(name, str) else None
    if scorer is None:
        return failed_scores()
    try:
        return scorer(msm, fingerprints)
    except Exception:
        return failed_scores()
