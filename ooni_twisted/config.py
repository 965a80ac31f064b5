"""
The INI file of the operator contract, read into one frozen L{Config}.

Everything the program may be told lives here, with its default and its
parser, so that a typo in the file is an error that names the key instead of
a silently ignored setting.
"""

import configparser
import ipaddress
import os
from dataclasses import dataclass, field, fields
from urllib.parse import urlsplit

SECTION = "api"

#: Placeholder secrets accepted only in development.
DEV_SECRET = "dev-only-not-secret"


class ConfigError(Exception):
    """
    The configuration cannot be used; the message is one line for the operator.
    """


def _text(value):
    return value.strip()


def _int(key):
    def parse(value):
        try:
            return int(value.strip())
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")

    return parse


def _positive_float(key):
    def parse(value):
        try:
            number = float(value.strip())
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if number <= 0:
            raise ConfigError(f"{key}: must be greater than 0, got {value!r}")
        return number

    return parse


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off", ""}


def _bool(key):
    def parse(value):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")

    return parse


def _list(value):
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _networks(key):
    def parse(value):
        networks = []
        for item in _list(value):
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ConfigError(f"{key}: {item!r} is not an IP address or network")
        return tuple(networks)

    return parse


def _url_list(key):
    def parse(value):
        urls = []
        for item in _list(value):
            parts = urlsplit(item)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"{key}: {item!r} is not an http(s) base URL")
            urls.append(item.rstrip("/"))
        return tuple(urls)

    return parse


def _clickhouse_url(value):
    value = value.strip()
    if value:
        parts = urlsplit(value)
        if parts.scheme != "clickhouse" or not parts.hostname:
            raise ConfigError(
                f"clickhouse_url: expected clickhouse://host:port/db, got {value!r}"
            )
    return value


def _redis_url(value):
    value = value.strip()
    if value:
        parts = urlsplit(value)
        if parts.scheme != "redis" or not parts.hostname:
            raise ConfigError(f"redis_url: expected redis://host:port/db, got {value!r}")
    return value


def _base_url(value):
    value = value.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"base_url: expected an http(s) URL, got {value!r}")
    return value


DEFAULT_RATE_LIMITS = (
    "ipaddr_per_day=4000,ipaddr_per_week=20000,ipaddr_per_month=60000,"
    "token_per_day=500,token_per_week=2000,token_per_month=6000"
)

_RATE_LIMIT_NAMES = {
    "ipaddr_per_day",
    "ipaddr_per_week",
    "ipaddr_per_month",
    "token_per_day",
    "token_per_week",
    "token_per_month",
}


def _rate_limits(value):
    limits = {}
    for item in _list(value):
        name, sep, seconds = item.partition("=")
        name = name.strip()
        if not sep or name not in _RATE_LIMIT_NAMES:
            raise ConfigError(f"rate_limits: unknown or malformed entry {item!r}")
        try:
            limits[name] = float(seconds)
        except ValueError:
            raise ConfigError(f"rate_limits: {name} needs a number of seconds")
        if limits[name] <= 0:
            raise ConfigError(f"rate_limits: {name} must be greater than 0")
    merged = dict(
        (k, float(v))
        for k, v in (p.split("=") for p in DEFAULT_RATE_LIMITS.split(","))
    )
    merged.update(limits)
    return tuple(sorted(merged.items()))


def _prefix(key, maximum):
    def parse(value):
        number = _int(key)(value)
        if not 1 <= number <= maximum:
            raise ConfigError(f"{key}: must be between 1 and {maximum}")
        return number

    return parse


# key -> (default text, parser); paths are resolved after parsing.
_KEYS = {
    "listen": ("tcp:8000:interface=127.0.0.1", _text),
    "base_url": ("http://127.0.0.1:8000", _base_url),
    "data_dir": ("./var", _text),
    "clickhouse_url": ("", _clickhouse_url),
    "redis_url": ("", _redis_url),
    "s3_bucket": ("", _text),
    "s3_endpoint_url": ("", _text),
    "s3_access_key": ("", _text),
    "s3_secret_key": ("", _text),
    "s3_region": ("", _text),
    "spool_dir": ("", _text),
    "quota_dir": ("", _text),
    "geoip_cc_db": ("", _text),
    "geoip_asn_db": ("", _text),
    "jwt_encryption_key": ("", _text),
    "account_id_hashing_key": ("", _text),
    "session_expiry_days": ("2", _int("session_expiry_days")),
    "login_expiry_days": ("7", _int("login_expiry_days")),
    "mail_server": ("", _text),
    "mail_port": ("25", _int("mail_port")),
    "mail_use_ssl": ("false", _bool("mail_use_ssl")),
    "mail_username": ("", _text),
    "mail_password": ("", _text),
    "mail_source_address": ("", _text),
    "tor_targets": ("", _text),
    "psiphon_config": ("", _text),
    "peers": ("", _url_list("peers")),
    "collectors": ("", _list),
    "collector_id": ("0", _text),
    "github_origin_repo": ("", _text),
    "github_push_repo": ("", _text),
    "github_user": ("", _text),
    "github_token": ("", _text),
    "github_workdir": ("", _text),
    "github_api_url": ("", _text),
    "rate_limits": (DEFAULT_RATE_LIMITS, _rate_limits),
    "rate_limit_unmetered": ("127.0.0.1", _networks("rate_limit_unmetered")),
    "rate_limit_ipv4_prefix": ("24", _prefix("rate_limit_ipv4_prefix", 32)),
    "rate_limit_ipv6_prefix": ("64", _prefix("rate_limit_ipv6_prefix", 128)),
    "rate_limit_tokens": ("false", _bool("rate_limit_tokens")),
    "trusted_proxies": ("127.0.0.1, ::1", _networks("trusted_proxies")),
    "ingest_interval": ("2", _positive_float("ingest_interval")),
    "query_timeout": ("30", _positive_float("query_timeout")),
    "clickhouse_threads": ("8", _int("clickhouse_threads")),
    "ingest_workers": ("1", _int("ingest_workers")),
    "max_body_size": ("33554432", _int("max_body_size")),
    "development": ("false", _bool("development")),
}

