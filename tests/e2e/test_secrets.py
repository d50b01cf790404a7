"""Secrets never leave, end to end: real services, the real proxy, the store's file bytes and
the HTML report."""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import FormData, web

from conftest import serve_app, shadowdiff
from shadowdiff.store import SQLiteStore

SECRETS = [b"hunter2", b"tok-SECRET", b"SECRETB2", b"SECRETB3", b"SECRETB4", b"SECRETB5"]
SECRETS += [b"SECRETB6", b"SECRETB7"]


async def serve(name: str) -> tuple[web.AppRunner, str]:
    """Answers as Flask or plain Python do: `json.dumps`, NaN and all."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        doc = {"password": "hunter2", "token": "tok-SECRET", "score": float("nan"), "by": name}
        return web.Response(text=json.dumps(doc), content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return await serve_app(app)


def store_bytes(proxy) -> bytes:
    """Every file of the SQLite store: the database, its WAL and shared memory, all tables."""
    return b"".join(p.read_bytes() for p in proxy.store.parent.glob(proxy.store.name + "*"))


async def test_secrets_reach_neither_the_store_nor_the_report(start_proxy, client, tmp_path):
    """Audit finding 4: NaN in the primary's JSON and an escaped key in the client's body put
    `hunter2`, `tok-SECRET`, `SECRETB2` and `SECRETB3` in the store and the HTML report."""
    (primary, primary_url), (shadow, shadow_url) = await serve("primary"), await serve("shadow")
    proxy = await start_proxy(f"--primary={primary_url}", f"--shadow={shadow_url}", "--sample=1")
    json_type = {"Content-Type": "application/json"}
    form = FormData()
    form.add_field("user", "alice")
    form.add_field("Password", "SECRETB4")
    form.add_field("avatar", b"\x89PNG", filename="a.png")  # a file: multipart, not a form
    requests = [
        ("/jsonnan", json_type, b'{"password": "SECRETB2", "n": NaN}'),
        ("/jsonescaped", json_type, b'{"p\\u0061ssword": "SECRETB3"}'),
        ("/multipart", {}, form),
        ("/query?apikey=SECRETB5&q=1", {"X-Api-Key": "SECRETB6"}, b""),
        ("/bom", json_type, b'\xef\xbb\xbf{"Passwd": "SECRETB7"}\n\x00'),
    ]
    for path, headers, body in requests:
        async with client.get(proxy.url + path, headers=headers, data=body) as r:
            assert r.status == 200 and b"hunter2" in await r.read()  # the client's own answer

    deadline = time.monotonic() + 30
    while True:  # scanned while the proxy runs too: the WAL holds the latest writes
        if proxy.store.exists():
            with SQLiteStore(proxy.store, create=False) as store:
                if store.counts(proxy.run).get("recorded", 0) >= len(requests):
                    break
        assert time.monotonic() < deadline, "the exchanges were never recorded"
        await asyncio.sleep(0.2)
    running = store_bytes(proxy)
    await proxy.stop()
    for runner in (primary, shadow):
        await runner.cleanup()

    stopped = store_bytes(proxy)
    assert [s for s in SECRETS if s in running or s in stopped] == []
    assert b"[redacted" in stopped  # the exchanges were stored, as examples of `body:$.by`
    done = shadowdiff("report", f"--store={proxy.store}", "--format=html")
    assert done.returncode == 0, done.stderr
    assert "$.by" in done.stdout and "redacted" in done.stdout
    assert [s for s in SECRETS if s.decode() in done.stdout] == []
