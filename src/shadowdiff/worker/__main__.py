"""The worker process and its composition root: `python -m shadowdiff.worker --fd N`.

Started by the tap; it stops when the tap closes the channel (or on SIGTERM), giving in-flight
copies a short grace period, and answers with its final books before it closes its side. A
worker started after one died first takes over the dead one's books. This is the one place
that builds the worker, its switch and its faces (control server, metrics, live verdict,
alerts) and wires them together with callables, so no face imports the worker and the worker
imports no face's server.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
import time

from aiohttp import web

from shadowdiff.channel import Reader, Setup
from shadowdiff.config import access_token, destinations, loopback, secret
from shadowdiff.counts import summary_line
from shadowdiff.errors import ConfigError
from shadowdiff.faces import Alert, Alerter, Gauges, LiveVerdict, Metrics, control
from shadowdiff.model import Event
from shadowdiff.store import StoreError, open_store
from shadowdiff.worker import Switch, Worker
from shadowdiff.worker.release import Rollout

logger = logging.getLogger("shadowdiff.worker")  # the name operators filter on

SWITCH_INTERVAL = 0.0005
"""Seconds a thread holds the GIL before another may take it (CPython's default: 0.005)."""
HANDOVER_WAIT = 5.0
"""Seconds a worker retries the control port while the worker it replaces still holds it."""


async def serve(sock: socket.socket) -> int:
    reader = await Reader.open(sock)
    setup = await reader.read()
    if not isinstance(setup, Setup):
        logger.error("the tap sent no setup record; stopping")
        return 2
    # SIGTERM usually reaches the whole process group: the tap then closes the channel after
    # its last records. Only if it does not, stop reading on our own after the grace period.
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGTERM,
        lambda: asyncio.get_running_loop().call_later(
            setup.config.mirror.grace + 5.0, reader.writer.close
        ),
    )
    logging.getLogger().setLevel(setup.config.log_level.upper())
    cfg = setup.config
    try:
        store = open_store(cfg.store)
    except StoreError as e:
        logger.error("cannot open the store: %s", e)
        return 2
    worker = Worker(setup, store)
    if setup.generation and not await worker.take_over(setup.counts):
        await worker.mirror.close()
        store.close()
        return 2
    try:
        teams = destinations(cfg)
    except ConfigError as e:  # the proxy checked at its start; the environment changed since
        logger.error("%s", e)
        await worker.mirror.close()
        store.close()
        return 2
    alerter = Alerter(cfg.alerts, cfg.run, worker.counts, teams=teams)
    switch = worker.switch = Switch(cfg, setup.control, reader.send, alerter)
    live = LiveVerdict(cfg, alerter, worker.instance)
    alerter.on_sent = live.sent
    switch.on_mitigation = live.mitigate
    live.stopped = lambda: switch.stopped
    if not setup.generation:  # a change event: the run (re)starts here
        switch.events.append(Event(time.time(), "started", "proxy", "", worker.instance))
        alerter.fire(
            Alert(
                "run_started",
                "run",
                f"shadowdiff run {cfg.run} started (instance {worker.instance})",
                {"instance": worker.instance},
                change=True,
                message=False,
            )
        )

    def gauges() -> Gauges:
        return Gauges(
            sample_rate=switch.rate,
            paused=switch.control.paused,
            in_flight=worker.outstanding,
            breakers={name: b.state for name, b in worker.breakers.items()},
        )

    rollout = None
    if cfg.release:
        rollout = Rollout(
            cfg,
            reader.send,
            alerter,
            lambda event: switch.events.append(event),
            lambda: live.verdict(wait=True),
            worker.merged,
        )
        rollout.on_rollback = live.rolled_back
        rollout.stopped = lambda: switch.stopped is not None
        switch.on_paused = rollout.paused
    metrics = Metrics(cfg.run, worker.merged, gauges, cfg.routes.max)
    worker.recorder.on_written = metrics.observe
    worker.recorder.routes.on_merge = metrics.forget
    try:
        server = await _control_server(worker, switch, live, metrics, rollout, setup.handover)
    except (ConfigError, OSError) as e:
        logger.error("control server cannot start on %s: %s", cfg.control.listen, e)
        await worker.mirror.close()
        store.close()
        return 2
    await alerter.start()
    await live.start()
    stop = asyncio.Event()
    flusher = asyncio.create_task(worker.flusher(stop))
    watcher = asyncio.create_task(live.watch(stop))
    reader.greet()  # first: what the controller tells the tap follows the greeting
    releaser = asyncio.create_task(rollout.run(stop)) if rollout else None
    while (record := await reader.read()) is not None:
        worker.on_record(record)
    if server:  # first: the worker that replaces this one may be waiting for the port
        await server.cleanup()
    stop.set()
    await flusher
    await watcher
    if rollout and releaser:
        await releaser
        await rollout.close()
    await live.end(worker.ending)
    final, _ = await asyncio.gather(worker.shutdown(), alerter.close(timeout=cfg.mirror.grace))
    await live.close()
    store.close()
    reader.send(final)
    await reader.close()
    stale = ", stale: its last writes failed" if final.stale else ""
    logger.info("%s (store %s%s)", summary_line(cfg.run, final.counts), store.path, stale)
    return 0


async def _control_server(
    worker: Worker,
    switch: Switch,
    live: LiveVerdict,
    metrics: Metrics,
    rollout: Rollout | None,
    handover: bool,
) -> web.AppRunner | None:
    """`handover`: the worker this one replaces may hold the port for a moment yet."""
    listen = worker.cfg.control.listen
    if listen is None:
        return None

    def status() -> dict[str, object]:
        return {"run": worker.cfg.run, "instance": worker.instance, "counts": worker.merged()}

    token = access_token(worker.cfg.control)
    name = worker.cfg.incidents.pagerduty_webhook_secret_env
    hook_secret = secret(name, None, "incidents.pagerduty_webhook_secret_env")
    deadline = time.monotonic() + (HANDOVER_WAIT if handover else 0.0)
    while True:
        app = control.build(
            switch,
            live,
            metrics,
            status,
            worker.health,
            token,
            loopback(listen.rpartition(":")[0]),
            hook_secret,
            rollout,
        )
        try:
            runner = await control.serve(app, listen)
            break
        except OSError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.1)
    logger.info("control server on http://%s (dashboard, /metrics, /verdict)", listen)
    return runner


def main() -> None:
    parser = argparse.ArgumentParser(description="shadowdiff worker (started by the tap)")
    parser.add_argument("--fd", type=int, required=True, help="the channel's socket descriptor")
    args = parser.parse_args()
    # Ctrl-C reaches the whole process group: the tap decides when the worker stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s", level=logging.INFO)
    # psycopg's pool logs every reconnect attempt during a database outage; the recorder
    # already says once per batch that it will retry.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    # The store thread compares bodies holding the GIL; the loop that times the copies gets
    # it back within this interval instead of CPython's 5 ms (a stall it would count).
    sys.setswitchinterval(SWITCH_INTERVAL)
    sock = socket.socket(fileno=args.fd)
    raise SystemExit(asyncio.run(serve(sock)))


if __name__ == "__main__":
    main()