_PATH_KEYS = (
    "data_dir",
    "spool_dir",
    "quota_dir",
    "geoip_cc_db",
    "geoip_asn_db",
    "tor_targets",
    "psiphon_config",
    "github_workdir",
)


@dataclass(frozen=True)
class Config:
    """
    The whole configuration, immutable once read.

    Paths are absolute; list-valued keys are tuples.
    """

    listen: str
    base_url: str
    data_dir: str
    clickhouse_url: str
    redis_url: str
    s3_bucket: str
    s3_endpoint_url: str
    s3_access_key: str
    s3_secret_key: str
    s3_region: str
    spool_dir: str
    quota_dir: str
    geoip_cc_db: str
    geoip_asn_db: str
    jwt_encryption_key: str
    account_id_hashing_key: str
    session_expiry_days: int
    login_expiry_days: int
    mail_server: str
    mail_port: int
    mail_use_ssl: bool
    mail_username: str
    mail_password: str
    mail_source_address: str
    tor_targets: str
    psiphon_config: str
    peers: tuple
    collectors: tuple
    collector_id: str
    github_origin_repo: str
    github_push_repo: str
    github_user: str
    github_token: str
    github_workdir: str
    github_api_url: str
    rate_limits: tuple
    rate_limit_unmetered: tuple
    rate_limit_ipv4_prefix: int
    rate_limit_ipv6_prefix: int
    rate_limit_tokens: bool
    trusted_proxies: tuple
    ingest_interval: float
    query_timeout: float
    clickhouse_threads: int
    ingest_workers: int
    max_body_size: int
    development: bool
    source: str = field(default="", compare=False)

    @property
    def clickhouse_dir(self):
        return os.path.join(self.data_dir, "clickhouse")

    @property
    def archive_dir(self):
        return os.path.join(self.data_dir, "archive")

    @property
    def quarantine_dir(self):
        return os.path.join(self.data_dir, "quarantine")

    @property
    def control_socket(self):
        return os.path.join(self.data_dir, "control.sock")

    def rate_limit(self, name):
        return dict(self.rate_limits)[name]

    def replace(self, **changes):
        """
        A copy with some values changed (for tests and --listen).
        """
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Config(**values)


def parse_config(values, base_dir, source="<config>"):
    """
    Build a L{Config} from a mapping of key -> text as found in the INI file.

    @param base_dir: the folder relative paths are resolved against.
    @raise ConfigError: on an unknown key, a bad value or a missing secret.
    """
    unknown = sorted(set(values) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} in [{SECTION}]")
    parsed = {}
    for key, (default, parser) in _KEYS.items():
        parsed[key] = parser(values.get(key, default))
    for key in _PATH_KEYS:
        if parsed[key]:
            parsed[key] = os.path.abspath(os.path.join(base_dir, parsed[key]))
    data_dir = parsed["data_dir"]
    if not parsed["spool_dir"]:
        parsed["spool_dir"] = os.path.join(data_dir, "spool")
    if not parsed["quota_dir"]:
        parsed["quota_dir"] = os.path.join(data_dir, "quotas")
    for key in ("jwt_encryption_key", "account_id_hashing_key"):
        if not parsed[key]:
            if not parsed["development"]:
                raise ConfigError(
                    f"{source}: {key} must be set (or set development = true)"
                )
            parsed[key] = DEV_SECRET
    if parsed["ingest_workers"] < 0:
        raise ConfigError(f"{source}: ingest_workers must be 0 or more")
    if parsed["clickhouse_threads"] < 1:
        raise ConfigError(f"{source}: clickhouse_threads must be at least 1")
    return Config(source=source, **parsed)


def load_config(path):
    """
    Read the INI file at C{path}.

    @raise ConfigError: when the file is missing, unreadable or invalid.
    """
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f, source=path)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}")
    except (configparser.Error, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"{path}: malformed config file: {first}")
    other = [s for s in parser.sections() if s != SECTION]
    if other:
        raise ConfigError(f"{path}: unknown section [{other[0]}]")
    if not parser.has_section(SECTION):
        raise ConfigError(f"{path}: missing section [{SECTION}]")
    values = dict(parser.items(SECTION))
    base_dir = os.path.dirname(os.path.abspath(path))
    return parse_config(values, base_dir, source=path)
