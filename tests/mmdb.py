"""Small MaxMind-format databases for tests, shaped like GeoLite2.

The networks are synthetic test fixtures chosen to match the expectations
of api-routes.md §12.10 (geolookup) and the reference tests:

* 1.2.3.0/24    -> AU, no ASN record
* 5.6.7.0/24    -> DE, AS6805 "Telefonica Germany GmbH & Co.OHG"
* 8.8.8.0/24    -> US, AS15169 "GOOGLE"
* 192.33.4.0/24 -> US, AS2149 "COGENT-2149" (check-in via X-Forwarded-For)

Both files are IPv6 trees holding the IPv4 networks under ::/96, as
GeoLite2 does, so IPv6 lookups (e.g. ``::1``) find nothing instead of
failing.
"""

import os

from mmdb_writer import MMDBWriter, MmdbU32
from netaddr import IPSet

COUNTRIES = [
    ("1.2.3.0/24", "AU", "Australia"),
    ("5.6.7.0/24", "DE", "Germany"),
    ("8.8.8.0/24", "US", "United States"),
    ("192.33.4.0/24", "US", "United States"),
]

NETWORKS = [
    ("5.6.7.0/24", 6805, "Telefonica Germany GmbH & Co.OHG"),
    ("8.8.8.0/24", 15169, "GOOGLE"),
    ("192.33.4.0/24", 2149, "COGENT-2149"),
]


def _writer(database_type):
    return MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        languages=["en"],
        description={"en": "ooni_twisted test database"},
    )


def build_test_mmdbs(directory):
    """Write the country and ASN databases into `directory`.

    Returns (cc_db_path, asn_db_path).
    """
    cc_path = os.path.join(directory, "test-country.mmdb")
    asn_path = os.path.join(directory, "test-asn.mmdb")

    countries = _writer("GeoLite2-Country")
    for network, iso_code, name in COUNTRIES:
        countries.insert_network(
            IPSet([network]),
            {"country": {"iso_code": iso_code, "names": {"en": name}}},
        )
    countries.to_db_file(cc_path)

    networks = _writer("GeoLite2-ASN")
    for network, number, organisation in NETWORKS:
        networks.insert_network(
            IPSet([network]),
            {
                "autonomous_system_number": MmdbU32(number),
                "autonomous_system_organization": organisation,
            },
        )
    networks.to_db_file(asn_path)
    return cc_path, asn_path
