"""
The ClickHouse schema, as numbered migrations.

Each migration is a list of statements that may run again safely
(C{IF NOT EXISTS}); the table C{schema_version} records which have been
applied, so a later change is a new migration appended here, never an edit of
an old one.
"""

from twisted.logger import Logger

log = Logger()

_FASTPATH = """
CREATE TABLE IF NOT EXISTS fastpath (
    measurement_uid String,
    report_id String,
    input String,
    probe_cc String,
    probe_asn UInt32,
    test_name String,
    test_start_time DateTime,
    measurement_start_time DateTime,
    filename String,
    scores String,
    platform String,
    anomaly String,
    confirmed String,
    msm_failure String,
    domain String,
    software_name String,
    software_version String,
    control_failure String,
    blocking_general Float32,
    is_ssl_expected Int8,
    page_len Int32,
    page_len_ratio Float32,
    server_cc String,
    server_asn Int8,
    server_as_name String,
    update_time DateTime64(3) MATERIALIZED now64(),
    test_version String,
    test_runtime Float32,
    architecture String,
    engine_name String,
    engine_version String,
    blocking_type String,
    test_helper_address LowCardinality(String),
    test_helper_type LowCardinality(String),
    INDEX fastpath_uid_idx measurement_uid TYPE bloom_filter GRANULARITY 4,
    INDEX fastpath_rid_idx report_id TYPE bloom_filter GRANULARITY 4
) ENGINE = ReplacingMergeTree
ORDER BY (measurement_start_time, report_id, input)
"""

#: Columns the ingestion writes, in insertion order.
FASTPATH_COLUMNS = (
    "measurement_uid",
    "report_id",
    "input",
    "probe_cc",
    "probe_asn",
    "test_name",
    "test_start_time",
    "measurement_start_time",
    "filename",
    "scores",
    "platform",
    "anomaly",
    "confirmed",
    "msm_failure",
    "domain",
    "software_name",
    "software_version",
    "control_failure",
    "blocking_general",
    "is_ssl_expected",
    "page_len",
    "page_len_ratio",
    "server_cc",
    "server_asn",
    "server_as_name",
    "test_version",
    "test_runtime",
    "architecture",
    "engine_name",
    "engine_version",
    "blocking_type",
    "test_helper_address",
    "test_helper_type",
)

_JSONL = """
CREATE TABLE IF NOT EXISTS jsonl (
    report_id String,
    input String,
    s3path String,
    linenum Int32,
    measurement_uid String,
    byte_offset UInt64 DEFAULT 0,
    byte_length UInt32 DEFAULT 0,
    INDEX jsonl_uid_idx measurement_uid TYPE bloom_filter GRANULARITY 4
) ENGINE = MergeTree
ORDER BY (report_id, input)
"""

_URL_PRIORITIES = """
CREATE TABLE IF NOT EXISTS url_priorities (
    sign Int8,
    category_code String,
    cc String,
    domain String,
    url String,
    priority Int32
) ENGINE = CollapsingMergeTree(sign)
ORDER BY (category_code, cc, domain, url, priority)
"""

_CITIZENLAB = """
CREATE TABLE IF NOT EXISTS {name} (
    domain String,
    url String,
    cc FixedString(32),
    category_code String
) ENGINE = ReplacingMergeTree
ORDER BY (domain, url, cc, category_code)
"""

_TEST_GROUPS = """
CREATE TABLE IF NOT EXISTS test_groups (
    test_name String,
    test_group String
) ENGINE = Join(ANY, LEFT, test_name)
"""

_COUNTERS_TEST_LIST = """
CREATE TABLE IF NOT EXISTS counters_test_list (
    day DateTime,
    probe_cc String,
    input String,
    msmt_cnt UInt64
) ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (probe_cc, input, day)
"""

_COUNTERS_TEST_LIST_MV = """
CREATE MATERIALIZED VIEW IF NOT EXISTS counters_test_list_mv
TO counters_test_list AS
SELECT toStartOfDay(measurement_start_time) AS day, probe_cc, input,
       count() AS msmt_cnt
FROM fastpath
INNER JOIN citizenlab ON fastpath.input = citizenlab.url
WHERE test_name = 'web_connectivity'
  AND measurement_start_time > now() - INTERVAL 8 DAY
GROUP BY day, probe_cc, input
"""

_COUNTERS_ASN_TEST_LIST = """
CREATE TABLE IF NOT EXISTS counters_asn_test_list (
    week DateTime,
    probe_cc String,
    probe_asn UInt32,
    input String,
    msmt_cnt UInt64
) ENGINE = SummingMergeTree
ORDER BY (probe_cc, probe_asn, input, week)
"""

_COUNTERS_ASN_TEST_LIST_MV = """
CREATE MATERIALIZED VIEW IF NOT EXISTS counters_asn_test_list_mv
TO counters_asn_test_list AS
SELECT toStartOfWeek(measurement_start_time) AS week, probe_cc, probe_asn,
       input, count() AS msmt_cnt
FROM fastpath
INNER JOIN citizenlab ON fastpath.input = citizenlab.url
WHERE test_name = 'web_connectivity'
  AND measurement_start_time > now() - INTERVAL 8 DAY
GROUP BY week, probe_cc, probe_asn, input
"""

_MSMT_FEEDBACK = """
CREATE TABLE IF NOT EXISTS msmt_feedback (
    measurement_uid String,
    account_id String,
    status String,
    update_time DateTime64(3) MATERIALIZED now64()
) ENGINE = ReplacingMergeTree
ORDER BY (measurement_uid, account_id)
"""

