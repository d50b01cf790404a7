"""Routes: real URL shapes, configured templates win, busy positions collapse without ever
merging two extensions, a cap, and what the table learns stays bounded."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowdiff.compare.routes import (
    EXTENSIONS,
    LEARNED_CHARS,
    LEARNED_PER_ROUTE,
    OTHER,
    RouteTable,
    shape,
)
from shadowdiff.config import Routes
from shadowdiff.model import apply_merge

PROPERTY = settings(
    max_examples=300,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

UUID = "123e4567-e89b-12d3-a456-426614174000"
SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"

REAL_WORLD = [
    # GitHub
    ("/repos/octocat/Hello-World/issues/1347", "/repos/octocat/Hello-World/issues/{id}"),
    (f"/repos/octocat/Hello-World/commits/{SHA}", "/repos/octocat/Hello-World/commits/{hash}"),
    ("/octocat/Hello-World/commit/6dcb09b", "/octocat/Hello-World/commit/{id}"),  # short hex
    ("/gists/aa5a315d61ae9438b18d", "/gists/{hash}"),
    ("/octocat/Hello-World/blob/main/README.md", "/octocat/Hello-World/blob/main/README.md"),
    (
        "/repos/o/r/releases/download/v1.2.3/app-1.2.3-linux-amd64.tar.gz",
        "/repos/o/r/releases/download/{version}/app-{version}-amd64.tar.gz",
    ),
    # Stripe
    ("/v1/customers/cus_NffrFeUfNV2Hib", "/v1/customers/{id}"),
    # RPC names with an underscore are written, not drawn (review): endpoints of their own
    ("/rpc/get_userProfile", "/rpc/get_userProfile"),
    ("/rpc/api_getAccountBalances", "/rpc/api_getAccountBalances"),
    ("/v1/charges/ch_3MmlLrLkdIwHu7ix0snN0B15/refunds", "/v1/charges/{id}/refunds"),
    ("/v1/payment_intents?limit=3", "/v1/payment_intents"),
    ("/v1/billing_portal/configurations", "/v1/billing_portal/configurations"),
    ("/v1/account_onboarding", "/v1/account_onboarding"),
    # Shopify: the API version is a version prefix, literal
    ("/admin/api/2024-01/products/632910392.json", "/admin/api/2024-01/products/{id}.json"),
    ("/admin/api/2024-01/orders.json?status=any", "/admin/api/2024-01/orders.json"),
    ("/customers/42.json", "/customers/{id}.json"),
    ("/products/red-shoe.js", "/products/red-shoe.js"),
    ("/cdn/shop/files/IMG_1234.JPG?v=1700000000", "/cdn/shop/files/IMG_1234.JPG"),
    # WordPress
    ("/2024/05/01/hello-world/", "/{yyyy}/{mm}/{dd}/hello-world/"),
    ("/2024/05/", "/{yyyy}/{mm}/"),
    ("/wp-json/wp/v2/posts/42", "/wp-json/wp/v2/posts/{id}"),
    (
        "/wp-content/uploads/2024/05/photo-1024x768.jpg",
        "/wp-content/uploads/{yyyy}/{mm}/photo-1024x768.jpg",
    ),
    ("/wp-admin/post.php?post=42&action=edit", "/wp-admin/post.php"),
    ("/posts/42-hello-world", "/posts/{id}"),
    ("/category/news/page/2/", "/category/news/page/{id}/"),
    # S3
    (f"/my-bucket/uploads/{UUID}.pdf", "/my-bucket/uploads/{uuid}.pdf"),
    ("/my-bucket/backups/db-2024-05-01.sql.gz", "/my-bucket/backups/db-{date}.sql.gz"),
    ("/my-bucket/logs/2024-05-01-12-00-00-ABCDEF0123456789", "/my-bucket/logs/{id}"),
    ("/my-bucket?list-type=2&prefix=photos/", "/my-bucket"),
    # npm registry
    ("/lodash", "/lodash"),
    ("/lodash/4.17.21", "/lodash/{version}"),
    ("/lodash/-/lodash-4.17.21.tgz", "/lodash/-/lodash-{version}.tgz"),
    ("/@types/node/-/node-20.11.5.tgz", "/@types/node/-/node-{version}.tgz"),
    ("/-/v1/search?text=react", "/-/v1/search"),
    # front-end builds: content hashes inside file names
    ("/assets/app.3f2a9c1b.js", "/assets/app.{hash}.js"),
    ("/assets/app.12345678.js", "/assets/app.{hash}.js"),  # a hash that came out all digits
    ("/static/js/2.3f2a9c1b.chunk.js", "/static/js/2.{hash}.chunk.js"),
    (
        "/_next/static/chunks/pages/_app-3f2a9c1b2d3e4f5a.js",
        "/_next/static/chunks/pages/_app-{hash}.js",
    ),
    ("/jquery/jquery-3.6.0.min.js", "/jquery/jquery-{version}.min.js"),
    # a container registry
    (f"/v2/library/nginx/blobs/sha256:{SHA}{SHA[:24]}", "/v2/library/nginx/blobs/sha256:{hash}"),
    ("/v2/library/nginx/manifests/1.25.3", "/v2/library/nginx/manifests/{version}"),
    # versions, vocabularies and names people wrote stay literal
    ("/v2/users", "/v2/users"),
    ("/1.1/statuses/show.json", "/1.1/statuses/show.json"),
    ("/en/products", "/en/products"),
    ("/api/getAccountBalancesByCurrencyV2", "/api/getAccountBalancesByCurrencyV2"),
    ("/blog/top-10-tips-for-better-sleep", "/blog/top-10-tips-for-better-sleep"),
    ("/users/john.doe", "/users/john.doe"),
    ("/domains/example.com", "/domains/example.com"),
    # opaque ids and dates
    ("/t/V1StGXR8_Z5jdHi6B-myT", "/t/{id}"),
    ("/t/01ARZ3NDEKTSV4RRFFQ69G5FAV", "/t/{id}"),
    (f"/o/{UUID}", "/o/{uuid}"),
    ("/history/2024-05-01T12:00:00Z", "/history/{date}"),
    ("/users/42/orders?x=1", "/users/{id}/orders"),
    ("/", "/"),
    ("/users/", "/users/"),
    ("/caf\udcff/x", "/caf\udcff/x"),  # mitmproxy's surrogateescape decoding of a bad byte
]


@pytest.mark.parametrize("path, expected", REAL_WORLD)
def test_real_world_shapes(path, expected):
    assert RouteTable(Routes()).route("GET", path) == f"GET {expected}"


def test_configured_templates_win():
    table = RouteTable(Routes(templates=["GET /users/{name}", "/orders/{order_id}/items"]))
    assert table.route("GET", "/users/alice") == "GET /users/{name}"
    assert table.route("POST", "/orders/x1/items") == "POST /orders/{order_id}/items"
    assert table.route("DELETE", "/users/alice") == "DELETE /users/alice"


def test_busy_position_collapses_and_reports_merges():
    table = RouteTable(Routes(collapse_after=3))
    names = ["alice", "bob", "carol"]
    assert [table.route("GET", f"/users/{n}/posts") for n in names] == [
        f"GET /users/{n}/posts" for n in names
    ]
    assert table.route("GET", "/users/dave/posts") == "GET /users/{id}/posts"
    assert table.route("GET", "/users/erin") == "GET /users/{id}"
    assert sorted(table.take_merges()) == [
        ("GET /users/alice", "GET /users/{id}"),
        ("GET /users/bob", "GET /users/{id}"),
        ("GET /users/carol", "GET /users/{id}"),
    ]
    assert table.take_merges() == []
    assert table.route("GET", "/static/app.js") == "GET /static/app.js"  # other prefixes stay


def test_a_collapse_keeps_extensions_apart():
    """The HTML page and the JSON document of a product are two endpoints, before a collapse
    and after it; one name seen with both counts once toward the collapse."""
    table = RouteTable(Routes(collapse_after=3))
    for name in ("shoe", "hat", "sock"):
        for extension in ("", ".json"):
            table.route("GET", f"/products/{name}{extension}")
    assert table.route("GET", "/products/shoe.JSON") == "GET /products/shoe.JSON"  # 3 names
    assert table.route("GET", "/products/belt.json") == "GET /products/{id}.json"
    assert table.route("GET", "/products/belt") == "GET /products/{id}"
    assert table.route("GET", "/products/scarf.json") == "GET /products/{id}.json"
    assert table.route("GET", "/products/42.json") == "GET /products/{id}.json"
    merges = table.take_merges()
    assert sorted(merges) == sorted(
        [(f"GET /products/{n}", "GET /products/{id}") for n in ("shoe", "hat", "sock")]
        + [(f"GET /products/{n}.json", "GET /products/{id}.json") for n in ("shoe", "hat", "sock")]
        + [("GET /products/shoe.JSON", "GET /products/{id}.JSON")]
    )
    stored = ["GET /products/hat", "GET /products/hat.json", "GET /products/hat/reviews"]
    for old, new in merges:  # as the recorder regroups what it stored
        stored = [apply_merge(route, old, new) for route in stored]
    assert stored == ["GET /products/{id}", "GET /products/{id}.json", "GET /products/{id}/reviews"]


def test_names_with_hashes_collapse_into_their_extension():
    table = RouteTable(Routes(collapse_after=2))
    for name in ("app", "vendor", "runtime"):
        table.route("GET", f"/assets/{name}.3f2a9c1b.js")
    assert table.take_merges() == [
        ("GET /assets/app.{hash}.js", "GET /assets/{id}.js"),
        ("GET /assets/vendor.{hash}.js", "GET /assets/{id}.js"),
    ]
    assert table.route("GET", "/assets/app.0a1b2c3d.css") == "GET /assets/{id}.css"


def test_route_cap_sends_the_rest_to_other():
    table = RouteTable(Routes(max=3, collapse_after=1000))
    routes = [table.route("GET", f"/p{i}") for i in range(6)]
    assert routes[:3] == ["GET /p0", "GET /p1", "GET /p2"] and routes[3:] == [OTHER] * 3
    assert table.route("GET", "/p1") == "GET /p1"


def test_apply_merge_whole_segments_only():
    assert (
        apply_merge("GET /users/al/posts", "GET /users/al", "GET /users/{id}")
        == "GET /users/{id}/posts"
    )
    assert apply_merge("GET /users/alice", "GET /users/al", "GET /users/{id}") == "GET /users/alice"
    assert apply_merge("GET /p/a.json", "GET /p/a", "GET /p/{id}") == "GET /p/a.json"


def held(table: RouteTable) -> int:
    """What the table holds to learn, counted afresh."""
    names = sum(len(exts) for seen in table.seen.values() for exts in seen.values())
    return names + len(table.collapsed)


def test_learning_stays_bounded_whatever_the_paths():
    # the audit's crawler: 50 plain words per level, six levels, never enough to collapse
    words = [f"v{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(50)]
    table = RouteTable(Routes())
    rng = random.Random(1)
    for _ in range(20_000):
        table.route("GET", "/" + "/".join(rng.choice(words) for _ in range(6)))
    assert held(table) == table.held <= Routes().max * LEARNED_PER_ROUTE  # 80,980 values before
    assert len(table.routes) == Routes().max


def learned_chars(table: RouteTable) -> int:
    """The longest method, prefix and name the table holds to learn."""
    return max(
        (len(m) + len(p) + len(n) for (m, p), names in table.seen.items() for n in names),
        default=0,
    )


def test_long_paths_are_learned_from_their_start_only():
    table = RouteTable(Routes())
    path = "".join(f"/s{j:05d}" for j in range(2000))  # 14 KB, 2,000 segments
    assert table.route("GET", path) == f"GET {path}"
    assert table.route("GET", path) == f"GET {path}"  # the same answer, learned or not
    assert table.held == held(table) <= LEARNED_CHARS // 7 + 1 < 2000
    assert learned_chars(table) <= LEARNED_CHARS


def test_a_collapse_forgets_what_was_learned_behind_it():
    table = RouteTable(Routes(collapse_after=3))
    for name in ("alice", "bob", "carol"):
        for post in ("p", "q"):
            table.route("GET", f"/users/{name}/posts/{post}")
    assert ("GET", "/users/alice/posts/") in table.seen
    assert table.route("GET", "/users/dave/posts/p") == "GET /users/{id}/posts/p"
    assert not [key for key in table.seen if key[1].startswith("/users/") and "{id}" not in key[1]]
    assert table.held == held(table)


def test_a_full_table_answers_without_learning():
    table = RouteTable(Routes(max=2))  # learns 2 * LEARNED_PER_ROUTE values at most
    assert table.route("GET", "/a") == "GET /a"
    for i in range(2 * LEARNED_PER_ROUTE + 5):
        table.route("GET", f"/w{i}/x")
    assert table.held == table.learning
    assert table.route("GET", "/a") == "GET /a"  # what it knows, it still answers
    assert table.route("GET", "/fresh/word") == OTHER
    assert ("GET", "/fresh/") not in table.seen


WORDS = ["a", "b", "c", "users", "shoe", "2024", "05", "01", "42", UUID, SHA, "v2", "{id}"]
SEGMENT = st.one_of(
    st.sampled_from(WORDS),
    st.builds("{}.{}".format, st.sampled_from(WORDS), st.sampled_from(["json", "JS", "doe", ""])),
    st.text(max_size=12),  # anything, lone surrogates and slashes included
    st.builds(str.__mul__, st.sampled_from(WORDS), st.integers(1, 40)),  # up to 1,600 chars
)
PATH = st.lists(SEGMENT, max_size=6).map(lambda segments: "/" + "/".join(segments))


def extension(segment: str) -> str:
    head, dot, tail = segment.rpartition(".")
    return dot + tail if head and tail.lower() in EXTENSIONS else ""


@PROPERTY
@given(
    st.lists(st.tuples(st.sampled_from(["GET", "POST"]), PATH), max_size=60),
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=2, max_value=4),
)
def test_routing_never_raises_stays_bounded_and_keeps_extensions(requests, cap, collapse_after):
    table = RouteTable(Routes(max=cap, collapse_after=collapse_after))
    for method, path in requests:
        route = table.route(method, path)
        assert table.held == held(table) <= cap * LEARNED_PER_ROUTE
        assert learned_chars(table) <= LEARNED_CHARS
        assert len(table.routes) <= cap
        if route == OTHER:
            continue
        segments, routed = path.split("?")[0].split("/"), route.removeprefix(f"{method} ")
        assert route.startswith(f"{method} ") and len(routed.split("/")) == len(segments)
        pairs = zip(routed.split("/"), segments, strict=True)
        assert all(r.endswith(extension(s)) for r, s in pairs)
    for old, new in table.take_merges():
        parent, _, last = old.rpartition("/")
        assert new == f"{parent}/{{id}}{extension(last)}" != old


@PROPERTY
@given(
    st.lists(st.text(alphabet="abc42-_.%é\udcff", min_size=1, max_size=8), min_size=1),
    st.lists(st.sampled_from(sorted(EXTENSIONS)), min_size=2, max_size=2, unique=True),
)
def test_two_extensions_never_share_a_route(names, extensions):
    table = RouteTable(Routes(collapse_after=2))
    routes = {ext: {table.route("GET", f"/p/{name}.{ext}") for name in names} for ext in extensions}
    assert not routes[extensions[0]] & routes[extensions[1]]


def test_shape_of_a_segment():
    assert shape("42.json") == ("{id}", ".json", True)
    assert shape("app.3f2a9c1b.js") == ("app.{hash}", ".js", False)
    assert shape("john.doe") == ("john.doe", "", False)
    assert shape(".json") == (".json", "", False)
