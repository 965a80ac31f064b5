"""
Query-string parameters and their validators (api-routes.md section 3).

Every validator takes the raw text (or None when absent) and returns the
parsed value, or raises L{BadRequest} with the reference's message, so a bad
parameter is always a 400 JSON answer and never reaches SQL unchecked.
"""

import datetime
import ipaddress
import re
from urllib.parse import urlsplit

from .errors import BadRequest

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


class QueryArgs:
    """
    The query string of one request, decoded once: first occurrence wins,
    values as text (invalid UTF-8 or NUL rejected with 400).
    """

    def __init__(self, args):
        self._values = {}
        for raw_key, values in args.items():
            try:
                key = raw_key.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if not values:
                continue
            self._values[key] = values[0]

    @classmethod
    def from_request(cls, request):
        return cls(request.args)

    def raw(self, name):
        """
        The undecoded bytes of C{name}, or None.
        """
        return self._values.get(name)

    def get(self, name, default=None):
        """
        The text of C{name}, or C{default} when absent.
        """
        value = self._values.get(name)
        if value is None:
            return default
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"Invalid characters in {name} field")
        if "\0" in text:
            raise BadRequest(f"Invalid characters in {name} field")
        return text

    def present(self, name):
        return bool(self._values.get(name))

    def items(self):
        for key in self._values:
            yield key, self.get(key)


def empty(value):
    return value is None or value == ""


def parse_int(value, name, default=None, minimum=None):
    """
    An integer parameter (E5 when not an integer or beyond 64 bits).
    """
    if empty(value):
        return default
    try:
        number = int(value.strip(), 10)
    except ValueError:
        raise BadRequest(f"Invalid {name} value: {value!r} is not an integer")
    if not INT64_MIN <= number <= INT64_MAX:
        raise BadRequest(f"Invalid {name} value: out of range")
    if minimum is not None and number < minimum:
        raise BadRequest(f"Invalid {name} value: must be at least {minimum}")
    return number


def parse_asn(value):
    """
    C{AS123} or C{123} -> 123; empty -> None.
    """
    if empty(value):
        return None
    text = value[2:] if value.startswith("AS") else value
    if not text.isdigit() or not text.isascii():
        raise BadRequest(f"Invalid ASN value {value!r}")
    number = int(text)
    if number > 2**32 - 1:
        raise BadRequest(f"Invalid ASN value {value!r}")
    return number


def parse_asn_list(value, name="probe_asn"):
    """
    Comma list of ASNs -> sorted, deduplicated numbers as strings.
    """
    if empty(value):
        return []
    out = set()
    for item in value.split(","):
        if not item:
            continue
        text = item[2:] if item.startswith("AS") else item
        if not text.isdigit() or not text.isascii():
            raise BadRequest(f"Invalid ASN value in parameter {name}")
        out.add(str(int(text)))
    return sorted(out)


_UPPER_COMMA = re.compile(r"^[A-Z,]*$")
_LOWER_UNDERSCORE_COMMA = re.compile(r"^[a-z_,]*$")
_LOWER_UNDERSCORE = re.compile(r"^[a-z_]*$")
_UPPER = re.compile(r"^[A-Z]*$")


def _split(value):
    return sorted({item for item in value.split(",") if item})


def parse_cc_list(value, name="probe_cc"):
    if empty(value):
        return []
    if not _UPPER_COMMA.match(value):
        raise BadRequest("Invalid characters")
    items = _split(value)
    for item in items:
        if len(item) != 2:
            raise BadRequest(f"Invalid CC value in parameter {name}")
    return items


def parse_test_name_list(value):
    if empty(value):
        return []
    if not _LOWER_UNDERSCORE_COMMA.match(value):
        raise BadRequest("Invalid characters")
    return _split(value)


def parse_lower_underscore(value):
    if empty(value):
        return None
    if not _LOWER_UNDERSCORE.match(value):
        raise BadRequest("Invalid characters")
    return value


def parse_upper(value):
    if empty(value):
        return None
    if not _UPPER.match(value):
        raise BadRequest("Invalid characters")
    return value


def parse_comma_list(value):
    if empty(value):
        return None
    return _split(value)


def parse_bool(value):
    """
    Empty -> None (no filter); 'true' in any case -> True; else False.
    """
    if empty(value):
        return None
    return value.lower() == "true"


_DATE_ONLY = re.compile(r"^(\d{4})-?(\d{1,2})-?(\d{1,2})$")


def parse_date(value, name="date"):
    """
    A lenient date or date-time -> naive UTC datetime; empty -> None.
    """
    if empty(value):
        return None
    text = value.strip()
    match = _DATE_ONLY.match(text)
    try:
        if match:
            y, m, d = (int(g) for g in match.groups())
            return datetime.datetime(y, m, d)
        candidate = text.replace(" ", "T", 1) if "T" not in text else text
        if candidate.endswith(("Z", "z")):
            candidate = candidate[:-1] + "+00:00"
        parsed = datetime.datetime.fromisoformat(candidate)
    except ValueError:
        raise BadRequest(f"Invalid {name} value: unable to parse {value!r}")
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return parsed


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(
    r"^(?:" + _LABEL + r"\.)+[A-Za-z0-9][A-Za-z0-9_-]{0,61}[A-Za-z]$"
)


def is_valid_domain(text):
    """
    A host name of two or more labels, an IP address, or either with :port.
    """
    try:
        idna = text.encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        return False
    if _HOSTNAME.match(idna):
        return True
    if ":" in idna:
        host, _, port = idna.rpartition(":")
        if port.isdigit():
            try:
                if _HOSTNAME.match(host.encode("idna").decode("ascii")):
                    return True
            except (UnicodeError, ValueError):
                pass
            candidate = host
        else:
            candidate = idna
    else:
        candidate = idna
    candidate = candidate.strip("[]")
    for attempt in (candidate, idna.strip("[]")):
        try:
            ipaddress.ip_address(attempt)
            return True
        except ValueError:
            continue
    return False


def parse_domain(value, name="domain"):
    if empty(value):
        return None
    if not is_valid_domain(value):
        raise BadRequest(f"Invalid characters in {name} field")
    return value


def parse_domain_list(value, name="domain"):
    if empty(value):
        return []
    items = _split(value)
    for item in items:
        if not is_valid_domain(item):
            raise BadRequest(f"Invalid characters in {name} field")
    return items


def parse_url(value, name="url"):
    if empty(value):
        return value
    try:
        netloc = urlsplit(value).netloc
    except ValueError:
        raise BadRequest(f"Invalid characters in {name} field")
    if not is_valid_domain(netloc):
        raise BadRequest(f"Invalid characters in {name} field")
    return value


_REPORT_ID = re.compile(r"^[A-Za-z0-9_]+$")


def parse_report_id(value, required=False):
    if empty(value):
        if required:
            raise BadRequest("Invalid report_id")
        return None
    if not 15 <= len(value) <= 100:
        raise BadRequest("Invalid report_id field")
    if not _REPORT_ID.match(value):
        raise BadRequest("Invalid characters")
    return value


_INPUT_ALLOWED = set(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 :/.[]-_%+(){}=?#&!,$"
)


def parse_input(value, name="input"):
    if empty(value):
        return None
    for char in value:
        if ord(char) < 128 and char not in _INPUT_ALLOWED:
            raise BadRequest(f"Invalid characters in {name} field")
    return value


def parse_measurement_uid(value):
    if value is None or not 10 <= len(value) <= 100:
        raise BadRequest("Invalid measurement_uid field")
    return value
