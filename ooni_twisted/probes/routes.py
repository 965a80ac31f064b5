"""
The routes OONI Probe talks to (api-routes.md sections 9 and 12.10): check-in,
credentials, test helpers, collectors, the legacy bouncer, reports and
measurement submission, geolookup, and the spool path peers read (13.3).

Handlers parse, call the pure builders of L{checkin} and L{ids}, and render.
Check-in answers from the in-memory prioritisation snapshot, never from a
query; a submission is acknowledged only once its body is fsynced in the
spool.
"""

import ipaddress
import json
import socket
from datetime import datetime, timezone
from urllib.parse import urlsplit

import jwt
import zstandard
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from ..accounts import tokens
from ..storage.spool import InvalidUID, SegmentSpool, Spool, uid_from_spool_path
from ..web.body import json_body, raw_body
from ..web.errors import ApiError, jerror
from ..web.kit import new_app
from ..web.responses import NO_CACHE, cachedjson, nocachejson, send_bytes
from .checkin import (
    BadProbeRequest,
    CheckinEncoder,
    bouncer_response,
    choose_location,
    collectors,
    open_report,
    parse_checkin_body,
    probe_client_id_claims,
    probe_token_claims,
    probe_token_expire,
    test_helpers,
)
from .geoip import GeoIP
from .ids import ReportIdError, measurement_uid, parse_report_id

log = Logger()

#: Plain bodies up to this size are hashed on the reactor; larger ones,
#: and every zstd body (its size says nothing of what it expands to), in
#: a thread.
INLINE_BODY_BYTES = 64 * 1024

#: Compressed bytes fed to the decompressor per step: zstd expands at most
#: about 32768-fold, so one step never overshoots the limit by more than a
#: few megabytes.
_ZSTD_STEP = 128

#: A probe geolocates a handful of addresses; bound the reactor time one
#: request may take.
MAX_GEOLOOKUP_ADDRESSES = 1000

#: How long resolved peer host names are trusted for the spool path.
PEER_CACHE_SECONDS = 300.0


class BodyTooLarge(Exception):
    """
    A decompressed body is larger than the configured limit.
    """


def decompress_zstd(data, limit):
    """
    The content of one or more complete zstd frames, at most C{limit} bytes.

    @raise BodyTooLarge: when the content is larger than C{limit}.
    @raise ValueError: when C{data} is not complete zstd frames.
    """
    out = bytearray()
    view = memoryview(data)
    pos = 0
    while True:
        decoder = zstandard.ZstdDecompressor().decompressobj()
        while pos < len(view) and not decoder.eof:
            end = min(pos + _ZSTD_STEP, len(view))
            try:
                out += decoder.decompress(view[pos:end])
            except zstandard.ZstdError as e:
                raise ValueError(str(e))
            pos = end
            if len(out) > limit:
                raise BodyTooLarge()
        if not decoder.eof:
            raise ValueError("truncated zstd frame")
        pos -= len(decoder.unused_data)
        if pos >= len(view):
            return bytes(out)


def _json_content(request):
    """
    Whether the request declares a JSON body (C{application/json}, any
    parameters).
    """
    value = (request.getHeader(b"content-type") or b"").decode("latin-1")
    return value.split(";")[0].strip().lower() == "application/json"


def _read_json_file(path):
    with open(path, "rb") as f:
        return json.loads(f.read())


class PeerAddresses:
    """
    Who may read the spool: loopback and the configured peer hosts (their
    names resolved in a thread and cached).
    """

    def __init__(self, peers, reactor, pool, ttl=PEER_CACHE_SECONDS):
        self._reactor = reactor
        self._pool = pool
        self._ttl = ttl
        self._literal = set()
        self._names = []
        for peer in peers:
            host = urlsplit(peer).hostname
            if not host:
                continue
            try:
                self._literal.add(ipaddress.ip_address(host))
            except ValueError:
                self._names.append(host)
        self._resolved = frozenset()
        self._resolved_at = None

    @staticmethod
    def _resolve(names):
        found = set()
        for name in names:
            try:
                infos = socket.getaddrinfo(name, None)
            except OSError:
                continue
            for info in infos:
                try:
                    found.add(ipaddress.ip_address(info[4][0].split("%")[0]))
                except ValueError:
                    pass
        return frozenset(found)

    async def allows(self, address):
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback or ip in self._literal:
            return True
        if not self._names:
            return False
        now = self._reactor.seconds()
        if self._resolved_at is None or now - self._resolved_at > self._ttl:
            self._resolved = await deferToThreadPool(
                self._reactor, self._pool, self._resolve, self._names
            )
            self._resolved_at = now
        return ip in self._resolved


