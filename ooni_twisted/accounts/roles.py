"""
Account roles (api-routes.md section 6.3). Owns the C{accounts} table:
a row exists only for accounts given a role explicitly.
"""

ROLES = ("user", "admin")


def get_role(backend, account_id):
    rows = backend.query(
        "SELECT role FROM accounts WHERE account_id = {a:String}", {"a": account_id}
    )
    return rows[0]["role"] if rows else None


def set_role(backend, account_id, role):
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (expected one of: {', '.join(ROLES)})")
    backend.insert("accounts", ["account_id", "role"], [(account_id, role)])
