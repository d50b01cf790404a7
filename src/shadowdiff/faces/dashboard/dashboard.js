// The live dashboard of a running shadowdiff worker: no build step, no framework, no
// external assets. Everything that comes from traffic (routes, paths, values, headers,
// bodies) is hostile: it is only ever put in the page as text (textContent, text nodes),
// never parsed as HTML. The Content-Security-Policy forbids inline scripts and styles, so
// state shows through classes, data attributes and the `hidden` attribute.
"use strict";

(() => {
  const REFRESH_MS = 2000;
  const HIDDEN_REFRESH_MS = 15000; // a tab in the background asks less often
  const VERDICT_COST_FACTOR = 5; // a slow verdict is asked for at most 1/5 of the time
  const TIMEOUT_MS = 8000;
  const TOKEN_KEY = "shadowdiff.token";
  const ACTOR = "dashboard";
  const RANK = { PASS: 0, INCONCLUSIVE: 1, FAIL: 2 };
  const CHECKS_SHOWN = 100;
  const FIELDS_SHOWN = 3;

  const state = {
    run: "",
    verdict: "",
    control: null, // {paused, rate, config_rate, dial} as the server last said
    controlVersion: 0, // bumped by every change made here: older status answers do not undo it
    busy: false, // a change is on its way
    dialEditing: false, // the user is moving the dial: refreshes leave it alone
    pending: null, // the change to retry once a token is given
    lastOk: null, // Date.now() of the last refresh that got everything
    problem: null, // what went wrong in the last refresh
    refreshing: false,
    verdictAt: 0, // when the verdict was last asked for, and how long it took
    verdictCost: 0,
    again: false,
    wake: null,
    held: null, // divergences not shown yet: the pointer is on the list
    heldSince: null,
  };

  const $ = (id) => document.getElementById(id);
  const number = new Intl.NumberFormat("en-US");

  /** A new element; `text` and string children become text nodes, never markup. */
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null) continue;
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "title") node.title = value;
      else if (key === "href") node.setAttribute("href", value);
      else throw new Error(`el: unsupported property ${key}`);
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  const fmtCount = (n) => (typeof n === "number" ? number.format(n) : "—");

  function fmtPct(x) {
    if (typeof x !== "number" || !Number.isFinite(x)) return "—";
    const v = x * 100;
    const digits = v === 0 || v === 100 || v >= 10 ? 0 : v >= 1 ? 1 : 2;
    return `${v.toFixed(digits)} %`;
  }

  function fmtMs(seconds) {
    if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "—";
    const v = seconds * 1000;
    return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
  }

  const fmtRatio = (x) => (typeof x === "number" && Number.isFinite(x) ? `${x.toFixed(2)}×` : "—");

  function fmtDuration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 90) return `${s} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
    return `${(s / 86400).toFixed(1)} days`;
  }

  const fmtAgo = (ms) => `${fmtDuration(ms / 1000)} ago`;

  function byPrefix(counts, prefix) {
    const out = [];
    for (const [key, value] of Object.entries(counts || {})) {
      if (key.startsWith(`${prefix}.`) && value) out.push([key.slice(prefix.length + 1), value]);
    }
    out.sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    return out;
  }

  const rank = (result) => (Object.hasOwn(RANK, result) ? RANK[result] : RANK.INCONCLUSIVE);
  const known = (result) => (Object.hasOwn(RANK, result) ? result : "INCONCLUSIVE");
  const worst = (results) => results.reduce((a, b) => (rank(b) > rank(a) ? b : a), "PASS");

  // -- talking to the server --------------------------------------------------------------

  async function request(method, path, body) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
    const headers = { Accept: "application/json" };
    if (method !== "GET") {
      headers["X-Shadowdiff-Actor"] = ACTOR;
      const token = sessionStorage.getItem(TOKEN_KEY);
      if (token) headers.Authorization = `Bearer ${token}`;
      if (body !== undefined) headers["Content-Type"] = "text/plain";
    }
    try {
      const response = await fetch(path, {
        method,
        headers,
        body,
        cache: "no-store",
        credentials: "same-origin",
        redirect: "error",
        signal: controller.signal,
      });
      let data = null;
      try {
        data = await response.json();
      } catch {
        data = null;
      }
      return { status: response.status, ok: response.ok, data };
    } catch (e) {
      throw new Error(e && e.name === "AbortError" ? "no answer in time" : "unreachable");
    } finally {
      clearTimeout(timer);
    }
  }

  async function getJSON(path) {
    const answer = await request("GET", path);
    if (!answer.ok) {
      const why = answer.data && answer.data.error ? `: ${answer.data.error}` : "";
      throw new Error(`HTTP ${answer.status}${why}`);
    }
    return answer.data;
  }

  // -- the refresh loop -------------------------------------------------------------------

  /** The verdict, unless it was judged too recently for what judging costs the worker. */
  async function getVerdict() {
    const now = Date.now();
    const every = Math.min(30000, Math.max(REFRESH_MS, VERDICT_COST_FACTOR * state.verdictCost));
    if (now - state.verdictAt < every - 250) return null; // the loop's own jitter aside
    state.verdictAt = now;
    try {
      return await getJSON("/verdict");
    } finally {
      state.verdictCost = Date.now() - now;
    }
  }

  async function refresh() {
    const version = state.controlVersion;
    const [status, verdict, divergences] = await Promise.allSettled([
      getJSON("/api/status"),
      getVerdict(),
      getJSON("/api/divergences"),
    ]);
    const problems = [];
    const show = (name, result, render) => {
      if (result.status === "rejected") {
        problems.push(`${name}: ${result.reason.message}`);
        return;
      }
      try {
        render(result.value);
      } catch (e) {
        problems.push(`${name}: cannot show it (${e.message})`);
        console.error(e);
      }
    };
    show("status", status, (s) => renderStatus(s, version === state.controlVersion));
    show("verdict", verdict, (doc) => doc && renderVerdict(doc));
    show("divergences", divergences, renderDivergences);
    document.body.classList.remove("loading");
    const asked = [status, verdict, divergences].filter((r) => r.status === "rejected" || r.value);
    const unreachable = asked.every((r) => r.status === "rejected");
    state.problem = problems.length ? { unreachable, text: problems.join("; ") } : null;
    if (!problems.length) state.lastOk = Date.now();
    renderConn();
  }

  function sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        state.wake = null;
        resolve();
      }
      state.wake = done;
    });
  }

  /** Refreshes now (or right after the refresh under way): refreshes never overlap. */
  function refreshSoon() {
    if (state.wake) state.wake();
    else state.again = true;
  }

  async function loop() {
    for (;;) {
      const started = Date.now();
      state.refreshing = true;
      state.again = false;
      try {
        await refresh();
      } catch (e) {
        state.problem = { unreachable: false, text: `dashboard error: ${e.message}` };
        console.error(e);
        renderConn();
      }
      state.refreshing = false;
      const every = document.hidden ? HIDDEN_REFRESH_MS : REFRESH_MS;
      const wait = state.again ? 0 : Math.max(250, every - (Date.now() - started));
      await sleep(wait);
    }
  }

  function renderConn() {
    const conn = $("conn");
    const updated = $("updated");
    const ago = state.lastOk === null ? null : fmtAgo(Date.now() - state.lastOk);
    updated.textContent = ago === null ? "not updated yet" : `updated ${ago}`;
    document.body.classList.toggle("stale", Boolean(state.problem && state.problem.unreachable));
    if (!state.problem) {
      conn.hidden = true;
      conn.textContent = "";
      return;
    }
    const since = ago === null ? "nothing shown yet" : `last updated ${ago}`;
    conn.textContent = state.problem.unreachable
      ? `Cannot reach the shadowdiff control server — ${since}`
      : `Partly updated (${state.problem.text}) — ${since}`;
    conn.hidden = false;
  }

  // -- status: mirroring, counts, health --------------------------------------------------

  function renderStatus(s, withControl) {
    state.run = s.run || "";
    $("run").textContent = state.run;
    if (withControl) renderControl(s);
    renderCounts(s.counts || {});
    renderHealth(s.health || {});
    renderRelease(s.release);
    renderTitle();
  }

  /** The release: its stages (the current one marked), its state, the shares served and
   * what the next gate waits for; the buttons that move it. */
  function renderRelease(r) {
    const section = $("release");
    section.hidden = !r || r.state === "unknown";
    if (section.hidden) return;
    const stages = (r.stages || []).map((name, i) =>
      el("li", { className: i === r.stage ? "current" : i < r.stage ? "past" : "", text: name }),
    );
    $("release-stages").replaceChildren(...stages);
    const state = String(r.state || "").replace("_", " ");
    $("release-state").textContent =
      `Stage ${r.stage + 1} of ${stages.length}, ${r.name}: ${state} (${r.why}, by ${r.actor});` +
      ` ${fmtDuration(r.in_stage)} and ${r.pairs_in_stage} pairs in the stage, verdict ${r.verdict}.`;
    const served = r.served || {};
    const all = (served.primary || 0) + (served.candidate || 0);
    const fallbacks = Object.entries(r.fallbacks || {}).map(([k, v]) => `${k} ${v}`).join(", ");
    $("release-served").textContent =
      `Served by this proxy: primary ${served.primary || 0}, candidate ${served.candidate || 0}` +
      ` (${fmtPct(all ? (served.candidate || 0) / all : 0)}); fallbacks: ${fallbacks || "none"}.`;
    $("release-waits").textContent = `The next gate waits for ${r.waits_for}.`;
    const over = r.state === "rolled_back";
    $("release-promote").disabled = over || r.stage >= stages.length - 1;
    $("release-hold").disabled = over || r.state === "held";
    $("release-resume").disabled = r.state !== "held";
    $("release-rollback").disabled = over;
  }

  function renderControl(c) {
    state.control = c;
    const mirroring = $("mirroring");
    mirroring.replaceChildren();
    if (c.paused) {
      mirroring.dataset.state = "paused";
      mirroring.append(
        el("strong", { text: "PAUSED" }),
        el("span", { text: `nothing mirrored · ${fmtPct(c.rate)} when resumed` }),
      );
    } else {
      mirroring.dataset.state = c.rate > 0 ? "on" : "zero";
      mirroring.append(
        el("strong", { text: "MIRRORING" }),
        el("span", { text: `${fmtPct(c.rate)} of requests` }),
      );
    }
    document.body.classList.toggle("paused", Boolean(c.paused));
    const toggle = $("toggle");
    toggle.dataset.action = c.paused ? "resume" : "pause";
    toggle.textContent = c.paused ? "Resume mirroring" : "Pause mirroring";
    if (!state.dialEditing) {
      $("rate").value = String(c.rate);
      $("rate-value").value = String(c.rate);
    }
    $("rate-note").textContent =
      c.dial === null || c.dial === undefined
        ? `as configured (${fmtPct(c.config_rate)})`
        : `set live; configured ${fmtPct(c.config_rate)}`;
    $("rate-reset").hidden = c.dial === null || c.dial === undefined;
    renderBusy();
    renderTitle();
  }

  function renderBusy() {
    const ready = state.control !== null && !state.busy;
    for (const id of ["toggle", "rate", "rate-value", "rate-reset"]) $(id).disabled = !ready;
  }

  function renderCounts(counts) {
    const line = $("counts");
    line.replaceChildren();
    const item = (key, label, value, reasons, tone) => {
      const node = el(
        "span",
        { className: `count${tone ? ` ${tone}` : ""}`, dataset: { count: key } },
        el("b", { text: fmtCount(value) }),
        ` ${label}`,
      );
      if (reasons && reasons.length) {
        node.append(
          el("span", {
            className: "reasons",
            text: ` (${reasons.map(([k, v]) => `${k} ${fmtCount(v)}`).join(", ")})`,
          }),
        );
      }
      line.append(node);
    };
    const total = (pairs) => pairs.reduce((sum, [, v]) => sum + v, 0);
    const dropped = byPrefix(counts, "dropped");
    const notSampled = byPrefix(counts, "not_sampled");
    const errors = byPrefix(counts, "shadow_error");
    item("seen", "seen", counts.seen || 0);
    item("sampled", "sampled", counts.sampled || 0);
    if (notSampled.length) item("not_sampled", "not sampled", total(notSampled), notSampled);
    item("recorded", "recorded", counts.recorded || 0);
    item("dropped", "dropped", total(dropped), dropped, dropped.length ? "warn" : "");
    item("compared", "compared", counts.compared || 0);
    item("divergent", "divergent", counts.divergent || 0, null, counts.divergent ? "bad" : "");
    if (errors.length) item("shadow_errors", "shadow errors", total(errors), errors, "bad");
  }

  function renderHealth(health) {
    const list = $("health");
    list.replaceChildren();
    list.dataset.status = health.status || "unknown";
    for (const part of ["proxy", "worker", "store"]) {
      const h = health[part];
      if (!h) continue;
      let detail = h.detail || "";
      if (part === "store" && h.unwritten) detail += ` · ${fmtCount(h.unwritten)} unwritten`;
      list.append(
        el(
          "li",
          { className: h.ok ? "ok" : "bad", dataset: { part, ok: String(Boolean(h.ok)) } },
          el("b", { text: `${part} ${h.ok ? "ok" : "FAILING"}` }),
          el("span", { className: "detail", text: detail }),
        ),
      );
    }
  }

  function renderTitle() {
    const parts = [state.verdict || "…"];
    if (state.control && state.control.paused) parts.push("PAUSED");
    if (state.run) parts.push(state.run);
    document.title = `${parts.join(" · ")} — shadowdiff`;
  }

  // -- the verdict: banner, routes, checks ------------------------------------------------

  function renderVerdict(doc) {
    const verdict = known(doc.verdict);
    state.verdict = verdict;
    const banner = $("banner");
    banner.className = `verdict-${verdict.toLowerCase()}`;
    const word = $("verdict");
    word.textContent = verdict;
    word.dataset.verdict = verdict;
    if (doc.run && !state.run) {
      state.run = doc.run;
      $("run").textContent = doc.run;
    }
    const checks = Array.isArray(doc.checks) ? doc.checks : [];
    renderRoutes(Array.isArray(doc.routes) ? doc.routes : [], checks);
    renderChecks(checks);
    renderDeciding(checks);
    renderIncidents(Array.isArray(doc.incidents) ? doc.incidents : []);
    renderTitle();
  }

  const fmtSeconds = (s) => (typeof s === "number" && Number.isFinite(s) ? fmtDuration(s) : "—");
  const fmtClock = (ts) => (typeof ts === "number" ? new Date(ts * 1000).toLocaleTimeString() : "");

  /** The run's incidents, newest first, with their response times and timeline. */
  function renderIncidents(incidents) {
    const body = $("incidents").querySelector("tbody");
    const rows = [...incidents].reverse().map((i) => {
      const d = i.durations || {};
      const steps = [
        `first bad exchange ${fmtClock(i.started)}`,
        i.alerted && `paged ${fmtClock(i.alerted)}`,
        i.acked && `acknowledged ${fmtClock(i.acked)} by ${i.acked_by}`,
        i.mitigated && `mitigated ${fmtClock(i.mitigated)} (${i.mitigated_by})`,
        i.resolved && `resolved ${fmtClock(i.resolved)}: ${i.resolved_why}`,
      ].filter(Boolean);
      const open = i.resolved === null || i.resolved === undefined;
      return el(
        "tr",
        { className: open ? "incident-open" : "incident-resolved" },
        el("td", { className: "mono", text: String(i.key || "").slice(0, 12) }),
        el("td", { className: "path", text: i.route }),
        el("td", { text: i.check }),
        el("td", { text: i.team || "—" }),
        el("td", { text: open ? `open (${i.severity})` : "resolved" }),
        el("td", { className: "n", text: fmtSeconds(d.detect) }),
        el("td", { className: "n", text: fmtSeconds(d.acknowledge) }),
        el("td", { className: "n", text: fmtSeconds(d.mitigate) }),
        el("td", { className: "n", text: fmtSeconds(d.resolve) }),
        el("td", { text: steps.join(" · ") }),
      );
    });
    body.replaceChildren(...rows);
    $("incidents-empty").hidden = rows.length > 0;
  }

  /** How long until every inconclusive check can pass or fail, from each check's `needs`:
   * the longest wait at the routes' current rates (the routes run side by side). */
  function renderDeciding(checks) {
    const waiting = checks.filter((c) => c.result === "INCONCLUSIVE");
    const needs = waiting.map((c) => c.needs).filter((n) => n && typeof n.pairs === "number");
    const stuck = waiting.length - needs.length;
    const which = stuck ? `${needs.length} of them` : "every inconclusive check";
    const parts = [];
    if (needs.length && needs.every((n) => typeof n.seconds === "number")) {
      const wait = Math.max(...needs.map((n) => n.seconds));
      parts.push(`About ${fmtDuration(wait)} more at the current rates should decide ${which}.`);
    } else if (needs.length) {
      const most = Math.max(...needs.map((n) => n.pairs));
      parts.push(`Up to ${fmtCount(most)} more pairs per route should decide ${which}.`);
    }
    if (stuck) {
      const what = `${stuck} inconclusive check${stuck === 1 ? "" : "s"}`;
      parts.push(`More pairs alone would not decide ${what} (see their details).`);
    }
    const line = $("deciding");
    line.textContent = parts.join(" ");
    line.hidden = parts.length === 0;
  }

  function renderRoutes(routes, checks) {
    const byRoute = new Map();
    for (const c of checks) {
      if (!byRoute.has(c.route)) byRoute.set(c.route, []);
      byRoute.get(c.route).push(c);
    }
    const result = (r) => known(worst((byRoute.get(r.route) || []).map((c) => c.result)));
    const rows = routes.map((r) => ({ r, result: result(r) }));
    rows.sort(
      (a, b) =>
        rank(b.result) - rank(a.result) ||
        (b.r.divergence_rate || 0) - (a.r.divergence_rate || 0) ||
        (b.r.pairs || 0) - (a.r.pairs || 0) ||
        String(a.r.route).localeCompare(String(b.r.route)),
    );
    const body = $("routes").tBodies[0];
    body.replaceChildren(
      ...rows.map(({ r, result }) => routeRow(r, result, byRoute.get(r.route) || [])),
    );
    $("routes-empty").hidden = rows.length > 0;
  }

  function routeRow(r, result, checks) {
    const latency = r.latency || {};
    const primary = latency.primary || {};
    const shadow = latency.shadow || {};
    const latencyCheck = checks.find((c) => c.id === "latency");
    const route = el("td", { className: "route" }, el("span", { className: "mono", text: r.route }));
    const notes = [];
    const fields = (r.fields || [])
      .filter((f) => !f.noise && !f.accepted)
      .sort((a, b) => b.count - a.count)
      .slice(0, FIELDS_SHOWN);
    for (const f of fields) notes.push(`${f.path} ${fmtPct(f.rate)}`);
    for (const m of r.status_matrix || []) {
      if (m.primary !== m.shadow) notes.push(`status ${m.primary}→${m.shadow} ×${fmtCount(m.count)}`);
    }
    if (notes.length) route.append(el("div", { className: "fields mono", text: notes.join(" · ") }));
    const n = (text, extra) => el("td", { className: `n${extra ? ` ${extra}` : ""}`, text });
    let ratio = fmtRatio(latency.ratio);
    if (Array.isArray(latency.ci) && latency.ci.every((x) => typeof x === "number")) {
      ratio += ` (${latency.ci[0].toFixed(2)}–${latency.ci[1].toFixed(2)})`;
    }
    const ratioTone = latencyCheck ? `res-${known(latencyCheck.result).toLowerCase()}` : "";
    return el(
      "tr",
      { className: `res-${result.toLowerCase()}`, dataset: { route: r.route, result } },
      route,
      el("td", { className: "res", text: result }),
      n(fmtCount(r.pairs)),
      n(fmtCount(r.divergent), r.divergent ? "bad" : ""),
      n(fmtPct(r.divergence_rate), r.divergent ? "bad" : ""),
      n(`${fmtMs(primary.p50)} / ${fmtMs(shadow.p50)}`),
      n(`${fmtMs(primary.p99)} / ${fmtMs(shadow.p99)}`),
      el("td", {
        className: `n ratio ${ratioTone}`,
        text: ratio,
        title: latencyCheck ? latencyCheck.detail : undefined,
      }),
    );
  }

  function renderChecks(checks) {
    const shown = checks
      .filter((c) => c.result !== "PASS")
      .sort(
        (a, b) =>
          rank(b.result) - rank(a.result) ||
          Number(Boolean(b.critical)) - Number(Boolean(a.critical)) ||
          String(a.route).localeCompare(String(b.route)) ||
          String(a.id).localeCompare(String(b.id)),
      );
    const list = $("checks");
    list.replaceChildren(
      ...shown.slice(0, CHECKS_SHOWN).map((c) =>
        el(
          "li",
          {
            className: `res-${known(c.result).toLowerCase()}`,
            dataset: { check: c.id, route: c.route, result: c.result },
          },
          el("span", { className: "badge", text: c.result }),
          el("b", { text: c.critical ? `${c.id} (critical)` : c.id }),
          el("span", { className: "mono route", text: c.route === "*" ? "whole run" : c.route }),
          el("span", { className: "detail", text: c.detail || "" }),
        ),
      ),
    );
    if (shown.length > CHECKS_SHOWN) {
      list.append(el("li", { className: "more", text: `… and ${shown.length - CHECKS_SHOWN} more` }));
    }
    $("checks-empty").hidden = shown.length > 0 || checks.length === 0;
  }

  // -- recent divergences and their examples ----------------------------------------------

  function examplesHash(route, path) {
    return `#examples?${new URLSearchParams({ route, path })}`;
  }

  const HOLD_MS = 10000;

  function renderDivergences(rows) {
    // The list does not move under the pointer (for at most HOLD_MS): a link stays where
    // it was when it is clicked.
    const list = $("divergences");
    if (list.matches(":hover")) {
      state.heldSince = state.heldSince || Date.now();
      if (Date.now() - state.heldSince < HOLD_MS) {
        state.held = rows;
        return;
      }
    }
    state.heldSince = null;
    state.held = null;
    // Divergences of the same route, path and kind collapse into one line, at the place
    // of the newest, with its values.
    const groups = new Map();
    for (const d of Array.isArray(rows) ? rows : []) {
      const key = JSON.stringify([d.route, d.path, d.kind]);
      const group = groups.get(key);
      if (group) group.n += 1;
      else groups.set(key, { d, n: 1 });
    }
    list.replaceChildren(
      ...[...groups.values()].map(({ d, n }) => {
        const link = el("a", {
          className: "examples-link",
          href: examplesHash(String(d.route), String(d.path)),
          text: "examples",
        });
        return el(
          "li",
          { dataset: { route: d.route, path: d.path, kind: d.kind } },
          el(
            "div",
            { className: "what" },
            el("span", { className: "mono path", text: d.path }),
            el("span", { className: "kind", text: d.kind }),
            n > 1 ? el("span", { className: "times", text: `×${n}` }) : null,
            el("span", { className: "mono route", text: d.route }),
            link,
          ),
          el(
            "div",
            { className: "values" },
            el("span", { className: "side", text: "primary" }),
            el("code", { text: excerpt(d.primary) }),
            el("span", { className: "side", text: "shadow" }),
            el("code", { text: excerpt(d.shadow) }),
          ),
        );
      }),
    );
    $("divergences-empty").hidden = groups.size > 0;
  }

  const excerpt = (v) => (v === null || v === undefined ? "(absent)" : String(v));

  function fromHash() {
    const hash = location.hash;
    if (!hash.startsWith("#examples?")) {
      $("examples").hidden = true;
      $("example-list").replaceChildren();
      return;
    }
    const params = new URLSearchParams(hash.slice("#examples?".length));
    const route = params.get("route");
    const path = params.get("path");
    if (route && path) showExamples(route, path);
  }

  let examplesAsked = 0;

  async function showExamples(route, path) {
    const asked = ++examplesAsked;
    const pane = $("examples");
    const title = $("examples-title");
    title.replaceChildren(
      el("span", { className: "mono path", text: path }),
      " on ",
      el("span", { className: "mono route", text: route }),
    );
    pane.dataset.route = route;
    pane.dataset.path = path;
    pane.dataset.state = "loading";
    $("examples-note").textContent = "loading…";
    $("example-list").replaceChildren();
    pane.hidden = false;
    pane.scrollIntoView({ block: "start" });
    let examples;
    try {
      examples = await getJSON(`/api/examples?${new URLSearchParams({ route, path })}`);
    } catch (e) {
      if (asked !== examplesAsked) return;
      pane.dataset.state = "error";
      $("examples-note").textContent = `Cannot load the examples: ${e.message}`;
      return;
    }
    if (asked !== examplesAsked) return;
    const list = Array.isArray(examples) ? examples : [];
    $("examples-note").textContent = list.length
      ? `${list.length} example exchange${list.length === 1 ? "" : "s"} kept for this divergence; lines that differ are marked.`
      : "No example kept for this divergence yet.";
    $("example-list").replaceChildren(...list.map(exampleNode));
    pane.dataset.state = "loaded";
  }

  function exampleNode(x, index) {
    const sides = [["primary", x.primary], ["shadow", x.shadow]];
    if (x.secondary) sides.push(["secondary", x.secondary]);
    const against = (name) => (name === "primary" ? x.shadow : x.primary);
    const request = el(
      "details",
      { className: "request" },
      el("summary", {}, "request headers and body"),
      el("pre", { className: "headers", text: headerText(x.request_headers) }),
      x.request_body ? el("pre", { className: "body", text: x.request_body }) : null,
    );
    return el(
      "article",
      { className: "example", dataset: { index: String(index) } },
      el("h3", { className: "mono request-line", text: `${x.method} ${x.path}` }),
      request,
      el(
        "div",
        { className: `sides sides-${sides.length}` },
        ...sides.map(([name, side]) => sideNode(name, side || {}, against(name) || {})),
      ),
    );
  }

  function sideNode(name, side, other) {
    const differs = String(side.status) !== String(other.status);
    return el(
      "div",
      { className: "side", dataset: { side: name } },
      el(
        "h4",
        {},
        `${name} `,
        el("span", { className: `status${differs ? " diff" : ""}`, text: String(side.status) }),
      ),
      marked("headers", headerText(side.headers), headerText(other.headers)),
      marked("body", side.body || "", other.body || ""),
    );
  }

  function headerText(headers) {
    return (Array.isArray(headers) ? headers : []).map(([n, v]) => `${n}: ${v}`).join("\n");
  }

  /** A line as compared: a JSON member is the same with or without its trailing comma. */
  const lineKey = (line) => line.replace(/,\s*$/, "");

  /** A <pre> of `text` whose lines missing from `other` are marked. */
  function marked(kind, text, other) {
    const pre = el("pre", { className: kind });
    if (!text) {
      pre.classList.add("empty");
      pre.textContent = kind === "body" ? "(empty body)" : "(no headers)";
      return pre;
    }
    const theirs = new Map();
    for (const line of other.split("\n")) {
      const key = lineKey(line);
      theirs.set(key, (theirs.get(key) || 0) + 1);
    }
    let run = [];
    let runDiff = false;
    const flush = () => {
      if (!run.length) return;
      const chunk = run.join("");
      pre.append(runDiff ? el("mark", { text: chunk }) : document.createTextNode(chunk));
      run = [];
    };
    const lines = text.split("\n");
    lines.forEach((line, i) => {
      const key = lineKey(line);
      const left = theirs.get(key) || 0;
      const diff = left === 0;
      if (!diff) theirs.set(key, left - 1);
      if (diff !== runDiff) flush();
      runDiff = diff;
      run.push(i < lines.length - 1 ? `${line}\n` : line);
    });
    flush();
    return pre;
  }

  // -- the switch and the dial ------------------------------------------------------------

  async function change(label, method, path, body, render = renderControl) {
    if (state.busy) return;
    state.busy = true;
    state.controlVersion += 1;
    renderBusy();
    const retry = () => change(label, method, path, body, render);
    try {
      const answer = await request(method, path, body);
      if (answer.status === 401) {
        const had = sessionStorage.getItem(TOKEN_KEY);
        sessionStorage.removeItem(TOKEN_KEY);
        askToken(had ? "The server refused this token." : "This server needs a bearer token.", retry);
        return;
      }
      if (!answer.ok) {
        const why = answer.data && answer.data.error ? answer.data.error : `HTTP ${answer.status}`;
        throw new Error(why);
      }
      $("auth").hidden = true;
      $("action-error").hidden = true;
      state.controlVersion += 1;
      state.dialEditing = false;
      render(answer.data);
    } catch (e) {
      const error = $("action-error");
      error.textContent = `${label} failed: ${e.message}`;
      error.hidden = false;
      state.dialEditing = false;
      refreshSoon();
    } finally {
      state.busy = false;
      renderBusy();
    }
  }

  function askToken(why, retry) {
    state.pending = retry;
    $("auth-note").textContent = `${why} It is kept for this tab only.`;
    $("auth").hidden = false;
    $("token").focus();
  }

  function setRate(value) {
    const rate = Number(value);
    if (!Number.isFinite(rate) || rate < 0 || rate > 1) {
      const error = $("action-error");
      error.textContent = "The sample rate is a number between 0 and 1.";
      error.hidden = false;
      state.dialEditing = false;
      if (state.control) renderControl(state.control);
      return;
    }
    change(`Setting the sample rate to ${fmtPct(rate)}`, "PUT", "/mirror/sample-rate", String(rate));
  }

  function wire() {
    $("toggle").addEventListener("click", () => {
      const resume = $("toggle").dataset.action === "resume";
      change(
        resume ? "Resuming" : "Pausing",
        "POST",
        resume ? "/mirror/resume" : "/mirror/pause",
      );
    });
    const range = $("rate");
    const typed = $("rate-value");
    range.addEventListener("input", () => {
      state.dialEditing = true;
      typed.value = range.value;
    });
    range.addEventListener("change", () => setRate(range.value));
    typed.addEventListener("input", () => {
      state.dialEditing = true;
    });
    typed.addEventListener("change", () => setRate(typed.value));
    $("rate-reset").addEventListener("click", () => {
      change("Returning to the configured rates", "PUT", "/mirror/sample-rate", "null");
    });
    for (const [action, label] of [
      ["promote", "Promoting the release"],
      ["hold", "Holding the release"],
      ["resume", "Resuming the release"],
      ["rollback", "Rolling the release back"],
    ]) {
      $(`release-${action}`).addEventListener("click", () =>
        change(label, "POST", `/release/${action}`, undefined, renderRelease),
      );
    }
    $("auth").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token").value = "";
      $("auth").hidden = true;
      const retry = state.pending;
      state.pending = null;
      if (retry) retry();
    });
    $("divergences").addEventListener("click", (event) => {
      const link = event.target.closest("a.examples-link");
      if (link && link.getAttribute("href") === location.hash) fromHash(); // the same again
    });
    $("divergences").addEventListener("mouseleave", () => {
      if (state.held) renderDivergences(state.held);
    });
    window.addEventListener("hashchange", fromHash);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refreshSoon();
    });
    setInterval(renderConn, 1000);
  }

  wire();
  fromHash();
  loop();
})();
