"""
Who holds a session: decoding the bearer token and checking the expunge
threshold (api-routes.md sections 6.6 and 6.7). Owns C{session_expunge}.
"""

import datetime

from .tokens import TokenError, decode_session

_EXPUNGE_SQL = (
    "SELECT threshold FROM session_expunge WHERE account_id = {account_id:String}"
)


def bearer_token(request):
    value = request.getHeader(b"authorization")
    if not value:
        return None
    text = value.decode("latin-1")
    if not text.startswith("Bearer "):
        return None
    return text[len("Bearer ") :]


class Sessions:
    """
    Decode session tokens with the configured key; consult the database for
    expunged sessions.
    """

    def __init__(self, jwt_key, clickhouse, clock):
        self._key = jwt_key
        self._db = clickhouse
        self._clock = clock

    def optional(self, request):
        """
        The request's L{Session}, or None (no error for optional-auth routes).
        """
        token = bearer_token(request)
        if token is None:
            return None
        try:
            return decode_session(token, self._key, int(self._clock.seconds()))
        except TokenError:
            return None

    async def expunged(self, session):
        rows = await self._db.query(_EXPUNGE_SQL, {"account_id": session.account_id})
        if not rows:
            return False
        threshold = rows[0]["threshold"]
        issued = datetime.datetime.fromtimestamp(session.iat, datetime.timezone.utc)
        return issued.replace(tzinfo=None) < threshold
