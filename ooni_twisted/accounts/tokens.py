"""
The JSON Web Tokens of api-routes.md section 6: account ids, registration
links, sessions and probe credentials. Pure functions; time is passed in.
"""

import hashlib
from dataclasses import dataclass

import jwt


class TokenError(Exception):
    """
    A token is missing, malformed, badly signed, expired or for another use.
    """


def account_id(email, hashing_key):
    """
    Keyed BLAKE2b of the normalised address, 32 hex characters (6.2).
    """
    normalised = email.strip().lower().encode("utf-8")
    digest = hashlib.blake2b(normalised, key=hashing_key.encode("utf-8"), digest_size=16)
    return digest.hexdigest()


def encode(claims, key):
    return jwt.encode(claims, key, algorithm="HS256")


def decode(token, key, audience, now=None):
    """
    Verify signature, audience and (when present) exp/nbf; return claims.
    """
    options = {"require": ["aud"]}
    try:
        if now is None:
            return jwt.decode(token, key, algorithms=["HS256"], audience=audience, options=options)
        claims = jwt.decode(
            token,
            key,
            algorithms=["HS256"],
            audience=audience,
            options=dict(options, verify_exp=False, verify_nbf=False),
        )
    except jwt.PyJWTError as e:
        raise TokenError(str(e)) from e
    if "exp" in claims and now >= claims["exp"]:
        raise TokenError("Signature has expired")
    if "nbf" in claims and now < claims["nbf"]:
        raise TokenError("The token is not yet valid (nbf)")
    return claims


@dataclass(frozen=True)
class Session:
    """
    What a valid session token says about its bearer.
    """

    account_id: str
    role: str
    iat: int
    login_time: int
    token: str = ""


def session_claims(account, role, login_time, now, session_days, login_days):
    """
    Claims of a session token issued at C{now} (6.5).
    """
    expiry = min(now + session_days * 86400, login_time + login_days * 86400)
    return {
        "nbf": now,
        "iat": now,
        "exp": expiry,
        "aud": "user_auth",
        "account_id": account,
        "login_time": login_time,
        "role": role,
    }


def decode_session(token, key, now=None):
    claims = decode(token, key, "user_auth", now)
    try:
        return Session(
            account_id=str(claims["account_id"]),
            role=str(claims["role"]),
            iat=int(claims.get("iat", 0)),
            login_time=int(claims.get("login_time", claims.get("iat", 0))),
            token=token,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise TokenError(f"missing claim: {e}") from e
