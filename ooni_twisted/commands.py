"""
The admin commands of the operator contract, as blocking functions of
(backend, config, arguments, output). The command-line tool runs them on
its own connection; a running server runs them for the tool through its
control port, on its own database thread pool.
"""

import time

from .accounts import roles, tokens
from .storage import schema
from .testlists import citizenlab, rules


class CommandError(Exception):
    """
    The command cannot run; the message is one line for the operator.
    """


def init_db(backend, config, args, out):
    applied = schema.migrate(backend)
    seeded = rules.seed_defaults(backend)
    out.write(
        "schema up to date"
        + (f" (applied {', '.join(map(str, applied))})" if applied else "")
        + ("; default prioritisation rules seeded" if seeded else "")
        + "\n"
    )
    return 0


def import_test_lists(backend, config, args, out):
    if len(args) != 1:
        raise CommandError("usage: import-test-lists DIR")
    result = citizenlab.read_test_lists(args[0])
    for problem in result.problems:
        out.write(f"skipped: {problem}\n")
    if not result.rows:
        raise CommandError(f"{args[0]}: no test-list rows found")
    citizenlab.replace_citizenlab(backend, result.rows)
    counts = ", ".join(f"{cc} {n}" for cc, n in sorted(result.per_cc.items()))
    out.write(f"imported {len(result.rows)} rows ({counts})\n")
    return 0


def import_url_priorities(backend, config, args, out):
    if len(args) != 1:
        raise CommandError("usage: import-url-priorities FILE")
    try:
        wanted = rules.read_rules_file(args[0])
    except (OSError, ValueError) as e:
        raise CommandError(str(e))
    added, retracted = rules.replace_rules(backend, wanted)
    out.write(f"{len(wanted)} live rules ({added} added, {retracted} retracted)\n")
    return 0


def set_role(backend, config, args, out):
    if len(args) != 2:
        raise CommandError("usage: set-role EMAIL ROLE")
    email, role = args
    account = tokens.account_id(email, config.account_id_hashing_key)
    try:
        roles.set_role(backend, account, role)
    except ValueError as e:
        raise CommandError(str(e))
    out.write(f"{account} {role}\n")
    return 0


def create_token(backend, config, args, out, now=None):
    if len(args) != 1:
        raise CommandError("usage: create-token EMAIL")
    account = tokens.account_id(args[0], config.account_id_hashing_key)
    role = roles.get_role(backend, account) or "user"
    now = int(time.time()) if now is None else now
    claims = tokens.session_claims(
        account, role, now, now, config.session_expiry_days, config.login_expiry_days
    )
    out.write(tokens.encode(claims, config.jwt_encryption_key) + "\n")
    return 0


def import_measurements(backend, config, args, out):
    # Imported on use: the importer pulls in scoring and the archive.
    from .measurements.importer import import_measurements as run

    return run(backend, config, args, out)


import_measurements.runs_locally = True


#: name -> (function, needs the database)
COMMANDS = {
    "init-db": init_db,
    "import-test-lists": import_test_lists,
    "import-url-priorities": import_url_priorities,
    "import-measurements": import_measurements,
    "set-role": set_role,
    "create-token": create_token,
}
