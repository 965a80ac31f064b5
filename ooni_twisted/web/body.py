"""
Reading JSON request bodies: anything that is not the JSON the route expects
becomes a 400 with the route's message, never a 500 (section 2.9).
"""

import json

from .errors import ApiError, jerror

JSON_EXPECTED = "JSON expected"


def raw_body(request):
    request.content.seek(0)
    return request.content.read()


def _reject(error, message):
    if error is not None:
        return error
    return jerror(message)


def parse_json(data, expect=dict, message=JSON_EXPECTED, error=None):
    """
    Decode C{data} as JSON of type C{expect} (or any type when None).

    @param error: an L{ApiError} to raise instead of E1 C{message}.
    """
    if not data:
        raise _reject(error, message)
    try:
        text = data.decode("utf-8")
        value = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _reject(error, message)
    if expect is not None and not isinstance(value, expect):
        raise _reject(error, message)
    return value


def json_body(request, expect=dict, message=JSON_EXPECTED, error=None):
    """
    The request body as JSON, regardless of Content-Type (probe routes).
    """
    return parse_json(raw_body(request), expect, message, error)


def is_json_content(request):
    value = request.getHeader(b"content-type") or b""
    return value.split(b";")[0].strip().lower() == b"application/json"


def strict_json_body(request, expect=dict, message=JSON_EXPECTED, error=None):
    """
    The body as JSON, requiring a JSON Content-Type (browser-facing routes).
    """
    if not is_json_content(request):
        raise _reject(error, message)
    return json_body(request, expect, message, error)


def field(obj, name, kind, default=None, message=JSON_EXPECTED):
    """
    C{obj[name]} when it has type C{kind}, C{default} when absent or null;
    any other type is a 400.
    """
    value = obj.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise jerror(message)
    return value


__all__ = [
    "ApiError",
    "JSON_EXPECTED",
    "field",
    "is_json_content",
    "json_body",
    "parse_json",
    "raw_body",
    "strict_json_body",
]
