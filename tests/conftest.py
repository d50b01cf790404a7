"""Real parts for the tests: aiohttp services on loopback and the real proxy as a process."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp import web
from helpers import free_port, wait_listening
from psycopg import sql


def shadowdiff(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Runs the command line as a user would, in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "shadowdiff", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


async def serve_app(app: web.Application) -> tuple[web.AppRunner, str]:
    """Runs an aiohttp app on a loopback port of the kernel's choosing (no race for a free
    one); returns its runner and base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@asynccontextmanager
async def serving(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """A loopback service that `handler` answers for every method and path; its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner, url = await serve_app(app)
    try:
        yield url
    finally:
        await runner.cleanup()


LONG_LIST = 20_000
"""Elements of the `list` mode's answer: about 0.1 s to compare with `range(LONG_LIST)`."""


@dataclass
class Backend:
    """An aiohttp service whose behaviour a test can switch: ok, hang, reset, big, slow, error,
    list."""

    name: str
    mode: str = "ok"
    delay: float = 0.0
    seen: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append((request.method, request.path_qs, dict(request.headers), body))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "reset":
            response = web.StreamResponse(headers={"Content-Length": "100000"})
            await response.prepare(request)
            await response.write(b"x" * 1000)
            assert request.transport is not None
            request.transport.abort()
            return response
        if self.mode == "big":
            return web.Response(
                body=b"b" * (10 * 1024 * 1024), content_type="application/octet-stream"
            )
        if self.mode == "error":
            return web.json_response({"error": "boom"}, status=500)
        if self.mode == "list":  # slow to compare: differs at every one of LONG_LIST indexes
            return web.json_response(list(range(1, LONG_LIST + 1)))
        return web.json_response(
            {
                "path": request.path_qs,
                "method": request.method,
                "body": body.decode("latin-1"),
                "by": self.name,
            },
            headers={"X-Backend": "demo", "Set-Cookie": "a=1"},
        )

    async def start(self) -> Backend:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        self.port = self.port or free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


@pytest.fixture
async def primary() -> AsyncIterator[Backend]:
    backend = await Backend("primary").start()
    yield backend
    await backend.stop()


@pytest.fixture
async def shadow() -> AsyncIterator[Backend]:
    backend = await Backend("primary").start()  # same answers as the primary unless switched
    yield backend
    await backend.stop()


@dataclass
class Proxy:
    """A running `shadowdiff proxy` process."""

    process: subprocess.Popen[str]
    port: int
    store: Path
    run: str
    control_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def control(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    async def stop(self, clean: bool = True) -> str:
        """SIGTERM, wait (serving the test's own services meanwhile), return what it printed.

        `clean`: nothing printed a traceback (bare mitmdump itself prints asyncio noise on
        shutdown with clients still connected, so its tests pass False).
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while self.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        out, _ = self.process.communicate(timeout=5)
        assert not clean or "Traceback" not in out, out
        return out


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator:
    """Starts `shadowdiff proxy` with the given flags; stops every one at the end of the test."""
    started: list[Proxy] = []

    async def start(*flags: str, run: str = "test", config: str | None = None) -> Proxy:
        port, control_port = free_port(), free_port()
        store = tmp_path / f"{run}.db"
        args = [
            sys.executable,
            "-m",
            "shadowdiff",
            "proxy",
            f"--listen=127.0.0.1:{port}",
            f"--store={store}",
            f"--run={run}",
            f"--control=127.0.0.1:{control_port}",
            *flags,
        ]
        if config:
            args.append(f"--config={config}")
        process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        proxy = Proxy(process, port, store, run, control_port)
        started.append(proxy)
        try:
            await wait_listening(port, timeout=30)
        except TimeoutError:
            raise RuntimeError(f"proxy did not start: {await proxy.stop()}") from None
        return proxy

    yield start
    for proxy in started:
        if proxy.process.poll() is None:
            proxy.process.kill()
            proxy.process.wait()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


class Receiver:
    """A webhook receiver on loopback that keeps what it got."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> Receiver:
        async def hook(request: web.Request) -> web.Response:
            self.got.append(await request.json())
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        self.runner, base = await serve_app(app)
        self.url = base + "/hook"
        return self

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    started = await Receiver().start()
    yield started
    await started.stop()


# -- PostgreSQL: `SHADOWDIFF_TEST_PG` (a URL, set by CI), or else a throwaway cluster ----------

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "postgres"


@dataclass
class Cluster:
    url: str
    directory: str | None = None
    """Set when the tests started the cluster, so a test may halt and restart it."""
    port: int = 0

    def halt(self) -> None:
        _script("halt", self.directory or "")

    def start(self) -> None:
        _script("start", self.directory or "", str(self.port))


def _script(*args: str) -> str:
    done = subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode:
        pytest.fail(
            f"PostgreSQL: `.ci/postgres {' '.join(args)}` failed (or set SHADOWDIFF_TEST_PG"
            f" to a server's URL):\n{done.stderr}",
            pytrace=False,
        )
    return done.stdout.strip()


@contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    # Under /tmp, not pytest's tmp_path: as root, the server runs as another user, which
    # cannot reach into pytest's private directories.
    directory = tempfile.mkdtemp(prefix="shadowdiff-pg-")
    port = free_port()
    try:
        yield Cluster(_script("start", directory, str(port)), directory, port)
    finally:
        _script("stop", directory)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    url = os.environ.get("SHADOWDIFF_TEST_PG")
    if url:
        try:
            psycopg.connect(url, connect_timeout=5).close()
        except psycopg.Error as e:
            pytest.fail(f"PostgreSQL: SHADOWDIFF_TEST_PG={url} unreachable: {e}", pytrace=False)
        yield Cluster(url)
        return
    with throwaway_cluster() as started:
        yield started


@contextmanager
def schema(base: str, name: str) -> Iterator[str]:
    """A fresh schema on the server at `base`; yields a URL whose tables go there."""
    name = f"t_{re.sub(r'[^a-z0-9]', '_', name.lower())[:40]}_{secrets.token_hex(4)}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def url(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    with schema(cluster.url, request.node.name) as found:
        yield found


@pytest.fixture
def own_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """A cluster the test may stop: the tests' own, or else a second throwaway one."""
    if cluster.directory is None:
        with throwaway_cluster() as started:
            yield started
        return
    try:
        yield cluster
    finally:
        cluster.start()  # whatever the test did, the next tests find it running
