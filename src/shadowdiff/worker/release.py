"""The release controller: where the run's release is, kept in the store and told to the tap,
and the gate that moves it (promote, hold, roll back) on the run's verdict.

Every proxy of a run runs one. The release's state lives in the store, so it survives a
restart and a fleet shares it: each controller reads it every `release.poll` and tells its tap
at once; a change is written only on the version it was decided on, so two proxies deciding
at once move the release once. Runs on the worker's loop; the store is read in a thread of
its own, never on the loop that times the copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from shadowdiff.channel import Serving
from shadowdiff.config import Config, Release, Stage
from shadowdiff.faces import Alert, Alerter
from shadowdiff.model import COMPLETE, HELD, ROLLED_BACK, RUNNING, Event, ReleaseState
from shadowdiff.store import Store, StoreError, open_store

if TYPE_CHECKING:
    from shadowdiff.judge.schema import VerdictDocument

logger = logging.getLogger("shadowdiff.live")  # the name operators filter on

T = TypeVar("T")

ACTIONS = ("promote", "hold", "rollback")


class Refused(ValueError):
    """A manual action the release's state does not allow (said why)."""


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def decide(
    plan: Release, state: ReleaseState, verdict: VerdictDocument, now: float
) -> ReleaseState | None:
    """The gate: what the release becomes on the run's verdict (None: it stays). A FAIL rolls
    back (or holds, `on_fail`) from any stage; a stage whose minimums are met advances on a
    PASS (with `promote: auto`) and, INCONCLUSIVE, is extended up to its `max_duration`, then
    held for a person (or held at once, `on_inconclusive`)."""
    if state.state == ROLLED_BACK:
        return None
    compared = verdict["counts"]["compared"]
    if verdict["verdict"] == "FAIL":
        failing = [c for c in verdict["checks"] if c["result"] == "FAIL"]
        why = "; ".join(f"{c['route']} {c['id']}: {c['detail']}" for c in failing[:3])
        target = ROLLED_BACK if plan.on_fail == "rollback" else HELD
        if state.state == target:
            return None
        return _moved(state, state.stage, target, now, compared, "auto", f"FAIL: {why}")
    if state.state != RUNNING:
        return None
    gate = plan.stages[state.stage].gate
    pairs, spent = compared - state.base, now - state.since
    if pairs < gate.min_pairs or spent < gate.min_duration:
        return None
    met = f"{pairs} pairs in {_minutes(spent)}"
    if verdict["verdict"] == "PASS":
        if state.stage == len(plan.stages) - 1:
            return _moved(state, state.stage, COMPLETE, now, state.base, "auto", f"PASS, {met}")
        if plan.promote == "manual":
            return None
        return _moved(state, state.stage + 1, RUNNING, now, compared, "auto", f"PASS, {met}")
    if plan.on_inconclusive == "extend" and spent < gate.longest:
        return None
    return _moved(state, state.stage, HELD, now, state.base, "auto", f"INCONCLUSIVE, {met}")


def act(
    plan: Release, state: ReleaseState, action: str, actor: str, now: float, compared: int
) -> ReleaseState:
    """A person's `promote`, `hold` or `rollback`; raises `Refused` where it cannot apply."""
    if state.state == ROLLED_BACK:
        raise Refused("the release is rolled back: start a new run to release again")
    if action == "rollback":
        return _moved(state, state.stage, ROLLED_BACK, now, state.base, actor, "by hand")
    if action == "hold":
        if state.state == HELD:
            raise Refused("the release is held already")
        return _moved(state, state.stage, HELD, now, state.base, actor, "by hand")
    if action != "promote":
        raise Refused(f"no such action {action[:40]!r} (promote, hold or rollback)")
    if state.stage == len(plan.stages) - 1:
        raise Refused("the release is at its last stage already")
    return _moved(state, state.stage + 1, RUNNING, now, compared, actor, "by hand")


def _moved(
    state: ReleaseState, stage: int, to: str, now: float, base: int, actor: str, why: str
) -> ReleaseState:
    """`state` moved; a new stage starts its clock, a hold or a rollback keeps the stage's."""
    since = now if stage != state.stage else state.since
    return dataclasses.replace(
        state, stage=stage, state=to, since=since, base=base, actor=actor, why=why
    )


def waits_for(plan: Release, state: ReleaseState, verdict: str, compared: int, now: float) -> str:
    """What the next gate waits for, in words (the dashboard, `ctl release status`)."""
    if state.state == ROLLED_BACK:
        return "nothing: rolled back, the primary serves everyone"
    if state.state == COMPLETE:
        return "nothing: the last stage passed its gate"
    if state.state == HELD:
        return "a person: `shadowdiff ctl release promote` or `rollback`"
    gate = plan.stages[state.stage].gate
    more = []
    if (pairs := gate.min_pairs - (compared - state.base)) > 0:
        more.append(f"{pairs} more pairs")
    if (left := gate.min_duration - (now - state.since)) > 0:
        more.append(_minutes(left) + " more")
    then = "a PASS verdict" if plan.promote == "auto" else "`shadowdiff ctl release promote`"
    now_is = f" (now {verdict})" if verdict != "PASS" else ""
    return (", ".join(more) + ", then " if more else "") + then + now_is


