"""The addon's hooks, driven with mitmproxy's own test helpers and a real worker process."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow, tutils

from conftest import Backend
from shadowdiff.counts import WORKER_RESTARTS, imbalance
from shadowdiff.live import tap as tap_module
from shadowdiff.live.tap import ShadowDiff, primary_error_kind
from shadowdiff.model import ERROR_KINDS
from shadowdiff.store import SQLiteStore


def test_configure_rejects_bad_values_in_one_line(tmp_path):
    tap = ShadowDiff()
    with taddons.context(tap) as tctx:
        with pytest.raises(exceptions.OptionsError, match=r"^shadowdiff: --sample: Input should"):
            tctx.configure(tap, shadowdiff_shadow="http://127.0.0.1:1", shadowdiff_sample="2")
        with pytest.raises(exceptions.OptionsError, match="nope.yaml: cannot read config"):
            tctx.configure(tap, shadowdiff_config=str(tmp_path / "nope.yaml"))
        tctx.configure(tap, shadowdiff_shadow="http://127.0.0.1:1", shadowdiff_sample="0.25")
        assert tap.cfg is not None and tap.cfg.sampling.rate == 0.25


def test_sample_option_must_be_a_number():
    tap = ShadowDiff()
    with (
        taddons.context(tap) as tctx,
        pytest.raises(exceptions.OptionsError, match="--sample: Input should be a valid number"),
    ):
        tctx.configure(tap, shadowdiff_shadow="http://127.0.0.1:1", shadowdiff_sample="lots")


def request_flow(**headers: str) -> tflow.HTTPFlow:
    flow = tflow.tflow()
    flow.request.headers.update(headers)
    return flow


def test_not_eligible_reasons():
    tap = ShadowDiff()
    with taddons.context(tap) as tctx:
        tctx.configure(tap, shadowdiff_shadow="http://127.0.0.1:1", shadowdiff_sample="1")
        replay = request_flow()
        replay.is_replay = "request"
        connect = request_flow()
        connect.request.method = "CONNECT"
        streamed = request_flow()
        streamed.request.stream = True
        streamed.request.raw_content = None
        answered = request_flow()
        answered.response = tutils.tresp()
        flows = [
            replay,
            connect,
            request_flow(**{"X-Shadowdiff": "shadow"}),
            request_flow(Upgrade="websocket"),
            streamed,
            answered,
        ]
        for flow in flows:
            tap.request(flow)
    assert {k: v for k, v in tap.counts.items() if k.startswith("not_eligible")} == {
        "not_eligible.replay": 1,
        "not_eligible.connect": 1,
        "not_eligible.loop": 1,
        "not_eligible.upgrade": 1,
        "not_eligible.streamed": 1,
        "not_eligible.answered": 1,
    }
    assert tap.counts["seen"] == 6 and not tap.pending


def test_without_worker_every_sample_is_a_counted_drop():
    tap = ShadowDiff()
    with taddons.context(tap) as tctx:
        tctx.configure(tap, shadowdiff_shadow="http://127.0.0.1:1", shadowdiff_sample="1")
        tap.request(request_flow())
    assert tap.counts["dropped.worker_down"] == 1 and imbalance(dict(tap.counts)) == []


@pytest.mark.parametrize(
    "message, kind",
    [
        ("Connection refused", "connect"),
        ("[Errno 111] Connect call failed", "connect"),
        ("Server disconnected", "reset"),
        ("Connection reset by peer", "reset"),
        ("Timeout", "timeout"),
        ("HTTP/1 protocol error: bad header", "protocol"),
    ],
)
def test_primary_error_kind(message, kind):
    assert primary_error_kind(message) == kind
    assert kind in ERROR_KINDS


def run_with_worker(tctx: taddons.context, tap: ShadowDiff, store: Path, **options: str) -> None:
    """Configures the tap to mirror everything into `store` and starts its real worker."""
    tctx.configure(tap, shadowdiff_sample="1", shadowdiff_store=str(store), **options)
    tap.running()


async def test_hooks_feed_a_real_worker(tmp_path, shadow: Backend):
    store = tmp_path / "t.db"
    tap = ShadowDiff()
    with taddons.context(tap) as tctx:
        run_with_worker(tctx, tap, store, shadowdiff_shadow=shadow.url, shadowdiff_run="tap")
        ok, failed, big, gone = request_flow(), request_flow(), request_flow(), request_flow()
        for flow in (ok, failed, big, gone):
            tap.request(flow)
        ok.response = tutils.tresp(content=b'{"path": "/path"}')
        tap.response(ok)
        failed.error = tflow.terr("Connection refused")
        tap.error(failed)
        gone.error = tflow.terr("Client disconnected.")  # not the primary's failure
        tap.error(gone)
        big.response = tutils.tresp(content=b"x" * (2 * 1024 * 1024))
        tap.response(big)
        for _ in range(100):  # let the worker's copies reach the shadow in this loop
            await asyncio.sleep(0.02)
            if len(shadow.seen) == 4:
                break
        await asyncio.sleep(0.2)
        tctx.master.should_exit.set()  # the end of the process: `done` waits for the worker
        tap.done()
    with SQLiteStore(store, create=False) as s:
        counts = s.counts("tap")
        exchanges = list(s.exchanges("tap"))
    assert imbalance(counts) == [] and counts["recorded"] == 2
    assert counts["dropped.too_large"] == counts["dropped.client_gone"] == 1
    assert sorted(str((x.primary.status, x.primary.error)) for x in exchanges) == [
        "(200, None)",
        "(None, 'connect')",
    ]
    assert all(x.shadow.status == 200 for x in exchanges)


def test_a_header_no_client_can_send_is_not_eligible():
    """Finding 9: decided in the tap, before sampling, so the books balance; a tab is fine."""
    tap = ShadowDiff()
    with taddons.context(tap) as tctx:
        tctx.configure(tap, shadowdiff_shadow="http://127.0.0.1:1", shadowdiff_sample="1")
        bad_name = request_flow()
        bad_name.request.headers.fields += ((b"X-\x7fA", b"v"),)
        flows = [
            request_flow(**{"X-A": "a\x01b"}),
            request_flow(**{"X-A": "a\rb"}),
            bad_name,
            request_flow(**{"X-A": "a\tb"}),
        ]
        for flow in flows:
            tap.request(flow)
    assert tap.counts["not_eligible.bad_header"] == 3 and tap.counts["sampled"] == 1
    assert imbalance(dict(tap.counts)) == []


async def test_client_garbage_never_trips_the_breaker(tmp_path, shadow: Backend):
    """Finding 9: 25 requests with a control byte in a header, then normal ones, through the
    hooks and a real worker: the odd ones are not eligible, never shadow errors, and the
    breaker (20 requests at 50 %) stays closed for the normal ones."""
    store = tmp_path / "g.db"
    tap = ShadowDiff()
    with taddons.context(tap) as tctx:
        run_with_worker(
            tctx,
            tap,
            store,
            shadowdiff_shadow=shadow.url,
            shadowdiff_run="garbage",
            shadowdiff_control="off",
        )
        assert await asyncio.wait_for(tap.writer.ready, 30)

        async def through(flows: list[tflow.HTTPFlow]) -> None:
            for flow in flows:
                tap.request(flow)
                flow.response = tutils.tresp(content=b'{"path": "/path"}')
                tap.response(flow)
            await asyncio.sleep(0.5)  # the worker sends the copies and judges the breaker

        await through([request_flow(**{"X-A": "a\x01b"}) for _ in range(25)])
        await through([request_flow() for _ in range(20)])
        tctx.master.should_exit.set()
        tap.done()
    with SQLiteStore(store, create=False) as s:
        counts = s.counts("garbage")
    assert imbalance(counts) == [], counts
    assert counts["not_eligible.bad_header"] == 25
    assert counts["recorded"] == 20 == len(shadow.seen), counts
    assert not [k for k, v in counts.items() if v and k.startswith(("shadow_", "breaker", "drop"))]


async def test_a_worker_that_keeps_dying_is_started_again_then_given_up(
    tmp_path, monkeypatch, caplog
):
    """Finding 1: each death is logged at ERROR and followed by a restart after a delay;
    after the last delay the proxy keeps serving unmirrored, and says so."""
    monkeypatch.setattr(tap_module, "RESTART_DELAYS", (0.05, 0.05))
    caplog.set_level(logging.WARNING, logger="shadowdiff.tap")
    tap = ShadowDiff()
    with taddons.context(tap) as tctx:
        # the store a directory: every worker stops at start
        run_with_worker(
            tctx, tap, tmp_path, shadowdiff_shadow="http://127.0.0.1:1", shadowdiff_control="off"
        )
        deadline = time.monotonic() + 30
        while "giving up" not in caplog.text and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        tap.request(request_flow())
        tctx.master.should_exit.set()
        tap.done()
    deaths = [r for r in caplog.records if "exited with status 2" in r.getMessage()]
    assert len(deaths) == 3 and all(r.levelno == logging.ERROR for r in deaths), caplog.text
    assert "traffic passes through unmirrored" in deaths[-1].getMessage()
    assert tap.counts[WORKER_RESTARTS] == 2 and tap.writer is None
    assert tap.counts["dropped.worker_down"] == 1 and imbalance(dict(tap.counts)) == []


async def clocked_run(tmp_path: Path, primary: Backend, shadow: Backend, reference: str) -> dict:
    """A GET and a POST through the hooks and a real worker, with `latency.reference`; the
    primary's recorded latency per method."""
    config = tmp_path / f"{reference}.yaml"
    config.write_text(
        f"primary: {primary.url}\nshadow: {shadow.url}\nrun: clock\n"
        f"latency:\n  reference: {reference}\n"
        "sampling:\n  rate: 1\n  methods: [GET, POST]\n"
    )
    store = tmp_path / f"{reference}.db"
    tap = ShadowDiff()
    with taddons.context(tap) as tctx:
        run_with_worker(tctx, tap, store, shadowdiff_config=str(config), shadowdiff_control="off")
        assert await asyncio.wait_for(tap.writer.ready, 30)
        get, post = request_flow(), request_flow()
        post.request.method, post.request.content = "POST", b"{}"
        for flow in (get, post):
            tap.request(flow)
            flow.response = tutils.tresp(content=b'{"path": "/path"}')  # 2 s after the request
            tap.response(flow)
        await asyncio.sleep(0.5)
        tctx.master.should_exit.set()
        tap.done()
    with SQLiteStore(store, create=False) as s:
        return {x.request.method: x.primary.latency for x in s.exchanges("clock")}


