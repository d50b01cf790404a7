"""Writes the tiny flow-file fixture with the running interpreter's mitmproxy.

    .venv/bin/python tests/data/make_flows.py tests/data/flows-mitmproxy11.mitm
    .venv312/bin/python tests/data/make_flows.py tests/data/flows-mitmproxy12.mitm

Both files are committed: tests/test_recording.py reads each with whichever mitmproxy runs the
tests, so a file written by mitmproxy 11 is read by 12 and the other way round.
"""

import sys

from mitmproxy import connection, http
from mitmproxy.io import FlowWriter

START = 1_700_000_000.0


def flow(client: connection.Client, n: int, method: str, path: str, body: bytes) -> http.HTTPFlow:
    server = connection.Server(address=("127.0.0.1", 8000))
    f = http.HTTPFlow(client, server)
    f.id = f"flow-{n}"
    f.request = http.Request.make(
        method, f"http://127.0.0.1:8000{path}", body, {"Accept": "application/json", "X-N": str(n)}
    )
    f.request.timestamp_start = START + n
    f.request.timestamp_end = START + n + 0.001
    return f


def main(out: str) -> None:
    c1 = connection.Client(peername=("127.0.0.1", 50001), sockname=("127.0.0.1", 8080), id="c1")
    c2 = connection.Client(peername=("127.0.0.1", 50002), sockname=("127.0.0.1", 8080), id="c2")
    get = flow(c1, 1, "GET", "/users/1?expand=1", b"")
    # `make` encodes the content as its Content-Encoding says: the raw body is gzip
    get.response = http.Response.make(200, b'{"id": 1}', {"Content-Encoding": "gzip"})
    post = flow(c1, 2, "POST", "/orders", b'{"n": 1}')
    post.response = http.Response.make(201, b"created", {"Content-Type": "text/plain"})
    for f in (get, post):
        assert f.response is not None
        f.response.timestamp_end = f.request.timestamp_end + 0.05
    unanswered = flow(c2, 3, "GET", "/search?q=tea", b"")
    with open(out, "wb") as fo:
        writer = FlowWriter(fo)
        for f in (get, post, unanswered):
            writer.add(f)


if __name__ == "__main__":
    main(sys.argv[1])
