"""
The URL prioritisation rules of the C{url_priorities} table (a
CollapsingMergeTree: a rule is added with sign 1 and retracted with the
identical row with sign -1). Owns C{url_priorities} and its seeding marker.
"""

import json

from .prioritization import DEFAULT_RULES

COLUMNS = ("sign", "category_code", "cc", "domain", "url", "priority")
RULE_FIELDS = ("category_code", "cc", "domain", "url", "priority")

_SEEDED_KEY = "url_priorities_seeded"

_LIVE_SQL = """
SELECT category_code, cc, domain, url, priority
FROM url_priorities
GROUP BY category_code, cc, domain, url, priority
HAVING sum(sign) > 0
ORDER BY category_code, cc, domain, url, priority
"""


def _blank_to_star(value):
    value = "" if value is None else str(value).strip()
    return value or "*"


def normalise_rule(rule):
    """
    A rule dict with every text field present (empty stored as C{*}) and an
    integer priority.

    @raise ValueError: when the rule is not an object or priority is not an integer.
    """
    if not isinstance(rule, dict):
        raise ValueError("a rule must be a JSON object")
    priority = rule.get("priority")
    if isinstance(priority, bool) or not isinstance(priority, int):
        try:
            priority = int(str(priority))
        except ValueError:
            raise ValueError(f"priority must be an integer, got {priority!r}")
    out = {name: _blank_to_star(rule.get(name)) for name in RULE_FIELDS[:-1]}
    out["priority"] = priority
    return out


def live_rules(backend):
    """
    The rules whose net sign is positive. Blocking.
    """
    return backend.query(_LIVE_SQL)


def _row(rule, sign):
    return (sign, rule["category_code"], rule["cc"], rule["domain"], rule["url"], rule["priority"])


def _mark_seeded(backend):
    backend.insert("api_meta", ["key", "value"], [(_SEEDED_KEY, "1")])


def replace_rules(backend, rules):
    """
    Make the live rules exactly C{rules}: retract every live rule that is
    not wanted, add the wanted ones that are not live. Blocking.
    """
    wanted = {tuple(r[f] for f in RULE_FIELDS) for r in map(normalise_rule, rules)}
    current = {tuple(r[f] for f in RULE_FIELDS) for r in live_rules(backend)}
    retract = [(-1,) + key for key in sorted(current - wanted)]
    add = [(1,) + key for key in sorted(wanted - current)]
    if retract:
        backend.insert("url_priorities", COLUMNS, retract)
    if add:
        backend.insert("url_priorities", COLUMNS, add)
    _mark_seeded(backend)
    return len(add), len(retract)


def seed_defaults(backend):
    """
    Seed the default rules once, into a table that never held a rule.
    """
    seeded = backend.query(
        "SELECT value FROM api_meta WHERE key = {key:String}", {"key": _SEEDED_KEY}
    )
    if seeded:
        return False
    rows = [_row(rule, 1) for rule in DEFAULT_RULES]
    backend.insert("url_priorities", COLUMNS, rows)
    _mark_seeded(backend)
    return True


def read_rules_file(path):
    """
    Rules from a JSON file: a list of {category_code, cc, domain, url, priority}.

    @raise ValueError: with the position of the first bad rule.
    """
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of rules")
    rules = []
    for index, item in enumerate(data):
        try:
            rules.append(normalise_rule(item))
        except ValueError as e:
            raise ValueError(f"{path}: rule {index}: {e}")
    return rules
