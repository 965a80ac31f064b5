"""
Who is asking (api-routes.md section 2.8). Forwarding headers are believed
only from the configured trusted proxies, so a client cannot pick its own
address for geolocation or quotas.
"""

import ipaddress


def _parse(address):
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


class ClientAddress:
    """
    The two client-address rules of the reference, bound to a set of
    trusted proxy networks.
    """

    #: Peers remembered as trusted or not before the memo is emptied.
    MEMO_SIZE = 65536

    def __init__(self, trusted_proxies):
        self._trusted = tuple(trusted_proxies)
        self._trust_memo = {}

    def peer(self, request):
        address = request.getClientAddress()
        return getattr(address, "host", None) or "127.0.0.1"

    def _trusts(self, peer):
        """
        Whether C{peer} is a trusted proxy. Remembered per peer string:
        parsing the address costs more than the rest of an address rule,
        and every request asks.
        """
        memo = self._trust_memo
        try:
            return memo[peer]
        except KeyError:
            pass
        ip = _parse(peer)
        trusted = ip is not None and any(ip in network for network in self._trusted)
        if len(memo) >= self.MEMO_SIZE:
            memo.clear()
        memo[peer] = trusted
        return trusted

    def probe_ip(self, request):
        """
        First X-Forwarded-For line, text after its last space; else
        X-Real-IP; else the TCP peer.
        """
        peer = self.peer(request)
        if self._trusts(peer):
            forwarded = request.requestHeaders.getRawHeaders(b"x-forwarded-for")
            if forwarded:
                value = forwarded[0].decode("latin-1").strip()
                candidate = value.split(" ")[-1].strip()
                if candidate:
                    return candidate
            real = request.getHeader(b"x-real-ip")
            if real:
                return real.decode("latin-1").strip()
        return peer

    def limiter_ip(self, request):
        """
        X-Real-IP else the TCP peer.
        """
        peer = self.peer(request)
        if self._trusts(peer):
            real = request.getHeader(b"x-real-ip")
            if real:
                return real.decode("latin-1").strip()
        return peer
