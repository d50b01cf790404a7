"""The addon's hooks, driven with mitmproxy's own test helpers and a real worker process."""

from __future__ import annotations

import asyncio

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow, tutils

from conftest import Backend
from shadowdiff.counts import imbalance
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


async def test_hooks_feed_a_real_worker(tmp_path, shadow: Backend):
    store = tmp_path / "t.db"
    tap = ShadowDiff()
    with taddons.context(tap) as tctx:
        tctx.configure(
            tap,
            shadowdiff_shadow=shadow.url,
            shadowdiff_sample="1",
            shadowdiff_store=str(store),
            shadowdiff_run="tap",
        )
        tap.running()
        ok, failed, big = request_flow(), request_flow(), request_flow()
        for flow in (ok, failed, big):
            tap.request(flow)
        ok.response = tutils.tresp(content=b'{"path": "/path"}')
        tap.response(ok)
        failed.error = tflow.terr("Connection refused")
        tap.error(failed)
        big.response = tutils.tresp(content=b"x" * (2 * 1024 * 1024))
        tap.response(big)
        for _ in range(100):  # let the worker's copies reach the shadow in this loop
            await asyncio.sleep(0.02)
            if len(shadow.seen) == 3:
                break
        await asyncio.sleep(0.2)
        await asyncio.get_running_loop().run_in_executor(None, tap.done)
    with SQLiteStore(store, create=False) as s:
        counts = s.counts("tap")
        exchanges = list(s.exchanges("tap"))
    assert imbalance(counts) == [] and counts["recorded"] == 2
    assert counts["dropped.too_large"] == 1
    assert sorted(str((x.primary.status, x.primary.error)) for x in exchanges) == [
        "(200, None)",
        "(None, 'connect')",
    ]
    assert all(x.shadow.status == 200 for x in exchanges)
