"""URL prioritisation for web_connectivity test lists (api-routes.md §8).

Two layers:

* plain functions over lists of dicts (match_rule, compute_priorities,
  generate_test_list, failover_test_list) that state the algorithm and
  serve the debug and statistics routes;
* PrioritySnapshot, an immutable in-memory copy of the CitizenLab lists,
  the live rules and the measurement counters, which answers the hot
  probe paths (check-in, /api/v1/test-list/urls) without a query and
  gives exactly the same lists as generate_test_list.

Entries are dicts {category_code, domain, url, cc, msmt_cnt}; rules are
dicts {category_code, cc, domain, url, priority} where `*` or "" means any.
"""

import heapq
from collections import namedtuple

__all__ = [
    "DEFAULT_RULES",
    "TestList",
    "match_rule",
    "rules_for_country",
    "compute_priorities",
    "generate_test_list",
    "failover_test_list",
    "PrioritySnapshot",
]

_WILDCARDS = ("", "*")

# Seed for an empty rules table (§8.7); treat the dicts as read-only.
DEFAULT_RULES = tuple(
    {"category_code": code, "cc": "*", "domain": "*", "url": "*", "priority": prio}
    for code, prio in (
        ("NEWS", 100),
        ("POLR", 100),
        ("HUMR", 100),
        ("LGBT", 100),
        ("ANON", 100),
        ("COMT", 100),
        ("GRP", 100),
        ("MMED", 80),
        ("SRCH", 80),
        ("PUBH", 80),
        ("REL", 60),
        ("XED", 60),
        ("HOST", 60),
        ("ENV", 60),
        ("FILE", 40),
        ("CULTR", 40),
        ("IGO", 40),
        ("GOVT", 40),
        ("DATE", 30),
        ("HATE", 30),
        ("MILX", 30),
        ("PROV", 30),
        ("PORN", 30),
        ("GMB", 30),
        ("ALDR", 30),
        ("GAME", 20),
        ("MISC", 20),
        ("HACK", 20),
        ("ECON", 20),
        ("COMM", 20),
        ("CTRL", 20),
    )
)

TestList = namedtuple("TestList", ["items", "entries", "rules"])
TestList.__doc__ = """Result of generate_test_list.

`items` are the URLs for the probe; `entries` and `rules` are the raw
inputs, filled only in debug mode (empty lists otherwise).
"""


def _is_global(cc):
    return cc.upper() == "ZZ"


def _matches_target(entry, rule):
    """The category/domain/url half of a rule match (cc left aside)."""
    for key in ("category_code", "domain", "url"):
        wanted = rule[key]
        if wanted not in _WILDCARDS and wanted != entry[key]:
            return False
    return True


def match_rule(entry, rule):
    """Whether a priority rule applies to a CitizenLab entry (§8.2).

    Global entries (cc ZZ) accept rules of any cc; cc is compared
    case-insensitively because country lists store it in lower case.
    """
    if not _matches_target(entry, rule):
        return False
    rule_cc = rule["cc"]
    if rule_cc in _WILDCARDS or _is_global(entry["cc"]):
        return True
    return rule_cc.upper() == entry["cc"].upper()


def rules_for_country(rules, country_code):
    """The rules used for a country's list: its own and the wildcard ones."""
    cc = country_code.upper()
    return [r for r in rules if r["cc"] in _WILDCARDS or r["cc"].upper() == cc]


def _weight(priority, msmt_cnt):
    return priority / max(msmt_cnt, 0.1)


def compute_priorities(entries, rules):
    """Entries with `priority` and `weight` added, heaviest first (§8.3).

    The sort is stable, so equal weights keep the input order.
    """
    out = []
    for entry in entries:
        priority = 0
        for rule in rules:
            if match_rule(entry, rule):
                priority += rule["priority"]
        item = dict(entry)
        item["priority"] = priority
        item["weight"] = _weight(priority, entry["msmt_cnt"])
        out.append(item)
    out.sort(key=lambda item: item["weight"], reverse=True)
    return out


def _country_code_of(cc):
    return "XX" if _is_global(cc) else cc.upper()


def generate_test_list(
    entries, rules, category_codes, limit, debug, country_code=None
):
    """The prioritised URL list for a probe (§8.4), as a TestList.

    `entries` are the §8.1 candidates; `rules` the live rules, already
    reduced to the country's (or pass `country_code` to reduce them here).
    Entries outside `category_codes` (when not empty) and entries of
    priority <= 0 are skipped.  The list stops once it holds `limit` items,
    checked after each append: a limit <= 0 still yields one item (kept
    from the reference).
    """
    if country_code is not None:
        rules = rules_for_country(rules, country_code)
    categories = frozenset(category_codes or ())
    items = []
    for entry in compute_priorities(entries, rules):
        if categories and entry["category_code"] not in categories:
            continue
        if entry["priority"] <= 0:
            continue
        item = {
            "category_code": entry["category_code"],
            "url": entry["url"],
            "country_code": _country_code_of(entry["cc"]),
        }
        if debug:
            item["msmt_cnt"] = entry["msmt_cnt"]
            item["priority"] = entry["priority"]
            item["weight"] = entry["weight"]
        items.append(item)
        if len(items) >= limit:
            break
    if debug:
        return TestList(items, list(entries), list(rules))
    return TestList(items, [], [])


