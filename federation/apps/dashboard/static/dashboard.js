// federation dashboard: fetch /api/dashboard every few seconds and update the page in place.
// Every value from the server is put in the page as text (textContent), never as HTML.
"use strict";

(function () {
  const refreshMs = Number(document.body.dataset.refreshMs) || 5000;
  const params = new URLSearchParams(location.search);
  const state = {
    window: params.get("window") || "24h",
    charts: {},        // entity -> uPlot instance
    refreshes: 0,      // completed refreshes (tests wait on it)
    last: null,        // the last /api/dashboard object
    error: null,
  };
  window.federationDashboard = state;

  const $ = (sel) => document.querySelector(sel);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "title") node.title = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function badge(text, kind) { return el("span", { class: "badge " + kind }, text); }

  function fmtNum(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString("en"); }
  function fmtRate(r) { return r === null || r === undefined ? "–" : (100 * r).toFixed(r === 1 ? 0 : 3) + " %"; }
  function fmtMs(v) { return v === null || v === undefined ? "–" : Number(v).toFixed(v < 10 ? 2 : 1); }
  function fmtTime(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toISOString().replace("T", " ").replace(/\.\d+Z$|Z$/, "Z");
  }
  function ago(iso, now) {
    const d = new Date(iso);
    if (!iso || isNaN(d)) return "–";
    const s = Math.max(0, Math.round((now - d) / 1000));
    if (s < 120) return s + " s ago";
    if (s < 7200) return Math.round(s / 60) + " min ago";
    if (s < 172800) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }

  // Replace a tbody's rows; an empty list shows one row saying so.
  function fillRows(tbody, rows, emptyText, columns) {
    tbody.replaceChildren(...(rows.length ? rows :
      [el("tr", {}, el("td", { class: "empty", colspan: String(columns) }, emptyText))]));
  }

  function renderFlag(status) {
    const box = $("#flag");
    const flag = status.flag;
    if (status.flag_error) {
      box.replaceChildren(el("div", { class: "phase-big rate-bad", id: "flag-phase" }, "unreadable"),
        el("p", { class: "rate-bad" }, status.flag_error),
        el("p", {}, "Processes keep the phase they had; ", el("code", {}, "federation rollout set PHASE"),
          " rewrites the flag."));
      return;
    }
    if (!flag) {
      box.replaceChildren(el("div", { class: "phase-big", id: "flag-phase" }, "–"),
        el("p", {}, "No live flag set: unpinned processes run the default, phase 3 (phase 1, the files, while legacy " +
          "files were never backfilled into the database; the fleet below shows each one's phase). ",
          el("code", {}, "federation rollout set PHASE"), " sets it."));
      return;
    }
    const names = { 1: "files only", 2: "files first, database shadow", 3: "database first, files shadow",
                    4: "database only" };
    box.replaceChildren(
      el("div", { class: "phase-big", id: "flag-phase" }, "phase " + flag.phase),
      el("div", { class: "muted" }, names[flag.phase] || ""),
      el("dl", { class: "kv" },
        el("dt", {}, "sample"), el("dd", {}, flag.sample === null || flag.sample === undefined ? "–" : String(flag.sample)),
        el("dt", {}, "set at"), el("dd", {}, fmtTime(flag.set_at)),
        el("dt", {}, "set by"), el("dd", {}, flag.set_by || "–"),
        el("dt", {}, "reason"), el("dd", {}, flag.reason || "–")));
  }

  function renderGuards(guards) {
    const box = $("#guards");
    if (!guards) { box.replaceChildren(el("p", { class: "empty" }, "unknown (the rollout state could not be read)")); return; }
    $("#guards-title").textContent = guards.to > guards.from
      ? `Next step: phase ${guards.from} → ${guards.to}` : `Step back: phase ${guards.from} → ${guards.to}`;
    if (guards.error) {
      box.replaceChildren(el("p", {}, badge("unknown", "warn"), " guards not evaluated: " + guards.error));
      return;
    }
    const checks = guards.checks || [];
    const refused = checks.filter((g) => !g.ok);
    const verdict = refused.length
      ? el("p", {}, badge("refused", "bad"), ` rollout set ${guards.to} would refuse (${refused.length} guard${refused.length > 1 ? "s" : ""})`)
      : el("p", {}, badge("clear", "ok"), ` rollout set ${guards.to} would pass every guard`);
    const items = checks.map((g) => el("li", { "data-guard": g.name },
      badge(g.ok ? "ok" : "refuses", g.ok ? "ok" : "bad"), " ", el("strong", {}, g.name),
      g.detail ? ": " + g.detail : "", !g.ok && g.fix ? el("span", { class: "fix" }, g.fix) : null));
    box.replaceChildren(verdict, el("ul", { class: "guards" }, ...items));
  }

  function renderDatabase(data) {
    const db = data.database;
    const box = $("#database");
    const head = el("p", {}, db.ok ? badge("up", "ok") : badge("unreachable", "bad"), " ",
      el("span", {}, `${db.engine}: ${db.display}`));
    box.replaceChildren(head, db.ok ? "" : el("p", { class: "rate-bad" }, db.error));
    const tbody = $("#tables tbody");
    if (data.tables) {
      fillRows(tbody, Object.entries(data.tables).map(([t, n]) =>
        el("tr", { "data-table": t }, el("td", {}, t), el("td", { class: "num" }, fmtNum(n)))), "", 2);
    } else {
      fillRows(tbody, [], db.ok ? "no database created yet" : "row counts unavailable", 2);
    }
    const dead = data.dead_letters;
    const deadBox = $("#dead-letters");
    if (deadBox) {
      deadBox.replaceChildren(!dead ? "dead letters: not counted"
        : dead.count === 0 ? el("span", {}, badge("none", "ok"), " dead letters")
        : el("span", {}, badge(`${fmtNum(dead.count)} dead letters`, "warn"),
          ` oldest ${Math.round(dead.oldest_age_s)} s (since ${fmtTime(dead.oldest_dead_at)})`));
    }
  }

  function renderFleet(status, now) {
    const fleet = status.fleet || [];
    const alive = fleet.filter((p) => p.alive).length;
    $("#fleet-summary").textContent = `${alive} alive, ${fleet.length - alive} gone`;
    const rows = fleet.map((p) => el("tr", { class: p.alive ? "alive" : "gone", "data-pid": String(p.pid) },
      el("td", {}, p.host), el("td", { class: "num" }, p.pid), el("td", {}, p.agent ? p.agent : (p.program
        ? el("span", { class: "muted", title: "serves no single agent: a command, or a program using the Python API" },
             p.program) : "–")),
      el("td", { class: "num" }, p.phase),
      el("td", {}, p.source === "env" ? badge("pinned (env)", "warn") : p.source),
      el("td", {}, p.version || "–"), el("td", {}, fmtTime(p.started_at)),
      el("td", { title: fmtTime(p.last_seen) }, ago(p.last_seen, now)),
      el("td", {}, p.alive ? badge("alive", "ok") : badge("gone", "muted"))));
    fillRows($("#fleet tbody"), rows, "no process has announced itself yet", 9);
  }

  function renderEntities(status) {
    const cons = status.consistency || {};
    const rows = Object.keys(cons).sort().map((name) => {
      const c = cons[name];
      const rateClass = c.rate === null ? "" : (c.rate >= 0.999 ? "rate-ok" : "rate-bad");
      const errRate = c.comparisons ? c.errors / c.comparisons : null;
      // latencies are of every call on each side, compared or not: with none compared, say so
      const none = !c.comparisons;
      return el("tr", { "data-entity": name, class: none ? "muted" : "",
                        title: none ? "no comparison in this window (nothing read from both sides); latencies are of the calls made" : "" },
        el("td", {}, name), el("td", { class: "num" }, fmtNum(c.comparisons)),
        el("td", { class: "num" }, fmtNum(c.mismatches)), el("td", { class: "num " + rateClass }, fmtRate(c.rate)),
        el("td", { class: "num" }, fmtNum(c.errors)), el("td", { class: "num" }, fmtRate(errRate)),
        el("td", { class: "num" }, `${fmtMs(c.files_ms && c.files_ms.p50)} / ${fmtMs(c.files_ms && c.files_ms.p99)}`),
        el("td", { class: "num" }, `${fmtMs(c.db_ms && c.db_ms.p50)} / ${fmtMs(c.db_ms && c.db_ms.p99)}`));
    });
    fillRows($("#entities tbody"), rows, "no comparisons counted in this window", 8);
  }

  // One chart per entity: comparisons per bucket (bars, left axis) and the consistency rate (line, right axis).
  function renderCharts(series) {
    const box = $("#charts");
    const names = Object.keys(series || {}).sort();
    for (const name of Object.keys(state.charts)) {
      if (!names.includes(name)) { state.charts[name].destroy(); delete state.charts[name]; box.querySelector(`[data-chart="${CSS.escape(name)}"]`).remove(); }
    }
    for (const name of names) {
      const points = series[name];
      const xs = points.map((p) => Date.parse(p.start) / 1000);
      const comparisons = points.map((p) => p.comparisons);
      const rate = points.map((p) => (p.comparisons ? 100 * (1 - p.mismatches / p.comparisons) : null));
      const data = [xs, comparisons, rate];
      let chart = state.charts[name];
      if (!chart) {
        const holder = el("div", { class: "chart", "data-chart": name }, el("h3", {}, name));
        box.append(holder);
        const width = Math.max(300, holder.clientWidth || 360);
        chart = new uPlot({
          width, height: 170,
          legend: { show: true },
          tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),  // UTC, as every time on the page
          // the rate's axis ends at 100 % and starts just below the lowest rate, so a dip of 0.1 % shows
          scales: {
            // half a bucket of room each side, so the first and the current hour's bars show whole
            x: { time: true, range: (u, lo, hi) => [lo - 1800, hi + 1800] },
            rate: { range: (u, lo) => [lo === null ? 99 : Math.min(99, Math.floor(lo)), 100] },
          },
          axes: [
            {},
            { scale: "y", label: "comparisons", size: 50 },
            { scale: "rate", side: 1, label: "rate %", grid: { show: false }, size: 50 },
          ],
          series: [
            {},
            { label: "comparisons", scale: "y", stroke: "#0969da", fill: "rgba(9,105,218,.15)",
              paths: uPlot.paths.bars({ size: [0.8, 40] }), points: { show: false } },
            // points too: an hour with comparisons between empty ones is a lone point, not a line
            { label: "consistency %", scale: "rate", stroke: "#1a7f37", width: 2, spanGaps: false,
              points: { show: true, size: 5, fill: "#1a7f37" },
              value: (u, v) => (v === null ? "–" : v.toFixed(3)) },
          ],
        }, data, holder);
        state.charts[name] = chart;
      } else {
        chart.setData(data);
      }
    }
    if (!names.length) box.replaceChildren(el("p", { class: "empty" }, "no series"));
    else box.querySelector(".empty")?.remove();
  }

  function renderDiff(diff) {
    if (Array.isArray(diff)) {
      return el("div", { class: "diff" }, ...diff.map((d, i) => {
        const line = Array.isArray(d) ? `${d[0]}: ${JSON.stringify(d[1])} ≠ ${JSON.stringify(d[2])}`
          : (d && typeof d === "object" && "field" in d)
            ? `${d.field}: files ${JSON.stringify(d.files)} · db ${JSON.stringify(d.db)}` : JSON.stringify(d);
        return (i ? "\n" : "") + line;
      }));
    }
    return el("div", { class: "diff" }, typeof diff === "string" ? diff : JSON.stringify(diff));
  }

  function renderMismatches(list) {
    const rows = (list || []).map((m) => el("tr", { "data-key": String(m.key) },
      el("td", {}, fmtTime(m.at)), el("td", {}, `${m.host}:${m.pid}`), el("td", {}, m.entity),
      el("td", {}, String(m.key)), el("td", { class: "num" }, m.phase), el("td", {}, m.op || "–"),
      el("td", {}, m.authority || "–"), el("td", {}, renderDiff(m.diff))));
    fillRows($("#mismatches tbody"), rows, list ? "no mismatch recorded" : "unavailable", 8);
  }

  function renderHistory(history) {
    const rows = (history || []).slice().reverse().map((h) => el("tr", {},
      el("td", {}, fmtTime(h.at)), el("td", {}, h.from ?? "–"), el("td", {}, h.to), el("td", {}, h.by || "–"),
      el("td", {}, h.reason || "–"), el("td", {}, h.forced ? badge("forced", "bad") : "no")));
    fillRows($("#history tbody"), rows, "the flag was never set", 6);
  }

  function render(data) {
    const now = Date.parse(data.generated_at) || Date.now();
    const banner = [];
    if (!data.database.ok) banner.push(`Database unreachable: ${data.database.error}. The flag, the fleet and the counts below come from the control files.`);
    for (const p of data.problems || []) banner.push(`Could not read ${p.part}: ${p.error}`);
    for (const p of (data.status && data.status.fleet) || []) {
      if (!p.torn_at) continue;
      const docs = Object.entries(p.torn_documents || {}).map(([name, n]) => `${name} (${n})`).join(", ");
      banner.push(`A writer outside the fleet: ${p.host}:${p.pid} read legacy files half-written, last at ` +
        `${fmtTime(p.torn_at)}${docs ? ": " + docs : ""}. Steps up to phase 2 and 3 are refused ` +
        "(unannounced_writers) until it stops.");
    }
    for (const p of (data.status && data.status.fleet) || []) {
      if (!p.outside_at) continue;
      const docs = Object.entries(p.outside_documents || {}).map(([name, n]) => `${name} (${n})`).join(", ");
      banner.push(`A writer outside the fleet: ${p.host}:${p.pid} found legacy files rewritten by no process of ` +
        `the fleet, last at ${fmtTime(p.outside_at)}${docs ? ": " + docs : ""}. Steps up to phase 2 and 3 are ` +
        "refused (unannounced_writers) until it stops.");
    }
    const bannerBox = $("#banner");
    bannerBox.hidden = banner.length === 0;
    bannerBox.replaceChildren(...banner.map((t) => el("div", {}, t)));
    renderDatabase(data);
    if (data.status) {
      renderFlag(data.status);
      renderFleet(data.status, now);
      renderEntities(data.status);
      renderHistory(data.status.history);
    }
    renderGuards(data.guards);
    if (data.series) renderCharts(data.series);
    renderMismatches(data.mismatches);
    $("#window-label").textContent = `${fmtTime(data.window.since)} – ${fmtTime(data.window.until)}, hourly`;
    $("#updated").textContent = "updated " + fmtTime(data.generated_at);
  }

  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    try {
      const response = await fetch(`/api/dashboard?window=${encodeURIComponent(state.window)}`, { cache: "no-store" });
      const body = await response.json();
      if (!response.ok) throw new Error(body.error || response.statusText);
      state.last = body;
      state.error = null;
      render(body);
    } catch (err) {
      state.error = String(err);
      const bannerBox = $("#banner");
      bannerBox.hidden = false;
      bannerBox.replaceChildren(el("div", {}, `The dashboard server did not answer: ${err.message || err}. Retrying.`));
    } finally {
      state.refreshes += 1;
      timer = setTimeout(refresh, refreshMs);
    }
  }

  function selectWindow(name) {
    state.window = name;
    for (const b of document.querySelectorAll("#windows button")) b.classList.toggle("active", b.dataset.window === name);
    const url = new URL(location.href);
    url.searchParams.set("window", name);
    history.replaceState(null, "", url);
  }

  for (const b of document.querySelectorAll("#windows button")) {
    b.addEventListener("click", () => { selectWindow(b.dataset.window); refresh(); });
  }
  selectWindow(state.window);
  refresh();
})();
