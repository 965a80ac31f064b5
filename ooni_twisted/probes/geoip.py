"""Probe geolocation from MaxMind-format country and ASN databases.

The databases are memory-mapped once at construction; a lookup is a few
microseconds of CPU, cheap enough for the reactor thread.  Lookups never
raise: an unknown address, a missing database or a broken record gives
the "unknown" values of api-routes.md §9.2 and §12.10 (geolookup).
"""

import ipaddress

import maxminddb

__all__ = ["GeoIP"]


def _unmap(ip):
    """`::ffff:1.2.3.4` (dual-stack sockets) -> `1.2.3.4`."""
    try:
        mapped = ipaddress.IPv6Address(ip).ipv4_mapped
    except ValueError:
        return ip
    return ip if mapped is None else str(mapped)


class GeoIP:
    """Country and network of an IP address.

    Either path may be None (not configured): that database then knows
    no address.
    """

    def __init__(self, cc_db_path=None, asn_db_path=None):
        self._cc_reader = None
        self._asn_reader = None
        try:
            if cc_db_path:
                self._cc_reader = maxminddb.open_database(cc_db_path)
            if asn_db_path:
                self._asn_reader = maxminddb.open_database(asn_db_path)
        except BaseException:
            self.close()
            raise

    def close(self):
        """Unmap the databases; later lookups answer "unknown"."""
        for reader in (self._cc_reader, self._asn_reader):
            if reader is not None:
                reader.close()
        self._cc_reader = None
        self._asn_reader = None

    @staticmethod
    def _record(reader, ip):
        if reader is None or not isinstance(ip, str):
            return None
        if ":" in ip and "." in ip:
            ip = _unmap(ip)
        try:
            record = reader.get(ip)
        except Exception:
            # invalid address, IPv6 in an IPv4-only file, corrupt data
            return None
        return record if isinstance(record, dict) else None

    def _country(self, ip):
        record = self._record(self._cc_reader, ip)
        if record is None:
            return None
        country = record.get("country")
        if not isinstance(country, dict):
            return None
        iso_code = country.get("iso_code")
        if not isinstance(iso_code, str) or not iso_code:
            return None
        return iso_code

    def _network(self, ip):
        """(asn int or None, organisation or None)."""
        record = self._record(self._asn_reader, ip)
        if record is None:
            return None, None
        number = record.get("autonomous_system_number")
        if not isinstance(number, int) or isinstance(number, bool):
            return None, None
        name = record.get("autonomous_system_organization")
        if not isinstance(name, str):
            name = None
        return number, name

    def lookup(self, ip):
        """(cc, "AS<n>", network name) for check-in; ("ZZ", "AS0", None) if unknown.

        The two databases are consulted independently, so an address known
        only to the country database gives (cc, "AS0", None).
        """
        cc = self._country(ip) or "ZZ"
        number, name = self._network(ip)
        if number is None:
            return cc, "AS0", None
        return cc, "AS%d" % number, name

    def geolookup(self, ip):
        """One entry of POST /api/v1/geolookup: nulls for what is unknown."""
        number, name = self._network(ip)
        return {"as_name": name, "asn": number, "cc": self._country(ip)}