def failover_test_list(citizenlab, category_codes, limit, rng):
    """A random list from the global CitizenLab list, for database outages (§8.6).

    Samples, without replacement, up to `limit` global entries of the
    requested categories (all when none); `rng` is a random.Random.
    """
    categories = frozenset(category_codes or ())
    candidates = [
        row
        for row in citizenlab
        if _is_global(row["cc"])
        and (not categories or row["category_code"] in categories)
    ]
    count = max(0, min(limit, len(candidates)))
    return [
        {"category_code": row["category_code"], "url": row["url"], "country_code": "XX"}
        for row in rng.sample(candidates, count)
    ]


# In-memory snapshot for the hot paths


class _CountryPlan:
    """What a country's list looks like before measurement counts.

    `candidates` are indices into the snapshot's rows in list order;
    `cold` holds, for candidates of positive priority, (-weight, position)
    as if nobody had measured them, sorted; `by_url` finds those
    candidates again when some URL has been measured.
    """

    __slots__ = ("candidates", "cold", "cold_order", "by_url", "items", "_dicts")

    def __init__(self, candidates, priorities, rows):
        self.candidates = candidates
        self.items = []
        self.by_url = {}
        cold = []
        for pos, (index, priority) in enumerate(zip(candidates, priorities)):
            row = rows[index]
            self.items.append(
                (row["category_code"], row["url"], _country_code_of(row["cc"]))
            )
            if priority > 0:
                cold.append((-_weight(priority, 0), pos))
                self.by_url.setdefault(row["url"], []).append((pos, priority))
        cold.sort()
        self.cold = cold
        self.cold_order = [pos for _, pos in cold]
        self._dicts = None

    def item_dicts(self):
        """One read-only list-item dict per position, shared by cached lists."""
        dicts = self._dicts
        if dicts is None:
            dicts = self._dicts = [
                {"category_code": category_code, "url": url, "country_code": country}
                for category_code, url, country in self.items
            ]
        return dicts


class _ListPriorities:
    """CitizenLab rows and live rules, with per-country plans computed once.

    Shared by every snapshot built from the same rows and rules, so that a
    refresh of the counters alone costs nothing here.
    """

    def __init__(self, citizenlab, rules):
        self.rows = tuple(
            {
                "category_code": row["category_code"],
                "domain": row["domain"],
                "url": row["url"],
                "cc": row["cc"].rstrip("\x00"),
            }
            for row in citizenlab
        )
        self.rules = tuple(dict(rule) for rule in rules)
        self.by_cc = {}
        for index, row in enumerate(self.rows):
            self.by_cc.setdefault(row["cc"], []).append(index)
        self.global_indices = tuple(
            i for i, row in enumerate(self.rows) if _is_global(row["cc"])
        )
        self._cc_rules = {}
        wildcard_rules = []
        for rule in self.rules:
            if rule["cc"] in _WILDCARDS:
                wildcard_rules.append(rule)
            else:
                self._cc_rules.setdefault(rule["cc"].upper(), []).append(rule)
        # Wildcard-cc rules apply to every row of every candidate set, so
        # their sum is computed once per row.
        self._base = tuple(
            sum(r["priority"] for r in wildcard_rules if _matches_target(row, r))
            for row in self.rows
        )
        self._plans = {}

    def _key(self, cc):
        """Countries without own rows or rules share the global plan."""
        if cc in self.by_cc or cc.lower() in self.by_cc or cc in self._cc_rules:
            return cc
        return None

    def plan(self, country_code):
        cc = country_code.upper()
        key = self._key(cc)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._make_plan(cc, key)
        return plan

    def _make_plan(self, cc, key):
        own_rules = self._cc_rules.get(cc, []) if key is not None else []
        candidates = set(self.global_indices)
        if key is not None:
            for stored_cc in (cc, cc.lower()):
                candidates.update(self.by_cc.get(stored_cc, ()))
        candidates = sorted(candidates)
        priorities = []
        for index in candidates:
            row = self.rows[index]
            priority = self._base[index]
            for rule in own_rules:
                if _matches_target(row, rule):
                    priority += rule["priority"]
            priorities.append(priority)
        return _CountryPlan(candidates, priorities, self.rows)


# Bounds the per-snapshot cache of orders of measured networks (each is a
# list of at most one int per candidate URL).
_MAX_CACHED_ORDERS = 4096

