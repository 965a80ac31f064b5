"""
The ceiling: a bare Klein app answering b"hello" to GET or POST on any path,
on a plain twisted.web Site, no logging. Run by the probe benchmarks under
the same wrk settings as the API.

    python benchmarks/hello_klein.py PORT
"""

import sys

from klein import Klein
from twisted.internet import endpoints, reactor
from twisted.web.server import Site

app = Klein()


@app.route("/", branch=True, methods=["GET", "POST"])
def hello(request):
    return b"hello"


def main(port):
    site = Site(app.resource())
    site.log = lambda request: None  # no access log, like the API's site
    endpoints.serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1").listen(site)
    reactor.run()


if __name__ == "__main__":
    main(int(sys.argv[1]))
