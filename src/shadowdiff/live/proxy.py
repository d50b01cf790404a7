"""Running mitmproxy in-process (DumpMaster, reverse mode to the primary) with the tap.

Shutdown on Ctrl-C or SIGTERM goes through mitmproxy's own `shutdown()`, so the tap's `done`
hook hands the worker its last records and waits for it to flush; the tap then holds the
worker's final books for the last line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess

from mitmproxy import options
from mitmproxy.tools.dump import DumpMaster

from shadowdiff.config import Config
from shadowdiff.errors import StartupError
from shadowdiff.live.tap import ShadowDiff

WORKER_START = 30.0


async def serve(cfg: Config) -> ShadowDiff:
    """Serves until a signal arrives; returns the tap after its worker has flushed."""
    assert cfg.primary is not None
    host, _, port = cfg.listen.rpartition(":")
    opts = options.Options(
        mode=[f"reverse:{cfg.primary}"],
        listen_host=host,
        listen_port=int(port),
    )
    master = DumpMaster(opts, with_termlog=False, with_dumper=False)
    tap = ShadowDiff(cfg)
    master.addons.add(tap)  # type: ignore[no-untyped-call]
    # Listen only once the worker reads: no burst of queued samples at start-up.
    try:
        ready = await asyncio.wait_for(tap.start_worker(cfg), WORKER_START)
    except TimeoutError:
        ready = False
    if not ready:
        status = tap.last_exit  # if the tap noticed the death first
        if tap.worker is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):  # it said goodbye: reap it
                status = tap.worker.wait(timeout=5.0)
        tap.stop(wait=True)
        if status is not None:
            raise StartupError(f"the worker process stopped at start (status {status}); see above")
        raise StartupError(f"the worker process did not start within {WORKER_START:.0f}s")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    logging.getLogger("shadowdiff").info(
        "proxy on %s → primary %s; mirroring %.0f%% to %s",
        cfg.listen,
        cfg.primary,
        cfg.sampling.rate * 100,
        cfg.shadow,
    )
    await master.run()
    # asyncio.run now cancels the connections still open; mitmproxy's stream callbacks log
    # each cancelled one as an error. The proxy is stopped: that noise is not a problem.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    return tap
