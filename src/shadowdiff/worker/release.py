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
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from shadowdiff.channel import Serving
from shadowdiff.config import Config, Release, Stage
from shadowdiff.counts import SERVED_PAIRS, by_reason
from shadowdiff.faces import Alert, Alerter
from shadowdiff.model import (
    COMPLETE,
    HELD,
    RELEASE_ACTIONS,
    ROLLED_BACK,
    RUNNING,
    Event,
    ReleaseState,
)
from shadowdiff.pace import pause
from shadowdiff.store import Store, open_store

if TYPE_CHECKING:
    from shadowdiff.judge.schema import VerdictDocument

logger = logging.getLogger("shadowdiff.live")  # the name operators filter on

T = TypeVar("T")

STALE = "stale"
"""What a controller tells its tap while it cannot read the release's state: the primary
serves everyone until it can (a rollback by another proxy could not be seen meanwhile)."""
UNREAD_FOR = 2.0
"""Seconds without a read of the release's state (at least three polls) before the tap is
told `stale`."""


class Refused(ValueError):
    """A manual action the release's state does not allow (said why)."""


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def stage_pairs(plan: Release, stage: int, counts: dict[str, int]) -> int:
    """The run's count of the pairs a stage's gate counts: every compared exchange in the
    shadow stage, only those the candidate served in a cohort or percent stage (a stage
    that serves no one never passes its gate on mirrored traffic)."""
    shadow = plan.stages[stage].kind == "shadow"
    return counts.get("compared" if shadow else SERVED_PAIRS, 0)


def decide(
    plan: Release,
    state: ReleaseState,
    verdict: VerdictDocument,
    counts: dict[str, int],
    now: float,
    stopped: bool = False,
) -> ReleaseState | None:
    """The gate: what the release becomes on the run's verdict (None: it stays). A FAIL rolls
    back (or holds, `on_fail`) from any stage; a stage whose minimums are met advances on a
    PASS (with `promote: auto`) and, INCONCLUSIVE, is extended up to its `max_duration`, then
    held for a person (or held at once, `on_inconclusive`). `stopped`: this proxy mirrors
    nothing (paused, dialled to 0), so no evidence comes: nothing is promoted meanwhile."""
    if state.state == ROLLED_BACK:
        return None
    if verdict["verdict"] == "FAIL":
        failing = [c for c in verdict["checks"] if c["result"] == "FAIL"]
        why = "; ".join(f"{c['route']} {c['id']}: {c['detail']}" for c in failing[:3])
        target = ROLLED_BACK if plan.on_fail == "rollback" else HELD
        if state.state == target:
            return None
        return _moved(state, state.stage, target, now, state.base, "auto", f"FAIL: {why}")
    if state.state != RUNNING or stopped:
        return None
    gate = plan.stages[state.stage].gate
    pairs, spent = stage_pairs(plan, state.stage, counts) - state.base, now - state.since
    if pairs < gate.min_pairs or spent < gate.min_duration:
        return None
    met = f"{pairs} pairs in {_minutes(spent)}"
    if verdict["verdict"] == "PASS":
        if state.stage == len(plan.stages) - 1:
            return _moved(state, state.stage, COMPLETE, now, state.base, "auto", f"PASS, {met}")
        if plan.promote == "manual":
            return None
        return _promoted(plan, state, now, counts, "auto", f"PASS, {met}")
    if plan.on_inconclusive == "extend" and spent < gate.longest:
        return None
    return _moved(state, state.stage, HELD, now, state.base, "auto", f"INCONCLUSIVE, {met}")


def act(
    plan: Release,
    state: ReleaseState,
    action: str,
    actor: str,
    now: float,
    counts: dict[str, int],
) -> ReleaseState:
    """A person's `promote`, `hold`, `resume` or `rollback`; raises `Refused` where it
    cannot apply."""
    if state.state == ROLLED_BACK:
        raise Refused("the release is rolled back: start a new run to release again")
    if action == "rollback":
        return _moved(state, state.stage, ROLLED_BACK, now, state.base, actor, "by hand")
    if action == "hold":
        if state.state == HELD:
            raise Refused("the release is held already")
        return _moved(state, state.stage, HELD, now, state.base, actor, "by hand")
    if action == "resume":  # the stage's gate counts afresh: a hold ran out its extension
        if state.state != HELD:
            raise Refused(f"the release is {state.state.replace('_', ' ')}, not held")
        base = stage_pairs(plan, state.stage, counts)
        return dataclasses.replace(
            state, state=RUNNING, since=now, base=base, actor=actor, why="resumed by hand"
        )
    if action != "promote":
        raise Refused(f"no such action {action[:40]!r} ({', '.join(RELEASE_ACTIONS)})")
    if state.stage == len(plan.stages) - 1:
        raise Refused("the release is at its last stage already")
    return _promoted(plan, state, now, counts, actor, "by hand")