async def open_probe_services(context):
    """
    Open what the probe routes share with the rest of the server: the GeoIP
    databases (C{context.geoip}) and the submission spool (C{context.spool},
    one per server; ingestion reads the same instance).
    """
    config = context.config
    context.geoip = _open_geoip(config)
    context.on_close(context.geoip.close)
    core = SegmentSpool(config.spool_dir)
    await deferToThreadPool(context.reactor, context.file_pool, core.open)
    context.spool = Spool(core, context.reactor, context.file_pool)
    context.on_close(core.close)


def _open_geoip(config):
    """
    The configured databases. One that cannot be opened is logged and left
    out, so its lookups answer "unknown" (section 9.2) instead of keeping
    the server down.
    """
    paths = {}
    for argument, path in (
        ("cc_db_path", config.geoip_cc_db),
        ("asn_db_path", config.geoip_asn_db),
    ):
        if not path:
            continue
        try:
            GeoIP(**{argument: path}).close()
        except Exception as e:
            log.error("cannot open the GeoIP database {path}: {e}", path=path, e=e)
            continue
        paths[argument] = path
    return GeoIP(**paths)


def check_envelope(body):
    """
    Refuse a submission that is not a JSON envelope object with a
    C{content}: it could never be ingested, so the probe is told now
    rather than acknowledged and quarantined later. The body itself is
    stored unchanged.

    @raise ValueError: when it is not.
    """
    try:
        envelope = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("not JSON")
    if not isinstance(envelope, dict) or "content" not in envelope:
        raise ValueError("not a measurement envelope")