class Rollout:
    """One proxy's release controller (see the module)."""

    def __init__(
        self,
        cfg: Config,
        send: Callable[[Serving], None],
        alerter: Alerter,
        record: Callable[[Event], None],
        verdict: Callable[[], Awaitable[VerdictDocument]],
        served: Callable[[], dict[str, int]],
    ) -> None:
        assert cfg.release is not None
        self.cfg, self.plan = cfg, cfg.release
        self.send, self.alerter, self.record = send, alerter, record
        self.verdict, self.served = verdict, served
        self.state: ReleaseState | None = None
        self.last: tuple[str, int] = ("INCONCLUSIVE", 0)  # the last verdict and pairs judged
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="release")
        self.reader: Store | None = None
        self.on_rollback: Callable[[float, str], None] = lambda at, why: None
        """Told when this proxy rolled the release back (the incidents' mitigation)."""

    async def start(self) -> None:
        """Reads the release as the store holds it, or starts it at its first stage, and
        tells the tap (which serves no one from the candidate until then)."""
        try:
            self._apply(await self._in_thread(self._load))
        except StoreError as e:  # the next poll tries again; meanwhile, the primary serves
            logger.error("cannot read the release's state: %s", e)

    def _load(self) -> ReleaseState:
        store, run = self._store(), self.cfg.run
        state = store.release(run)
        if state is None:
            compared = store.counts(run).get("compared", 0)
            first = ReleaseState(0, RUNNING, time.time(), compared, "proxy", "the run started")
            store.move_release(run, first)
            state = store.release(run) or first
        return state

    async def watch(self, stop: asyncio.Event) -> None:
        """Reads the state every `release.poll`; judges the gate every `verdict_every`."""
        judged = -float("inf")
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.plan.poll)
            if stop.is_set():
                return
            try:
                self._apply(await self._in_thread(self._load))
                if time.monotonic() - judged >= self.cfg.control.verdict_every:
                    judged = time.monotonic()
                    await self._judge()
            except Exception as e:  # an unreadable store is shown by /healthz, not fatal
                logger.error("cannot judge the release: %s", e)

    async def _judge(self) -> None:
        if self.state is None:
            return
        doc = await self.verdict()
        self.last = (doc["verdict"], doc["counts"]["compared"])
        new = decide(self.plan, self.state, doc, time.time())
        if new is not None:
            await self._move(new)

    async def act(self, action: str, actor: str) -> dict[str, Any]:
        """A person's action, from the control server; raises `Refused`."""
        if self.state is None:
            raise Refused("the release's state is not read yet: try again in a moment")
        counts = await self._in_thread(lambda: self._store().counts(self.cfg.run))
        new = act(self.plan, self.state, action, actor, time.time(), counts.get("compared", 0))
        if not await self._move(new):
            raise Refused("another proxy moved the release meanwhile: look again")
        return self.status()

    async def _move(self, new: ReleaseState) -> bool:
        """Writes `new` on the version it was decided on; the proxy whose write wins tells
        the run (an event, an alert); the others read the change at their next poll."""
        old = self.state
        if not await self._in_thread(lambda: self._store().move_release(self.cfg.run, new)):
            self._apply(await self._in_thread(self._load))
            return False
        self._apply(dataclasses.replace(new, version=new.version + 1))
        assert old is not None
        self._tell(old, new)
        return True

    def _tell(self, old: ReleaseState, new: ReleaseState) -> None:
        before, after = self._named(old), self._named(new)
        kind = {ROLLED_BACK: "rollback", HELD: "hold", COMPLETE: "complete"}.get(
            new.state, "promote"
        )
        at = time.time()
        self.record(Event(at, f"release_{kind}", new.actor, before, f"{after}: {new.why}"))
        if new.state == ROLLED_BACK:
            self.on_rollback(at, f"release rolled back by {new.actor}")
        log = logger.error if new.state == ROLLED_BACK else logger.warning
        log("release %s → %s by %s: %s", before, after, new.actor, new.why)
        self.alerter.fire(
            Alert(
                f"release_{kind}",
                "release",
                f"shadowdiff run {self.cfg.run}: release {kind}, {before} → {after} by "
                f"{new.actor}: {new.why}",
                {"actor": new.actor, "from": before, "to": after, "why": new.why},
                change=True,
                message=new.state in (ROLLED_BACK, HELD),
            )
        )

    def _named(self, state: ReleaseState) -> str:
        stage: Stage = self.plan.stages[state.stage]
        return f"{stage.name()} ({state.state.replace('_', ' ')})"

    def _apply(self, state: ReleaseState) -> None:
        """Tells the tap when the stage or state changed (from here or from another proxy)."""
        old, self.state = self.state, state
        if old is None or (old.stage, old.state) != (state.stage, state.state):
            self.send(Serving(state.stage, state.state))
            if old is not None and old.version != state.version and state.actor:
                logger.info("release now %s (%s)", self._named(state), state.why)

    def status(self) -> dict[str, Any]:
        """What the dashboard and `ctl release status` show."""
        state, plan, now = self.state, self.plan, time.time()
        verdict, compared = self.last
        counts = self.served()
        served = {k: counts.get(f"served.{k}", 0) for k in ("primary", "candidate")}
        fallbacks = {
            k.removeprefix("fallback."): v for k, v in counts.items() if k.startswith("fallback.")
        }
        if state is None:
            return {"state": "unknown", "stages": [s.name() for s in plan.stages]}
        return {
            "stage": state.stage,
            "name": plan.stages[state.stage].name(),
            "state": state.state,
            "since": state.since,
            "in_stage": now - state.since,
            "pairs_in_stage": max(compared - state.base, 0),
            "actor": state.actor,
            "why": state.why,
            "verdict": verdict,
            "waits_for": waits_for(plan, state, verdict, compared, now),
            "promote": plan.promote,
            "stages": [s.name() for s in plan.stages],
            "served": served,
            "fallbacks": fallbacks,
        }

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    def _store(self) -> Store:
        if self.reader is None:
            self.reader = open_store(self.cfg.store, create=False)
        return self.reader

    async def close(self) -> None:
        if self.reader is not None:
            await self._in_thread(self.reader.close)
        self.executor.shutdown()