_ACCOUNTS = """
CREATE TABLE IF NOT EXISTS accounts (
    account_id FixedString(32),
    role String
) ENGINE = EmbeddedRocksDB
PRIMARY KEY account_id
"""

_SESSION_EXPUNGE = """
CREATE TABLE IF NOT EXISTS session_expunge (
    account_id FixedString(32),
    threshold DateTime DEFAULT now()
) ENGINE = EmbeddedRocksDB
PRIMARY KEY account_id
"""

_INCIDENTS = """
CREATE TABLE IF NOT EXISTS incidents (
    update_time DateTime DEFAULT now(),
    start_time DateTime DEFAULT now(),
    end_time Nullable(DateTime),
    creator_account_id FixedString(32),
    reported_by String,
    id String,
    title String,
    text String,
    event_type LowCardinality(String),
    published UInt8,
    deleted UInt8 DEFAULT 0,
    CCs Array(FixedString(2)),
    ASNs Array(UInt32),
    domains Array(String),
    tags Array(String),
    links Array(String),
    test_names Array(String),
    short_description String
) ENGINE = ReplacingMergeTree(update_time)
ORDER BY id
"""

_OONIRUN = """
CREATE TABLE IF NOT EXISTS oonirun (
    id UInt64,
    descriptor_creation_time DateTime64(3),
    translation_creation_time DateTime64(3),
    creator_account_id FixedString(32),
    archived UInt8 DEFAULT 0,
    descriptor String,
    author String,
    name String,
    short_description String,
    icon String
) ENGINE = ReplacingMergeTree(translation_creation_time)
ORDER BY (id, descriptor_creation_time)
"""

_ASNMETA = """
CREATE TABLE IF NOT EXISTS asnmeta (
    asn UInt32,
    org_name String,
    cc String,
    changed Date,
    aut_name String,
    source String
) ENGINE = MergeTree
ORDER BY (asn, changed)
"""

_FINGERPRINTS = """
CREATE TABLE IF NOT EXISTS {name} (
    name String,
    scope String,
    other_names String,
    location_found String,
    pattern_type String,
    pattern String,
    confidence_no_fp UInt8,
    expected_countries String,
    source String,
    exp_url String,
    notes String
) ENGINE = EmbeddedRocksDB
PRIMARY KEY name
"""

_API_META = """
CREATE TABLE IF NOT EXISTS api_meta (
    key String,
    value String
) ENGINE = EmbeddedRocksDB
PRIMARY KEY key
"""

_SCHEMA_VERSION = """
CREATE TABLE IF NOT EXISTS schema_version (
    version UInt32,
    applied DateTime DEFAULT now()
) ENGINE = MergeTree
ORDER BY version
"""

#: Ordered migrations: (version, description, statements).
MIGRATIONS = (
    (
        1,
        "the tables of api-routes.md section 11",
        (
            _FASTPATH,
            _JSONL,
            _URL_PRIORITIES,
            _CITIZENLAB.format(name="citizenlab"),
            _CITIZENLAB.format(name="citizenlab_flip"),
            _TEST_GROUPS,
            _COUNTERS_TEST_LIST,
            _COUNTERS_TEST_LIST_MV,
            _COUNTERS_ASN_TEST_LIST,
            _COUNTERS_ASN_TEST_LIST_MV,
            _MSMT_FEEDBACK,
            _ACCOUNTS,
            _SESSION_EXPUNGE,
            _INCIDENTS,
            _OONIRUN,
            _ASNMETA,
            _FINGERPRINTS.format(name="fingerprints_dns"),
            _FINGERPRINTS.format(name="fingerprints_http"),
            _API_META,
        ),
    ),
)

#: test name -> test group (api-routes.md section 11.5).
TEST_GROUPS = {
    "circumvention": (
        "bridge_reachability",
        "meek_fronted_requests_test",
        "psiphon",
        "riseupvpn",
        "tcp_connect",
        "tor",
        "torsf",
        "vanilla_tor",
    ),
    "experimental": ("dnscheck", "urlgetter"),
    "im": ("facebook_messenger", "signal", "telegram", "whatsapp"),
    "legacy": ("dns_consistency", "http_host", "http_requests", "multi_protocol_traceroute"),
    "middlebox": ("http_header_field_manipulation", "http_invalid_request_line"),
    "performance": ("dash", "ndt"),
    "websites": ("web_connectivity",),
}


def applied_versions(backend):
    rows = backend.query("SELECT version FROM schema_version")
    return {row["version"] for row in rows}


def migrate(backend):
    """
    Apply every migration not yet recorded, then refill the fixed lookup
    tables. Blocking: run it in a thread or from the admin tool.

    @return: the versions applied now.
    """
    backend.execute(_SCHEMA_VERSION)
    done = applied_versions(backend)
    applied = []
    for version, description, statements in MIGRATIONS:
        if version in done:
            continue
        log.info("schema: applying migration {v}: {d}", v=version, d=description)
        for statement in statements:
            backend.execute(statement)
        backend.insert("schema_version", ["version"], [(version,)])
        applied.append(version)
    fill_test_groups(backend)
    return applied


def fill_test_groups(backend):
    """
    Refill the test name -> group lookup. A Join table keeps the first row
    per key, so it is emptied first.
    """
    backend.execute("TRUNCATE TABLE test_groups")
    rows = [
        (name, group) for group, names in sorted(TEST_GROUPS.items()) for name in names
    ]
    backend.insert("test_groups", ["test_name", "test_group"], rows)
