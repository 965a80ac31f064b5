"""Blockpage fingerprints, compiled once so that matching a measurement is cheap.

The fingerprints are the rows of the ``fingerprints_dns`` and
``fingerprints_http`` tables (api-routes.md section 11.12).  Matching follows
the reference fastpath (ooni/backend ``fastpath/core.py``) so that scores are
the same:

* DNS: the address of each answer (``ipv4``, else ``hostname``, else ``ipv6``)
  must equal the pattern;
* HTTP body: every ``location_found == "body"`` pattern is searched as a
  literal substring, whatever its ``pattern_type``; a body given as
  ``{"format": "base64", "data": ...}`` is decoded first;
* HTTP headers (``location_found == "header.<name>"``, name compared
  case-insensitively): ``full`` needs equality and ``prefix`` a prefix (a
  base64 header value is decoded as latin-1 for ``prefix``); ``contains`` and
  ``regexp`` header fingerprints are never matched by the reference.

One deliberate difference: the reference at the pinned commit sliced the
header name one character too far (``header.location`` looked up
``ocation``), so header fingerprints never matched; its later versions fix
that and so does this module.

With ``strict=True`` every ``pattern_type`` is honoured instead, for body and
headers alike (``full`` equality, ``prefix``, ``contains`` substring,
``regexp`` search).  That is not what the reference does; it exists for
callers who want the fingerprint table's stated meaning.

Why the body matcher is built the way it is: the reference runs ~1300
substring searches per response body, which costs milliseconds on a normal
page.  Here each body is cut into tokens once (runs of ASCII letters, digits,
``_`` and non-ASCII bytes); a pattern can only occur if its *interior* tokens
(those bounded by separators inside the pattern) are whole body tokens, and
its edge tokens are a suffix / prefix of body tokens.  Those set lookups
leave a handful of candidates, which are then confirmed with a real
substring search, so the result is exactly the reference's.
"""

import json
import re
from base64 import b64decode
from operator import itemgetter

__all__ = ["Fingerprints"]

_PATTERN_TYPES = ("full", "prefix", "contains", "regexp")


def _separator_table():
    """Byte table mapping every ASCII non-word byte to a space."""
    table = bytearray(range(256))
    for c in range(128):
        ch = chr(c)
        if not (ch.isalnum() or ch == "_"):
            table[c] = 0x20
    return bytes(table)


_SEPARATORS = _separator_table()
_EDGE = 4  # bytes of an edge token kept in the prefix / suffix sets
_HEAD = itemgetter(slice(0, _EDGE))
_TAIL = itemgetter(slice(-_EDGE, None))


def _to_bytes(text):
    """UTF-8 bytes of a str; a substring test on them equals one on the str."""
    return text.encode("utf-8", "surrogatepass")