def _promoted(
    plan: Release, state: ReleaseState, now: float, counts: dict[str, int], actor: str, why: str
) -> ReleaseState:
    """The next stage, its gate counting from now."""
    stage = state.stage + 1
    return _moved(state, stage, RUNNING, now, stage_pairs(plan, stage, counts), actor, why)


def _moved(
    state: ReleaseState, stage: int, to: str, now: float, base: int, actor: str, why: str
) -> ReleaseState:
    """`state` moved; a new stage starts its clock, a hold or a rollback keeps the stage's."""
    since = now if stage != state.stage else state.since
    return dataclasses.replace(
        state, stage=stage, state=to, since=since, base=base, actor=actor, why=why
    )


def waits_for(
    plan: Release, state: ReleaseState, verdict: str, counts: dict[str, int], now: float
) -> str:
    """What the next gate waits for, in words (the dashboard, `ctl release status`)."""
    if state.state == ROLLED_BACK:
        return "nothing: rolled back, the primary serves everyone"
    if state.state == COMPLETE:
        return "nothing: the last stage passed its gate"
    if state.state == HELD:
        return "a person: `shadowdiff ctl release promote`, `resume` or `rollback`"
    if state.state == STALE:
        return "the store: this proxy cannot read the release's state (the primary serves)"
    gate = plan.stages[state.stage].gate
    more = []
    served = "" if plan.stages[state.stage].kind == "shadow" else " served by the candidate"
    if (pairs := gate.min_pairs - (stage_pairs(plan, state.stage, counts) - state.base)) > 0:
        more.append(f"{pairs} more pairs{served}")
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
        """`verdict`: the run's verdict, judged afresh; `served`: this proxy's counters."""
        assert cfg.release is not None
        self.cfg, self.plan = cfg, cfg.release
        self.send, self.alerter, self.record = send, alerter, record
        self.verdict, self.served = verdict, served
        self.stopped: Callable[[], bool] = lambda: False
        """Whether this proxy mirrors nothing (the switch): no evidence, no promotion."""
        self.on_rollback: Callable[[float, str], None] = lambda at, why: None
        """Told when this proxy rolled the release back (the incidents' mitigation)."""
        self.state: ReleaseState | None = None
        self.told: Serving | None = None
        self.read_at = time.monotonic()  # the last read of the state that worked
        self.failing = ""  # what last failed, said once
        self.moving: set[asyncio.Future[bool]] = set()
        self.last: tuple[str, dict[str, int]] = ("INCONCLUSIVE", {})  # the last judgement
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="release")
        self.reader: Store | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Reads the release as the store holds it (or starts it at its first stage) and
        tells the tap, which serves no one from the candidate until then; then reads it
        every `release.poll`, and beside that judges the gate every `verdict_every` (a long
        judgement never holds up a read)."""
        judge = asyncio.create_task(self._judging(stop))
        while not stop.is_set():
            reading = asyncio.ensure_future(self._in_thread(self._load))
            while not reading.done():  # a read that hangs is found stale all the same
                await asyncio.wait({reading}, timeout=self.plan.poll)
                self._staleness()
            try:
                self._apply(reading.result())
                self.read_at = time.monotonic()
            except Exception as e:  # an unreadable store is shown by /healthz, not fatal
                self._failed("cannot read the release's state", e)
            self._staleness()
            await pause(stop, self.plan.poll)
        await judge

    async def _judging(self, stop: asyncio.Event) -> None:
        while not await pause(stop, self.cfg.control.verdict_every):
            try:
                await self._judge()
            except Exception as e:  # the store's trouble is reported by /healthz too
                self._failed("cannot judge the release", e)

    def _failed(self, what: str, e: Exception) -> None:
        """Logs a failure once, not at every poll, until something works again."""
        if self.failing != what:
            self.failing = what
            logger.error("%s: %s", what, e)

    def _load(self) -> ReleaseState:
        store, run, last = self._store(), self.cfg.run, len(self.plan.stages) - 1
        state = store.release(run)
        if state is None:
            counts = store.counts(run)
            first = ReleaseState(0, RUNNING, time.time(), 0, "proxy", "the run started")
            first = dataclasses.replace(first, base=stage_pairs(self.plan, 0, counts))
            store.move_release(run, first)
            state = store.release(run) or first
        if state.stage > last:  # a plan shortened since: its last stage
            state = dataclasses.replace(state, stage=last)
        return state

    def _staleness(self) -> None:
        """Too long without a read of the state: the tap serves no one from the candidate
        (a rollback by another proxy might not be seen)."""
        if time.monotonic() - self.read_at >= max(UNREAD_FOR, 3 * self.plan.poll):
            self._tell_tap(Serving(self.state.stage if self.state else 0, STALE))

    async def _judge(self) -> None:
        """The gate on a fresh verdict; decided again at once on the state another proxy
        wrote, when it moved the release first."""
        if self.state is None:
            return
        doc = await self.verdict()
        counts = await self._in_thread(lambda: self._store().counts(self.cfg.run))
        self.last = (doc["verdict"], counts)
        for _ in range(2):
            new = decide(self.plan, self.state, doc, counts, time.time(), self.stopped())
            if new is None or await self._move(new):
                self.failing = ""
                return

    async def act(self, action: str, actor: str) -> dict[str, Any]:
        """A person's action, from the control server; raises `Refused`, or `StoreError`.
        Applied again on the state read afresh when the gate (here or on another proxy)
        moved the release meanwhile: a rollback or a hold always still applies."""
        if self.state is None:
            raise Refused("the release's state is not read yet: try again in a moment")
        counts = await self._in_thread(lambda: self._store().counts(self.cfg.run))
        for _ in range(2):
            if await self._move(act(self.plan, self.state, action, actor, time.time(), counts)):
                return self.status()
        raise Refused("the release moved twice meanwhile: look again")

    def paused(self, actor: str) -> None:
        """Mirroring was paused here (on the loop): paused by the automatic kill switch on
        the candidate's errors while a stage serves it, the release is rolled back (its
        evidence would stop while it keeps serving users)."""
        state = self.state
        serving = state is not None and self.plan.stages[state.stage].kind != "shadow"
        if not (serving and actor.startswith("auto") and state and state.state != ROLLED_BACK):
            return
        new = _moved(state, state.stage, ROLLED_BACK, time.time(), state.base, "auto", actor)
        task = asyncio.ensure_future(self._move(new))
        self.moving.add(task)
        task.add_done_callback(self.moving.discard)

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
        kind = {ROLLED_BACK: "rollback", HELD: "hold", COMPLETE: "complete"}.get(new.state)
        if kind is None:
            kind = "promote" if new.stage != old.stage else "resume"
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
        """Takes the state as read or written, and tells the tap if that changes what it
        serves (a change from here or from another proxy)."""
        old, self.state = self.state, state
        if old is not None and old.version != state.version:
            logger.info("release now %s (%s, by %s)", self._named(state), state.why, state.actor)
        self._tell_tap(Serving(state.stage, state.state))

    def _tell_tap(self, serving: Serving) -> None:
        if serving != self.told:
            self.told = serving
            self.send(serving)

    def status(self) -> dict[str, Any]:
        """What the dashboard and `ctl release status` show."""
        state, plan, now = self.state, self.plan, time.time()
        verdict, counts = self.last
        mine = self.served()
        served = {k: mine.get(f"served.{k}", 0) for k in ("primary", "candidate")}
        if state is None:
            return {"state": "unknown", "stages": [s.name() for s in plan.stages]}
        if self.told and self.told.state == STALE:
            state = dataclasses.replace(state, state=STALE)
        return {
            "stage": state.stage,
            "name": plan.stages[state.stage].name(),
            "state": state.state,
            "since": state.since,
            "in_stage": now - state.since,
            "pairs_in_stage": max(stage_pairs(plan, state.stage, counts) - state.base, 0),
            "actor": state.actor,
            "why": state.why,
            "verdict": verdict,
            "waits_for": waits_for(plan, state, verdict, counts, now),
            "promote": plan.promote,
            "stages": [s.name() for s in plan.stages],
            "served": served,
            "fallbacks": by_reason(mine, "fallback"),
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
