"""
Errors that routes raise, each carrying the exact JSON the reference
answers (api-routes.md section 2.5). One handler in the app renders them.
"""


class ApiError(Exception):
    """
    An error response: C{status}, the JSON C{body}, and the Cache-Control
    value (None for no header of its own).
    """

    def __init__(self, status, body, cache_control="no-cache", headers=None):
        super().__init__(body)
        self.status = status
        self.body = body
        self.cache_control = cache_control
        self.headers = headers or {}


def jerror(message, status=400, **extra):
    """
    E1: C{{"error": message}} plus extra keys, no-cache.
    """
    body = {"error": message}
    body.update(extra)
    return ApiError(status, body)


class BadRequest(ApiError):
    """
    E1 400 for a parameter or body that fails validation (E4/E5).
    """

    def __init__(self, message):
        super().__init__(400, {"error": message})
        self.message = message


#: E2 typed errors: code -> (status, description).
OONI_ERRORS = {
    "err_generic_ooni_exception": (400, "Generic OONI error"),
    "err_bad_url": (400, "Invalid URL"),
    "err_bad_category_code": (400, "Invalid category code"),
    "err_bad_category_description": (400, "Invalid category description"),
    "err_bad_date": (400, "Invalid date"),
    "err_country_not_supported": (400, "Country Not Supported"),
    "err_invalid_country_code": (400, "Country code is invalid"),
    "err_empty_translation_field": (400, "Empty translation field"),
    "err_duplicate_url": (400, "Duplicate URL"),
    "err_duplicate_rule": (400, "Duplicate rule"),
    "err_rule_not_found": (404, "Rule not found error"),
    "err_cannot_close_pr": (400, "Unable to close PR. Please reload data."),
    "err_cannot_update_list": (
        400,
        "Unable to update. The URL list has changed in the meantime.",
    ),
    "err_no_proposed_changes": (400, "No changes are being proposed"),
    "err_ownership": (
        400,
        "Attempted to create, update or delete an item beloging to another user",
    ),
    "err_request_params": (400, "Invalid parameters in the request"),
}


def ooni_error(code, description=None, **err_args):
    """
    E2: a typed OONI error with C{err_str}, and C{err_args} when given.
    """
    status, default = OONI_ERRORS[code]
    body = {"error": description or default, "err_str": code}
    if err_args:
        body["err_args"] = err_args
    return ApiError(status, body, cache_control=None)


def v1_error(message):
    """
    E9: the legacy /api/v1/files error shape.
    """
    return ApiError(400, {"error_code": 400, "error_message": message})