async def test_a_request_no_copy_times_has_no_primary_latency(tmp_path, primary, shadow):
    """Reference `primary`: the proxy's span is never paired with the copies' clock; a POST,
    which gets no timed copy, has no latency; the GET's copy went to the primary."""
    latencies = await clocked_run(tmp_path, primary, shadow, "primary")
    assert latencies["POST"] is None and latencies["GET"] is not None
    assert [m for m, *_ in primary.seen] == ["GET"]


async def test_reference_proxy_keeps_the_proxys_span(tmp_path, primary, shadow):
    latencies = await clocked_run(tmp_path, primary, shadow, "proxy")
    assert latencies == {"GET": 2.0, "POST": 2.0} and primary.seen == []


def test_a_reference_the_config_cannot_give_is_one_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("shadow: http://127.0.0.1:1\nlatency:\n  reference: primary\n")
    tap = ShadowDiff()
    with (
        taddons.context(tap) as tctx,
        pytest.raises(
            exceptions.OptionsError,
            match=r"^shadowdiff: .*c\.yaml: latency: reference primary needs the primary's URL",
        ),
    ):
        tctx.configure(tap, shadowdiff_config=str(config))


async def test_a_release_serves_from_the_candidate_and_the_books_balance(
    tmp_path, primary: Backend, shadow: Backend
):
    """With a real worker: a safe request is asked of the candidate (served, or a fallback
    the primary serves, always recorded), a write the release allows is redirected, another
    goes to the primary; every request is counted once, the writes the candidate may serve
    by side."""
    config = tmp_path / "release.yaml"
    config.write_text(
        f"primary: {primary.url}\nrelease:\n  writes: ['POST /orders*']\n"
        "  stages: [{percent: {share: 100, min_pairs: 1000000}}]\n"
    )
    store = tmp_path / "t.db"
    tap = ShadowDiff()
    with taddons.context(tap) as tctx:
        tctx.configure(tap, shadowdiff_config=str(config), shadowdiff_shadow=shadow.url)
        run_with_worker(tctx, tap, store, shadowdiff_run="rel")
        for _ in range(200):  # the worker reads the release's state, then tells the tap
            await asyncio.sleep(0.02)
            if tap.router is not None and tap.router.serving:
                break
        served, failing, write, other = (request_flow() for _ in range(4))
        write.request.method, write.request.path = "POST", "/orders/1"
        other.request.method = "DELETE"
        pending = tap.request(served)
        assert pending is not None and served.response is None  # nothing until it is awaited
        await pending
        assert served.response is not None and served.response.status_code == 200
        shadow.mode = "error"
        await tap.request(failing)
        assert failing.response is None  # the primary serves it
        failing.response = tutils.tresp(content=b'{"path": "/path"}')
        tap.response(failing)
        assert tap.request(write) is None and write.request.port == shadow.port
        write.response = tutils.tresp(status_code=503)
        tap.response(write)
        assert tap.request(other) is None and other.request.port != shadow.port
        other.response = tutils.tresp()
        tap.response(other)
        assert tap.counts["served.candidate"] == 2 and tap.counts["served.primary"] == 2
        books = dict(tap.counts)
        assert books["seen"] == 4 == books["sampled"] + books["not_sampled.served_write"] + 1
        assert books["fallback.5xx"] == 1 and books.get("not_sampled.method") == 1
        assert tap.counts["writes.candidate.failed"] == 1  # the other write: no such route
        assert "writes.primary.ok" not in tap.counts and "writes.primary.failed" not in tap.counts
        for _ in range(100):
            await asyncio.sleep(0.02)
            if len(primary.seen) >= 1 and len(shadow.seen) >= 2:
                break
        await asyncio.sleep(0.3)
        tctx.master.should_exit.set()
        tap.done()
    with SQLiteStore(store, create=False) as s:
        counts = s.counts("rel")
        exchanges = sorted(s.exchanges("rel"), key=lambda x: x.shadow.status or 0)
    assert imbalance(counts) == [] and counts["release.served_pairs"] == 1
    assert [(x.primary.status, x.shadow.status) for x in exchanges] == [(200, 200), (200, 500)]
    assert exchanges[1].shadow.latency is None  # a fallback: no latency pair
