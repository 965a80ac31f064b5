"""
The CitizenLab test lists: reading the CSV files of a test-lists checkout
and replacing the C{citizenlab} table with them. Owns C{citizenlab} and
C{citizenlab_flip}.
"""

import csv
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_CC_FILE = re.compile(r"^[A-Za-z]{2}$")

COLUMNS = ("domain", "url", "cc", "category_code")


@dataclass
class TestListImport:
    """
    The rows read from a test-lists folder and the rows refused, with where.
    """

    rows: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    per_cc: dict = field(default_factory=dict)


def url_domain(url):
    """
    The host name of an http(s) URL, or None when it is not one.
    """
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not host:
        return None
    return host


def _cc_of(filename):
    stem, ext = os.path.splitext(filename)
    if ext != ".csv":
        return None
    if stem == "global":
        return "ZZ"
    if _CC_FILE.match(stem):
        return stem
    return None


def read_test_lists(folder):
    """
    Read C{folder}/lists/*.csv (or C{folder}/*.csv when given the lists
    folder itself). Bad rows are reported with file:line and skipped.
    """
    lists = os.path.join(folder, "lists")
    if not os.path.isdir(lists):
        lists = folder
    result = TestListImport()
    for name in sorted(os.listdir(lists)):
        cc = _cc_of(name)
        if cc is None:
            continue
        path = os.path.join(lists, name)
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or [h.strip() for h in header[:2]] != ["url", "category_code"]:
                result.problems.append(f"{path}:1: not a test-list CSV header, file skipped")
                continue
            for line_number, record in enumerate(reader, start=2):
                if not record or not any(record):
                    continue
                url = record[0].strip()
                category = record[1].strip() if len(record) > 1 else ""
                domain = url_domain(url)
                if domain is None:
                    result.problems.append(f"{path}:{line_number}: invalid URL {url!r}")
                    continue
                if not category:
                    result.problems.append(f"{path}:{line_number}: missing category_code")
                    continue
                result.rows.append((domain, url, cc, category))
                result.per_cc[cc] = result.per_cc.get(cc, 0) + 1
    return result


def replace_citizenlab(backend, rows):
    """
    Load C{rows} into the staging table, then swap it with the live one so
    readers never see a half-loaded list. Blocking.
    """
    backend.execute("TRUNCATE TABLE citizenlab_flip")
    backend.insert("citizenlab_flip", COLUMNS, rows)
    try:
        backend.execute("EXCHANGE TABLES citizenlab_flip AND citizenlab")
    except Exception:
        backend.execute("TRUNCATE TABLE citizenlab")
        backend.insert("citizenlab", COLUMNS, rows)
    backend.execute("TRUNCATE TABLE citizenlab_flip")


def count_by_cc(backend):
    rows = backend.query("SELECT cc, count() AS n FROM citizenlab GROUP BY cc ORDER BY cc")
    return {row["cc"]: row["n"] for row in rows}


def load_entries(backend):
    """
    Every citizenlab row as a dict {domain, url, cc, category_code}.
    """
    return backend.query("SELECT domain, url, cc, category_code FROM citizenlab")