class ProbeRoutes:
    """
    Probe services, given the server's configuration, clock, GeoIP, the
    live prioritisation, the spool and the file thread pool.
    """

    app = new_app()

    def __init__(self, context):
        self._config = context.config
        self._reactor = context.reactor
        self._clients = context.client_address
        self._geoip = context.geoip
        self._priorities = context.priorities
        self._spool = context.spool
        self._pool = context.file_pool
        self._key = context.config.jwt_encryption_key
        self._files = {}
        self._checkin = CheckinEncoder()
        self._peers = PeerAddresses(context.config.peers, context.reactor, context.file_pool)

    def _now(self):
        return datetime.fromtimestamp(self._reactor.seconds(), timezone.utc)

    # -- check-in ------------------------------------------------------------

    def _check_in(self, request, encode):
        try:
            probe = parse_checkin_body(json_body(request))
        except BadProbeRequest as e:
            raise jerror(str(e))
        ip = self._clients.probe_ip(request)
        geo = self._geoip.lookup(ip)
        cc, asn = choose_location(probe, geo)
        try:
            urls = self._priorities.snapshot.generate(
                cc, asn, probe.category_codes, probe.url_limit
            ).items
        except Exception:
            log.failure("check-in test list failed; answering without URLs")
            urls = []
        body = encode(geo, cc, asn, urls, ip, self._config.collector_id, self._now())
        return send_bytes(request, body, b"application/json", NO_CACHE)

    @app.route("/api/v1/check-in", methods=["POST"])
    def check_in(self, request):
        return self._check_in(request, self._checkin.v1)

    @app.route("/api/_/check-in", methods=["POST"])
    def check_in_v2(self, request):
        return self._check_in(request, self._checkin.v2)

    # -- static configuration -----------------------------------------------

    @app.route("/api/v1/test-helpers", methods=["GET"])
    def list_test_helpers(self, request):
        return cachedjson(request, "0s", test_helpers(self._clients.probe_ip(request)))

    @app.route("/api/v1/collectors", methods=["GET"])
    def list_collectors(self, request):
        return cachedjson(request, "1h", collectors(self._config.collectors))

    @app.route("/invalidpath", methods=["GET"])
    def invalidpath(self, request):
        raise jerror(404, 404)

    @app.route("/bouncer/net-tests", methods=["POST"])
    def bouncer_net_tests(self, request):
        try:
            return nocachejson(request, bouncer_response(raw_body(request)))
        except BadProbeRequest as e:
            raise jerror(str(e))

    # -- probe credentials (section 6.9) -------------------------------------

    @app.route("/api/v1/register", methods=["POST"])
    def register(self, request):
        if not _json_content(request):
            raise jerror("error: JSON expected!")
        client_id = tokens.encode(probe_client_id_claims(self._now()), self._key)
        return nocachejson(request, {"client_id": client_id})

    @app.route("/api/v1/login", methods=["POST"])
    def login(self, request):
        body = json_body(request)
        username = body.get("username")
        registration_time = None
        if isinstance(username, str) and username:
            try:
                claims = tokens.decode(username, self._key, "probe_login")
            except tokens.TokenError as e:
                cause = e.__cause__
                legacy = isinstance(cause, jwt.DecodeError) and not isinstance(
                    cause, jwt.InvalidSignatureError
                )
                if not legacy:
                    raise jerror("Invalid credentials", 401)
            else:
                registration_time = claims.get("iat")
                if isinstance(registration_time, bool) or not isinstance(
                    registration_time, int
                ):
                    raise jerror("Invalid credentials", 401)
        now = self._now()
        token = tokens.encode(probe_token_claims(registration_time), self._key)
        return nocachejson(request, {"expire": probe_token_expire(now), "token": token})

    def _check_probe_token(self, request):
        header = request.getHeader(b"authorization")
        if header is None:
            raise jerror("Missing Authorization header")
        text = header.decode("latin-1")
        if not text.startswith("Bearer "):
            raise jerror("Invalid token format")
        try:
            tokens.decode(text[len("Bearer ") :], self._key, "probe_token")
        except tokens.TokenError as e:
            if isinstance(e.__cause__, jwt.InvalidSignatureError):
                raise jerror("Invalid JWT signature", 401)
            raise jerror("Invalid credentials", 401)

    async def _json_file(self, path):
        """
        The parsed content of a configured JSON file, read once in a thread.
        """
        if not path:
            raise ApiError(500, {"error": "file not configured"})
        cached = self._files.get(path)
        if cached is None:
            try:
                cached = await deferToThreadPool(
                    self._reactor, self._pool, _read_json_file, path
                )
            except (OSError, ValueError, RecursionError) as e:
                log.error("cannot read {path}: {e}", path=path, e=e)
                raise ApiError(500, {"error": "configuration file unavailable"})
            self._files[path] = cached
        return cached

    @app.route("/api/v1/test-list/psiphon-config", methods=["GET"])
    async def psiphon_config(self, request):
        self._check_probe_token(request)
        payload = await self._json_file(self._config.psiphon_config)
        return nocachejson(request, payload)

    @app.route("/api/v1/test-list/tor-targets", methods=["GET"])
    async def tor_targets(self, request):
        self._check_probe_token(request)
        payload = await self._json_file(self._config.tor_targets)
        return nocachejson(request, payload)

    # -- reports ---------------------------------------------------------------

    @app.route("/report", methods=["POST"])
    def report_open(self, request):
        try:
            payload = open_report(json_body(request), self._config.collector_id, self._now())
        except BadProbeRequest as e:
            raise jerror(str(e))
        return nocachejson(request, payload)

    def _body(self, request, compressed):
        """
        The body to store: as received, or decompressed for zstd. Blocking
        for large bodies; see L{_stored_body}.
        """
        data = raw_body(request)
        if compressed:
            data = decompress_zstd(data, self._config.max_body_size)
        check_envelope(data)
        return data

    async def _stored_body(self, request, compressed):
        length = request.content.seek(0, 2)
        try:
            if compressed or length > INLINE_BODY_BYTES:
                return await deferToThreadPool(
                    self._reactor, self._pool, self._body, request, compressed
                )
            return self._body(request, compressed)
        except BodyTooLarge:
            raise ApiError(413, {"error": "Request body too large"})
        except ValueError:
            raise jerror("Incorrect format")

    @app.route("/report/<report_id>", methods=["POST"])
    async def submit_measurement(self, request, report_id):
        try:
            parsed = parse_report_id(report_id)
        except ReportIdError as e:
            raise jerror(str(e))
        if parsed.asn == 0 or parsed.cc.upper() == "ZZ":
            return nocachejson(request)
        encoding = (request.getHeader(b"content-encoding") or b"").strip().lower()
        body = await self._stored_body(request, encoding == b"zstd")
        uid = measurement_uid(self._now(), parsed.cc, parsed.testname, body)
        try:
            await self._spool.submit(uid, body)
        except Exception:
            log.failure("spool write failed for {uid}", uid=uid)
            raise ApiError(500, {"error": "Unable to store the measurement"})
        return nocachejson(request, {"measurement_uid": uid})

    @app.route("/report/<report_id>/close", methods=["POST"])
    def close_report(self, request, report_id):
        return cachedjson(request, "1h")

    # -- geolocation -----------------------------------------------------------

    @app.route("/api/v1/geolookup", methods=["POST"])
    def geolookup(self, request):
        addresses = json_body(request).get("addresses")
        if addresses is None:
            addresses = []
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise jerror("addresses must be a list of strings")
        if len(addresses) > MAX_GEOLOOKUP_ADDRESSES:
            raise jerror(f"at most {MAX_GEOLOOKUP_ADDRESSES} addresses per request")
        geolocation = {address: self._geoip.geolookup(address) for address in addresses}
        return nocachejson(request, {"geolocation": geolocation, "v": 1})

    # -- spool files for peer API hosts (section 13.3) -------------------------

    @app.route("/measurement_spool/<hour_dir>/<filename>", methods=["GET"])
    async def spooled_measurement(self, request, hour_dir, filename):
        if not await self._peers.allows(self._clients.probe_ip(request)):
            raise jerror("Forbidden", 403)
        try:
            uid = uid_from_spool_path(hour_dir, filename)
        except InvalidUID:
            raise jerror("Not found", 404)
        body = await self._spool.get(uid)
        if body is None:
            raise jerror("Not found", 404)
        return send_bytes(request, body, b"application/octet-stream", "no-cache")