def _expected_countries(value):
    """Split the comma-separated country list like the reference does."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        items = [str(v).upper() for v in value]
    else:
        items = [cc.upper() for cc in str(value).strip().split(",")]
    ccs = set(items)
    ccs.discard("")
    ccs.discard("ZZ")
    return sorted(ccs)


class _Fingerprint:
    """One fingerprint: its position in the source list and its summary."""

    __slots__ = ("index", "mini", "pattern", "pattern_type")

    def __init__(self, index, raw):
        if not isinstance(raw, dict):
            raise ValueError(f"fingerprint #{index} is not an object")
        for key in ("name", "location_found", "pattern"):
            if not isinstance(raw.get(key), str):
                raise ValueError(f"fingerprint #{index} has no string {key!r}")
        self.index = index
        self.pattern = raw["pattern"]
        self.pattern_type = raw.get("pattern_type") or "full"
        self.mini = {
            "name": raw["name"],
            "scope": raw.get("scope"),
            "location_found": raw["location_found"],
            "confidence_no_fp": raw.get("confidence_no_fp"),
            "expected_countries": _expected_countries(
                raw.get("expected_countries")
            ),
        }

    def summary(self):
        """A fresh copy, so that callers may keep or change it freely."""
        mini = dict(self.mini)
        mini["expected_countries"] = list(mini["expected_countries"])
        return mini


class _BodySubstrings:
    """Exact "pattern occurs in body" for many literal patterns at once.

    Tokens are taken from the UTF-8 bytes of the body; the final substring
    test runs on a str (much cheaper per call than on bytes): the body itself,
    or the latin-1 view of a decoded base64 body, which is searched with the
    latin-1 view of each pattern's UTF-8 bytes.
    """

    def __init__(self, entries):
        # entries: iterable of (index, pattern str)
        self._always = []  # empty patterns occur in every body
        self._interior = {}  # token -> [(index, text, latin, required tokens)]
        self._prefix = {}  # first bytes of a body token -> [(index, text, latin)]
        self._suffix = {}  # last bytes of a body token -> [(index, text, latin)]
        scan = []  # no usable token: searched in every body
        all_interior = set()
        for index, pattern in entries:
            raw = _to_bytes(pattern)
            if not raw:
                self._always.append(index)
                continue
            item = (index, pattern, raw.decode("latin-1"))
            parts = raw.translate(_SEPARATORS).split(b" ")
            interior = frozenset(t for t in parts[1:-1] if t)
            if interior:
                key = max(sorted(interior), key=len)
                self._interior.setdefault(key, []).append(item + (interior,))
                all_interior.update(interior)
                continue
            first, last = parts[0], parts[-1]
            # the first token ends a body token, the last one starts one
            head_ok = len(parts) > 1 and len(last) >= _EDGE
            tail_ok = len(parts) > 1 and len(first) >= _EDGE
            if head_ok and (not tail_ok or len(last) >= len(first)):
                self._prefix.setdefault(last[:_EDGE], []).append(item)
            elif tail_ok:
                self._suffix.setdefault(first[-_EDGE:], []).append(item)
            else:
                scan.append((len(raw), raw.isascii(), item))
        scan.sort(key=itemgetter(0))
        self._scan = [(size, ascii_only) + item for size, ascii_only, item in scan]
        self._interior_tokens = frozenset(all_interior)
        self._prefix_keys = frozenset(self._prefix)
        self._suffix_keys = frozenset(self._suffix)

    def find(self, raw, text, latin):
        """Indexes of the patterns found in a body.

        ``raw`` is the body's bytes; ``text`` the str searched: the body
        itself, or ``raw.decode("latin-1")`` when ``latin`` is true.
        """
        found = list(self._always)
        pick = 2 if latin else 1
        tokens = raw.translate(_SEPARATORS).split()
        present = self._interior_tokens.intersection(tokens)
        for token in present:
            candidates = self._interior.get(token)
            if candidates:
                for item in candidates:
                    if item[3] <= present and item[pick] in text:
                        found.append(item[0])
        if self._prefix_keys:
            for key in self._prefix_keys.intersection(map(_HEAD, tokens)):
                for item in self._prefix[key]:
                    if item[pick] in text:
                        found.append(item[0])
        if self._suffix_keys:
            for key in self._suffix_keys.intersection(map(_TAIL, tokens)):
                for item in self._suffix[key]:
                    if item[pick] in text:
                        found.append(item[0])
        size = len(raw)
        body_ascii = raw.isascii()
        pick += 2
        for item in self._scan:
            if item[0] > size:
                break  # sorted by length: nothing longer can occur
            if (item[1] or not body_ascii) and item[pick] in text:
                found.append(item[2])
        return found


class _Matchers:
    """Matchers of one location (the body or one header) by pattern type.

    ``types`` maps a fingerprint to the pattern type used for it, or to None
    when the fingerprint is never matched at this location.
    """

    def __init__(self, fps, types):
        self.full = {}
        self.prefixes = []
        self.contains = []
        self.regexps = []
        for fp in fps:
            ptype = types(fp)
            if ptype == "full":
                self.full.setdefault(fp.pattern, []).append(fp.index)
            elif ptype == "prefix":
                self.prefixes.append((fp.pattern, fp.index))
            elif ptype == "contains":
                self.contains.append((fp.index, fp.pattern))
            elif ptype == "regexp":
                self.regexps.append((_compile_regexp(fp), fp.index))
        self.prefix_tuple = tuple(p for p, _ in self.prefixes)


def _compile_regexp(fp):
    try:
        return re.compile(fp.pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise ValueError(f"fingerprint {fp.mini['name']!r}: bad regexp: {exc}") from exc


def _declared_type(fp):
    return fp.pattern_type


def _literal_type(fp):
    return "contains"


def _reference_header_type(fp):
    """The reference matches header fingerprints by equality or prefix only."""
    return fp.pattern_type if fp.pattern_type in ("full", "prefix") else None


def _decode_base64(value):
    """Decode like the reference (lenient alphabet, padding errors raise)."""
    return b64decode(value)


class Fingerprints:
    """Compiled DNS and HTTP blockpage fingerprints.

    Matching methods return fingerprint summaries ``{name, scope,
    location_found, confidence_no_fp, expected_countries}`` in the order the
    reference produces them.  A base64 body or header that cannot be decoded
    raises ``binascii.Error`` (a ``ValueError``), as in the reference, so that
    the scorer can treat the measurement as broken.
    """

    def __init__(self, dns, http, strict=False):
        if not isinstance(dns, (list, tuple)) or not isinstance(http, (list, tuple)):
            raise ValueError("fingerprints must be given as two lists")
        self.strict = bool(strict)
        self._dns = [_Fingerprint(i, raw) for i, raw in enumerate(dns)]
        self._http = [_Fingerprint(i, raw) for i, raw in enumerate(http)]
        for fp in self._dns + self._http:
            if self.strict and fp.pattern_type not in _PATTERN_TYPES:
                raise ValueError(
                    f"fingerprint {fp.mini['name']!r}: "
                    f"unknown pattern_type {fp.pattern_type!r}"
                )
        self._compile_dns()
        self._compile_http()

    @classmethod
    def from_lists(cls, dns, http, strict=False):
        """Build from two lists of fingerprint rows (dicts)."""
        return cls(dns, http, strict=strict)

    @classmethod
    def from_files(cls, dns_path, http_path, strict=False):
        """Build from two JSON files holding lists of rows.

        This reads files: call it from a thread, not from the reactor.
        Raises OSError if a file cannot be read, ValueError if it is not a
        JSON list of fingerprints.
        """
        lists = []
        for path in (dns_path, http_path):
            with open(path, "rb") as f:
                try:
                    lists.append(json.load(f))
                except ValueError as exc:
                    raise ValueError(f"{path}: not JSON: {exc}") from exc
        return cls(lists[0], lists[1], strict=strict)

    def __len__(self):
        return len(self._dns) + len(self._http)

    # -- compilation ---------------------------------------------------

    def _compile_dns(self):
        self._dns_exact = {}
        self._dns_other = []
        for fp in self._dns:
            if not self.strict or fp.pattern_type == "full":
                self._dns_exact.setdefault(fp.pattern, []).append(fp)
            else:
                self._dns_other.append(fp)
        self._dns_regexps = {
            fp.index: _compile_regexp(fp)
            for fp in self._dns_other
            if fp.pattern_type == "regexp"
        }

    def _compile_http(self):
        body_fps = []
        header_fps = {}
        for fp in self._http:
            loc = fp.mini["location_found"]
            if loc == "body":
                body_fps.append(fp)
            elif loc.startswith("header."):
                header_fps.setdefault(loc[7:].lower(), []).append(fp)
        # The reference searches every body pattern as a literal substring.
        body = _Matchers(body_fps, _declared_type if self.strict else _literal_type)
        self._body_substrings = _BodySubstrings(
            (index, pattern) for index, pattern in body.contains
        )
        self._body_full = {_to_bytes(k): v for k, v in body.full.items()}
        self._body_prefixes = [(_to_bytes(p), i) for p, i in body.prefixes]
        self._body_prefix_tuple = tuple(p for p, _ in self._body_prefixes)
        self._body_regexps = body.regexps
        header_types = _declared_type if self.strict else _reference_header_type
        self._headers = {
            name: _Matchers(fps, header_types) for name, fps in header_fps.items()
        }

    # -- matching ------------------------------------------------------

    def _summaries(self, indexes):
        http = self._http
        return [http[i].summary() for i in sorted(indexes)]

    def match_dns_answer(self, answer):
        """Fingerprints matching one DNS answer object."""
        if not isinstance(answer, dict):
            return []
        if "ipv4" in answer:
            addr = answer["ipv4"]
        elif "hostname" in answer:
            addr = answer["hostname"]
        elif "ipv6" in answer:
            addr = answer["ipv6"]
        else:
            addr = ""
        if not isinstance(addr, str):
            return []
        out = [fp.summary() for fp in self._dns_exact.get(addr, ())]
        if self._dns_other:
            extra = [fp for fp in self._dns_other if self._dns_hit(fp, addr)]
            if extra:
                matched = self._dns_exact.get(addr, []) + extra
                out = [fp.summary() for fp in sorted(matched, key=_by_index)]
        return out

    def _dns_hit(self, fp, addr):
        ptype = fp.pattern_type
        if ptype == "prefix":
            return addr.startswith(fp.pattern)
        if ptype == "contains":
            return fp.pattern in addr
        return self._dns_regexps[fp.index].search(addr) is not None

    def match_dns_queries(self, queries):
        """Fingerprints matching the answers of a list of DNS queries."""
        out = []
        if not isinstance(queries, list):
            return out
        for query in queries:
            if not isinstance(query, dict):
                continue
            answers = query.get("answers")
            if not isinstance(answers, list):
                continue
            for answer in answers:
                out.extend(self.match_dns_answer(answer))
        return out

    def match_body(self, body):
        """Fingerprints found in an HTTP response body (str or base64 dict)."""
        if isinstance(body, dict):
            if "data" in body and body.get("format", "") == "base64":
                raw = _decode_base64(body["data"])
                text = raw.decode("latin-1")
                latin = True
            else:
                return []
        elif isinstance(body, str):
            raw = _to_bytes(body)
            text = body
            latin = False
        else:
            return []
        indexes = self._body_substrings.find(raw, text, latin)
        if self._body_full:
            indexes.extend(self._body_full.get(raw, ()))
        if self._body_prefix_tuple and raw.startswith(self._body_prefix_tuple):
            indexes.extend(i for p, i in self._body_prefixes if raw.startswith(p))
        if self._body_regexps:
            if latin:
                text = raw.decode("utf-8", "replace")
            indexes.extend(i for rx, i in self._body_regexps if rx.search(text))
        return self._summaries(indexes)

    def match_headers(self, headers):
        """Fingerprints found in an HTTP response headers object."""
        if not headers or not isinstance(headers, dict) or not self._headers:
            return []
        wanted = {}
        for name, value in headers.items():
            lname = name.lower()
            if lname in self._headers:
                wanted[lname] = value  # the last spelling wins, as a dict would
        indexes = []
        for name, value in wanted.items():
            m = self._headers[name]
            is_b64 = isinstance(value, dict) and value.get("format") == "base64"
            if self.strict and is_b64:
                value = _decode_base64(value.get("data", "")).decode("latin1")
                is_b64 = False
            if isinstance(value, str):
                indexes.extend(m.full.get(value, ()))
            if m.prefix_tuple:
                pvalue = value
                if is_b64:
                    pvalue = _decode_base64(value.get("data", "")).decode("latin1")
                if isinstance(pvalue, str) and pvalue.startswith(m.prefix_tuple):
                    indexes.extend(i for p, i in m.prefixes if pvalue.startswith(p))
            if self.strict and isinstance(value, str):
                indexes.extend(i for i, p in m.contains if p in value)
                indexes.extend(i for rx, i in m.regexps if rx.search(value))
        return self._summaries(indexes)

    def match_response(self, response):
        """Body then header fingerprints of one HTTP response object."""
        if not isinstance(response, dict):
            return []
        return self.match_body(response.get("body")) + self.match_headers(
            response.get("headers")
        )

    def match_requests(self, requests, skip_tor=False):
        """Fingerprints of the responses of a list of HTTP requests."""
        out = []
        if not isinstance(requests, list):
            return out
        for req in requests:
            if not isinstance(req, dict):
                continue
            if skip_tor and _is_tor_request(req):
                continue
            response = req.get("response")
            if response is None:
                continue
            out.extend(self.match_response(response))
        return out

    def match_web_connectivity(self, test_keys):
        """All fingerprints of a web_connectivity ``test_keys``: DNS then HTTP."""
        if not isinstance(test_keys, dict):
            return []
        return self.match_dns_queries(test_keys.get("queries")) + self.match_requests(
            test_keys.get("requests")
        )


def _by_index(fp):
    return fp.index


def _is_tor_request(req):
    """The legacy http_requests test also fetched each page over Tor."""
    request = req.get("request")
    if request is None:
        return False
    tor = request.get("tor") if isinstance(request, dict) else None
    if not isinstance(tor, dict):
        return False
    return bool(tor.get("is_tor"))