# Bounds the per-snapshot cache of finished lists (each holds at most one
# reference per candidate URL; the item dicts are shared).
_MAX_CACHED_LISTS = 1024


class PrioritySnapshot:
    """Everything needed to build test lists, frozen at one moment.

    citizenlab: rows {domain, url, cc, category_code};
    rules: the live rules;
    counters: {(probe_cc, probe_asn, url): count} over the current and the
    previous week; cc_counters: the same summed over ASNs {(probe_cc, url):
    count}, derived from `counters` when not given.

    Never mutated: a refresh builds a new snapshot (with_counters() keeps
    the work done on rows and rules) and swaps it in.  Lists are computed
    lazily per country and cached inside the snapshot; generate() hands
    out the cached lists themselves, so callers must not mutate them.
    """

    def __init__(self, citizenlab, rules, counters, cc_counters=None, _lists=None):
        self._lists = _lists if _lists is not None else _ListPriorities(citizenlab, rules)
        self._asn_counts = {}
        derived = {}
        for (cc, asn, url), count in counters.items():
            if count > 0:
                cc = cc.upper()
                self._asn_counts.setdefault((cc, int(asn)), {})[url] = count
                if cc_counters is None:
                    per_url = derived.setdefault(cc, {})
                    per_url[url] = per_url.get(url, 0) + count
        if cc_counters is not None:
            for (cc, url), count in cc_counters.items():
                if count > 0:
                    derived.setdefault(cc.upper(), {})[url] = count
        self._cc_counts = derived
        self._orders = {}
        self._results = {}

    def with_counters(self, counters, cc_counters=None):
        """A new snapshot with fresh counters and the same rows and rules."""
        return PrioritySnapshot(None, None, counters, cc_counters, _lists=self._lists)

    @property
    def rules(self):
        """The live rules (tuple of dicts; do not mutate)."""
        return self._lists.rules

    def _counts(self, cc, asn):
        asn = int(asn)
        if asn:
            return self._asn_counts.get((cc, asn), {})
        return self._cc_counts.get(cc, {})

    def entries_for(self, country_code, asn):
        """The §8.1 candidate entries for (CC, ASN), with msmt_cnt."""
        cc = country_code.upper()
        plan = self._lists.plan(cc)
        counts = self._counts(cc, asn)
        rows = self._lists.rows
        out = []
        for index in plan.candidates:
            entry = dict(rows[index])
            entry["msmt_cnt"] = counts.get(entry["url"], 0)
            out.append(entry)
        return out

    def rules_for(self, country_code):
        """The live rules used for a country (its own and the wildcard ones)."""
        return rules_for_country(self._lists.rules, country_code)

    def generate(self, country_code, asn, category_codes, limit, debug=False):
        """Same TestList as generate_test_list on entries_for/rules_for.

        asn 0 means all networks of the country; category_codes is an
        iterable of codes (empty: all).
        """
        cc = country_code.upper()
        if debug:
            return generate_test_list(
                self.entries_for(cc, asn),
                self.rules_for(cc),
                category_codes,
                limit,
                True,
            )
        plan = self._lists.plan(cc)
        order_key, order = self._order(plan, cc, asn)
        categories = frozenset(category_codes or ())
        key = (order_key, categories, limit)
        result = self._results.get(key)
        if result is not None:
            return result
        dicts = plan.item_dicts()
        items = []
        for pos in order:
            item = dicts[pos]
            if categories and item["category_code"] not in categories:
                continue
            items.append(item)
            if len(items) >= limit:
                break
        result = TestList(items, [], [])
        if len(self._results) >= _MAX_CACHED_LISTS:
            self._results.clear()
        self._results[key] = result
        return result

    def _order(self, plan, cc, asn):
        """(key, positions of the country's positive candidates, heaviest first).

        Depends only on this snapshot, so it is computed once per measured
        network; unmeasured networks share the plan's own order, and the
        key says which order it is: the plan itself or (cc, asn).
        """
        counts = self._counts(cc, asn)
        if not counts:
            return plan, plan.cold_order
        key = (cc, int(asn))
        order = self._orders.get(key)
        if order is None:
            measured = []
            for url, count in counts.items():
                for pos, priority in plan.by_url.get(url, ()):
                    measured.append((-_weight(priority, count), pos))
            measured.sort()
            cold = (pair for pair in plan.cold if plan.items[pair[1]][1] not in counts)
            order = [pos for _, pos in heapq.merge(cold, measured)]
            if len(self._orders) >= _MAX_CACHED_ORDERS:
                self._orders.clear()
            self._orders[key] = order
        return key, order

    def failover(self, category_codes, limit, rng):
        """failover_test_list over the snapshot's global list."""
        rows = self._lists.rows
        return failover_test_list(
            [rows[i] for i in self._lists.global_indices], category_codes, limit, rng
        )
