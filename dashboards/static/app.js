/* energy-nas dashboard: fills the page shells from the JSON API and refreshes while a search runs.
 * No framework; Plotly is served by this server (/static/plotly.min.js). */
"use strict";

(function () {
  const app = document.getElementById("app");
  if (!app) return;
  const page = app.dataset.page;
  const study = app.dataset.study;
  const trial = app.dataset.trial;
  const FAST_MS = 3000;   // while a search runs
  const SLOW_MS = 15000;  // otherwise (a search may start from the CLI at any time)

  // ------------------------------------------------------------------------------------------ helpers
  const esc = (v) => String(v === null || v === undefined ? "" : v)
    .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  const enc = encodeURIComponent;
  const isNum = (v) => typeof v === "number" && isFinite(v);

  function fmtNum(v, digits) {
    if (!isNum(v)) return "–";
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(digits === undefined ? 2 : digits);
    return v.toLocaleString(undefined, {maximumFractionDigits: digits === undefined ? 3 : digits});
  }
  const fmtSci = (v) => isNum(v) ? v.toExponential(2) : "–";
  function fmtJ(v) {
    if (!isNum(v)) return "–";
    const a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toFixed(2) + " MJ";
    if (a >= 1e3) return (v / 1e3).toFixed(2) + " kJ";
    if (a >= 1) return v.toFixed(2) + " J";
    if (a >= 1e-3) return (v * 1e3).toFixed(2) + " mJ";
    if (a >= 1e-6) return (v * 1e6).toFixed(2) + " µJ";
    return v.toExponential(2) + " J";
  }
  function fmtS(v) {
    if (!isNum(v)) return "–";
    if (v < 60) return v.toFixed(1) + " s";
    if (v < 3600) return (v / 60).toFixed(1) + " min";
    return (v / 3600).toFixed(2) + " h";
  }
  const fmtPct = (v) => isNum(v) ? (100 * v).toFixed(2) + " %" : "–";
  // a ratio to the teacher, as the CLI prints it: 0.97x (0.034x below 0.1)
  const fmtRatio = (v) => isNum(v) ? (v >= 0.1 ? v.toFixed(2) : v.toPrecision(2)) + "x" : "–";
  function fmtTime(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    if (isNaN(d)) return esc(iso);
    return d.toLocaleString(undefined, {dateStyle: "short", timeStyle: "medium"});
  }
  const stateBadge = (s) => `<span class="badge state-${esc(String(s).toLowerCase())}">${esc(s)}</span>`;
  function energyBadge(isEstimate, meter) {
    if (isEstimate === null || isEstimate === undefined) return `<span class="muted">${esc(meter || "no meter")}</span>`;
    return isEstimate
      ? `<span class="nowrap"><span class="badge est" title="Not read from a hardware counter">ESTIMATE</span> <span class="meter">${esc(meter)}</span></span>`
      : `<span class="nowrap"><span class="badge measured">measured</span> <span class="meter">${esc(meter)}</span></span>`;
  }

  async function getJSON(url, options) {
    const r = await fetch(url, Object.assign({credentials: "same-origin", headers: {"Accept": "application/json"}}, options || {}));
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) {
      const detail = body && body.detail !== undefined ? body.detail : r.statusText;
      const err = new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
      err.status = r.status;
      throw err;
    }
    return body;
  }

  const live = document.getElementById("live");
  function setLive(running, ok) {
    if (!live) return;
    if (!ok) { live.className = "live down"; live.textContent = "offline"; return; }
    live.className = running ? "live on" : "live";
    live.textContent = running ? "live · refreshing every 3 s" : "up to date";
  }

  function poll(fn) {
    let timer = null;
    const tick = async () => {
      let running = false;
      try { running = await fn(); setLive(running, true); }
      catch (e) { setLive(false, false); console.error(e); }
      timer = setTimeout(tick, running ? FAST_MS : SLOW_MS);
    };
    tick();
    return () => clearTimeout(timer);
  }

  function kvTable(rows) {
    return `<table class="kv">${rows.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${v}</td></tr>`).join("")}</table>`;
  }

  // ------------------------------------------------------------------------------------- studies page
  function renderStudies(studies) {
    const tbody = document.querySelector("#studies-table tbody");
    if (!studies.length) {
      tbody.innerHTML = `<tr><td colspan="8" class="muted">No studies yet. Run <code>nas search</code>, or POST a spec to <code>/api/studies</code>.</td></tr>`;
      return false;
    }
    let running = false;
    tbody.innerHTML = studies.map((s) => {
      const t = s.trials, c = s.cost;
      const isRunning = s.status === "RUNNING" || (s.launch && s.launch.state === "running");
      running = running || isRunning;
      const budget = s.budget.trials;
      const pct = isNum(t.progress) ? Math.round(100 * t.progress) : null;
      const bar = pct === null ? "" : `<div class="bar"><span style="width:${pct}%"></span></div>`;
      const runningText = t.running ? ` <span class="muted">(+${t.running} running)</span>` : "";
      const est = c.is_estimate ? ` <span class="badge est">ESTIMATE</span>` : "";
      return `<tr data-study="${esc(s.name)}">
        <td><a href="/studies/${enc(s.name)}"><b>${esc(s.name)}</b></a></td>
        <td>${stateBadge(s.status)}</td>
        <td class="progress"><span class="trials-done" data-done="${t.done}">${t.done}</span> / ${budget === null ? "∞" : budget}${runningText}${bar}</td>
        <td class="num">${fmtJ(c.total_energy_j)}${est}</td>
        <td><span class="meter">${esc(c.meters.join(", ") || "no meter")}</span></td>
        <td class="num">${isNum(c.co2eq_g) ? fmtNum(c.co2eq_g, 3) + " g" : "–"}</td>
        <td class="num">${fmtS(c.wall_s)}</td>
        <td>${fmtTime(s.updated_utc)}</td></tr>`;
    }).join("");
    return running;
  }

  // --------------------------------------------------------------------------------------- study page
  const plotConfig = {displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"]};
  let lastVersion = null;
  let dashboard = null;
  let whereRows = null;  // trial numbers matching the server-side where filter, or null
  let sortKey = "number", sortDir = 1;

  const COLUMNS = [
    ["number", "#", (r) => r.number, (r) => `<a href="/studies/${enc(study)}/trials/${r.number}">${r.number}</a>`],
    ["state", "State", (r) => r.state, (r) => stateBadge(r.state)],
    ["front", "Front", (r) => (r.on_front ? (r.noise === "tied" ? 1 : 2) : 0), (r) => (r.on_front ? `<span class="badge front">front</span>` + (r.noise === "tied" ? ` <span class="badge tied" title="another trial may dominate it within the measurement noise (95% interval of J/sample)">tied</span>` : "") : "")],
    ["test", "Test acc", (r) => r.values.test_accuracy, (r) => fmtPct(r.values.test_accuracy)],
    ["accuracy", "Dev acc", (r) => r.values.accuracy, (r) => fmtPct(r.values.accuracy)],
    ["energy", "J/sample", (r) => r.values.energy_per_sample_j, (r) => fmtSci(r.values.energy_per_sample_j)],
    ["meter", "Meter", (r) => r.meter || "", (r) => (r.meter ? energyBadge(r.is_estimate, r.meter) : `<span class="muted">–</span>`)],
    ["latency", "p50 ms", (r) => r.values.latency_p50_ms, (r) => fmtNum(r.values.latency_p50_ms, 2)],
    ["attention", "Attention", (r) => r.values.attention, (r) => esc(r.values.attention)],
    ["bits", "Bits", (r) => r.values.weight_bits, (r) => esc(r.values.weight_bits)],
    ["shape", "Shape", (r) => r.values.n_layers * 1e6 + r.values.d_model, (r) => esc(`${r.values.n_layers}L d${r.values.d_model} h${r.values.n_heads} ffn${r.values.d_ffn}`)],
    ["sparsity", "Sparsity", (r) => r.values.sparsity, (r) => esc(r.values.sparsity === "none" ? "dense" : `${r.values.sparsity} ${fmtPct(r.values.sparsity_amount)}`)],
    ["params", "Params", (r) => r.values.params, (r) => fmtNum(r.values.params, 0)],
    ["cost", "Search J", (r) => (r.cost ? r.cost.total_energy_j : null), (r) => (r.cost ? fmtJ(r.cost.total_energy_j) + (r.cost.is_estimate ? ` <span class="badge est">EST</span>` : "") : "–")],
    ["note", "Note", (r) => r.fail_reason || "", (r) => `<span class="muted small">${esc(r.fail_reason || "")}</span>`],
  ];
  // Shown after the meter column when the study has a measured teacher (its ratios come with each row).
  const ratio = (r, key) => (r.teacher_ratios ? r.teacher_ratios[key] : null);
  const TEACHER_COLUMNS = [
    ["acc_teacher", "acc/teacher", (r) => ratio(r, "accuracy_ratio_to_teacher"), (r) => fmtRatio(ratio(r, "accuracy_ratio_to_teacher"))],
    ["j_teacher", "J/teacher", (r) => ratio(r, "energy_ratio_to_teacher"),
      (r) => `<span title="${esc(r.teacher_ratios ? r.teacher_ratios.teacher_ratio_note : "")}">${fmtRatio(ratio(r, "energy_ratio_to_teacher"))}</span>`],
  ];
  function columns() {
    if (!dashboard || !dashboard.teacher) return COLUMNS;
    const at = COLUMNS.findIndex((c) => c[0] === "meter") + 1;
    return COLUMNS.slice(0, at).concat(TEACHER_COLUMNS, COLUMNS.slice(at));
  }

  function teacherCard(t) {
    if (!t) return null;
    const meter = t.meter ? energyBadge(t.is_estimate, t.meter) : `<span class="muted">not measured</span>`;
    return ["Teacher (reference)", `${fmtPct(t.accuracy)} · ${fmtSci(t.energy_per_sample_j)} J`,
      `dev accuracy · J/sample ${meter} · test ${fmtPct(t.test_accuracy)} · <span class="muted">${esc(t.name)}</span>`];
  }

  function renderStats(s, frontCount, teacher) {
    const c = s.cost, t = s.trials;
    const budget = s.budget.trials === null ? "∞" : s.budget.trials;
    const cards = [
      ["Trials done", `${t.done} / ${budget}`, `${t.complete} complete · ${t.pruned} stopped early · ${t.failed} failed${t.running ? ` · ${t.running} running` : ""}`],
      ["Pareto front", String(frontCount), "non-dominated trials (per hardware)"],
      ["Search energy", (c.n_trials_unmetered ? "≥ " : "") + fmtJ(c.total_energy_j), (c.is_estimate ? `<span class="badge est">ESTIMATE</span> ` : `<span class="badge measured">measured</span> `) + esc(c.meters.join(", ") || "no meter") + (c.n_trials_unmetered ? ` · ${c.n_trials_unmetered} trial(s) unmetered` : "")],
      ["CO₂eq", isNum(c.co2eq_g) ? fmtNum(c.co2eq_g, 3) + " g" : "unknown", isNum(c.co2eq_g) ? "from the meter's grid intensity" : "not every trial's meter gives CO₂"],
      ["Wall time", fmtS(c.wall_s), `${fmtNum(c.gpu_s, 1)} GPU-seconds`],
    ];
    const tc = teacherCard(teacher);
    if (tc) cards.splice(2, 0, tc);
    document.getElementById("study-stats").innerHTML = cards.map(([k, v, sub]) =>
      `<div class="stat"><div class="stat-k">${esc(k)}</div><div class="stat-v">${esc(v)}</div><div class="stat-sub">${sub}</div></div>`).join("");
    const status = document.getElementById("study-status");
    status.className = `badge state-${s.status.toLowerCase()}`;
    status.textContent = s.status;
    document.getElementById("study-objectives").textContent =
      "Objectives: " + s.objectives.map((o) => `${o.metric} (${o.direction === "maximize" ? "max" : "min"})`).join(", ") +
      (s.launch ? ` · launched from this server, ${s.launch.state}${s.launch.returncode !== null ? " (exit " + s.launch.returncode + ")" : ""}` : "");
    const meterText = c.meters.join(", ") || "no meter";
    const label = c.is_estimate ? `<span class="badge est">ESTIMATE</span> ${esc(meterText)}` : `<span class="badge measured">measured</span> ${esc(meterText)}`;
    document.getElementById("cost-table").innerHTML = kvTable([
      ["Training and distillation", fmtJ(c.train_energy_j)],
      ["Energy measurement", fmtJ(c.measure_energy_j)],
    ].concat(isNum(c.teacher_energy_j) ? [["of which the teacher (fine-tuning, outputs cache, measurement)", fmtJ(c.teacher_energy_j)]] : []).concat([
      ["Total", `<b>${fmtJ(c.total_energy_j)}</b>`],
      ["Meter", label],
      ["CO₂eq", isNum(c.co2eq_g) ? fmtNum(c.co2eq_g, 4) + " g" : "–"],
      ["Wall time (sum over trials)", fmtS(c.wall_s)],
      ["GPU-seconds", fmtNum(c.gpu_s, 1)],
      ["Energy budget", isNum(s.budget.energy_j) ? fmtJ(s.budget.energy_j) : "none"],
    ]));
  }

  // How well the early rungs rank candidates (the same report as `nas show STUDY`); hidden below two rungs.
  function renderFidelity(f) {
    const card = document.getElementById("fidelity-card");
    if (!card) return;
    card.hidden = !(f && f.shown);
    if (card.hidden) return;
    document.getElementById("fidelity-note").textContent = `${f.description}; ${f.note}`;
    const rows = f.pairs.map((p) => `<tr class="${p.weak ? "weak" : ""}">
      <td>${esc(p.low_step)} → ${esc(p.high_step)}${p.high_is_final ? ' <span class="muted small">(final dev accuracy)</span>' : ""}</td>
      <td class="num">${p.enough && isNum(p.spearman) ? p.spearman.toFixed(2) : "–"}</td><td class="num">${esc(p.n_trials)}</td>
      <td>${p.enough ? (isNum(p.spearman) ? (p.weak ? "ranks candidates poorly" : "ok") : "undefined (all tied at one rung)") : `too few trials (needs ${esc(f.min_trials)})`}</td></tr>`).join("");
    document.getElementById("fidelity").innerHTML = `<div class="table-wrap"><table class="grid">
      <thead><tr><th>Rungs (training steps)</th><th class="num">Spearman</th><th class="num">Trials with both</th><th></th></tr></thead>
      <tbody>${rows}</tbody></table></div>` +
      (f.warning ? `<div class="warning" role="alert" data-role="fidelity-warning">${esc(f.warning)}</div>` : "");
  }

  // The cost model (GET /api/studies/S/cost-model): held-out predicted against measured, fetched apart from
  // the polled dashboard payload (fitting takes seconds); redrawn when the study changes.
  async function drawCostModel() {
    const el = document.getElementById("fig-cost_model");
    if (!el) return;
    let d;
    try { d = await getJSON(`/api/studies/${enc(study)}/cost-model`); } catch (e) { return; }
    if (window.Plotly) Plotly.react(el, d.figure.data, d.figure.layout, plotConfig);
    const pct = (v) => isNum(v) ? (100 * v).toFixed(1) + "%" : "–";
    const rows = d.hardware.flatMap((h) => Object.entries(h.summary).filter(([, s]) => s.n).map(([target, s]) =>
      `<tr><td>${esc(h.hardware)}</td><td>${energyBadge(h.is_estimate, h.meter)}</td><td>${esc(target)}</td>
       <td class="num">${esc(s.n)}</td><td class="num"><strong>${pct(s.median_abs_pct_error)}</strong></td>
       <td class="num">${pct(s.mean_abs_pct_error)}</td><td class="num">${pct(s.interval_coverage)}</td>
       <td class="num">${pct(s.baseline_median_abs_pct_error)}</td></tr>`)).join("");
    document.getElementById("cost-model-table").innerHTML = rows ? `<div class="table-wrap"><table class="grid">
      <thead><tr><th>Hardware</th><th>Meter</th><th>Predicts</th><th class="num">Trials</th><th class="num">Median error</th>
      <th class="num">Mean error</th><th class="num">In 10–90% interval</th><th class="num">Median-only baseline</th></tr></thead>
      <tbody>${rows}</tbody></table></div>` : "";
    if (d.note) document.getElementById("cost-model-note").textContent = d.note;
  }

  function drawFigures(figs) {
    if (!window.Plotly) return;
    for (const [id, fig] of Object.entries(figs)) {
      const el = document.getElementById("fig-" + id);
      if (!el) continue;
      Plotly.react(el, fig.data, fig.layout, plotConfig);
      if (id === "front" && !el.dataset.bound) {
        el.dataset.bound = "1";
        el.on("plotly_click", (ev) => {
          const p = ev.points && ev.points[0];
          if (p && p.customdata && p.customdata[0] !== null) window.location.href = `/studies/${enc(study)}/trials/${p.customdata[0]}`;
        });
      }
    }
  }

  function renderTrials() {
    if (!dashboard) return;
    const table = document.getElementById("trials-table");
    const text = document.getElementById("trial-filter").value.trim().toLowerCase();
    const state = document.getElementById("trial-state").value;
    const frontOnly = document.getElementById("trial-front").checked;
    let rows = dashboard.trials.filter((r) =>
      (!state || r.state === state) && (!frontOnly || r.on_front) && (whereRows === null || whereRows.has(r.number)));
    if (text) rows = rows.filter((r) => (JSON.stringify(r.values) + " " + r.state + " " + (r.fail_reason || "") + " " + r.candidate_text).toLowerCase().includes(text));
    const cols = columns();
    const col = cols.find((c) => c[0] === sortKey) || cols[0];
    rows.sort((a, b) => {
      const x = col[2](a), y = col[2](b);
      const xm = x === null || x === undefined || (typeof x === "number" && !isFinite(x));
      const ym = y === null || y === undefined || (typeof y === "number" && !isFinite(y));
      if (xm || ym) return xm === ym ? a.number - b.number : (xm ? 1 : -1);  // missing values last
      return (x < y ? -1 : x > y ? 1 : a.number - b.number) * sortDir;
    });
    table.querySelector("thead").innerHTML = "<tr>" + cols.map(([key, title]) =>
      `<th data-key="${key}" class="${key === sortKey ? (sortDir > 0 ? "asc" : "desc") : ""}" title="Sort">${esc(title)}</th>`).join("") + "</tr>";
    table.querySelector("tbody").innerHTML = rows.length
      ? rows.map((r) => `<tr class="${r.on_front ? "on-front" : ""}">${cols.map((c) => `<td class="${c[0] === "shape" || c[0] === "cost" ? "nowrap" : ""}">${c[3](r)}</td>`).join("")}</tr>`).join("")
      : `<tr><td colspan="${cols.length}" class="muted">No trial matches.</td></tr>`;
    document.getElementById("trial-count").textContent = `${rows.length} of ${dashboard.trials.length} trials`;
  }

  async function applyWhere() {
    const where = document.getElementById("trial-where").value.trim();
    const errorEl = document.getElementById("where-error");
    errorEl.textContent = "";
    if (!where) { whereRows = null; renderTrials(); return; }
    try {
      const rows = await getJSON(`/api/studies/${enc(study)}/trials?where=${enc(where)}`);
      whereRows = new Set(rows.map((r) => r.number));
    } catch (e) {
      errorEl.textContent = e.message;
      whereRows = new Set();
    }
    renderTrials();
  }

  async function refreshStudy() {
    const d = await getJSON(`/api/studies/${enc(study)}/dashboard`);
    const running = d.summary.status === "RUNNING" || (d.summary.launch && d.summary.launch.state === "running");
    if (d.version !== lastVersion) {
      lastVersion = d.version;
      dashboard = d;
      renderStats(d.summary, d.front.length, d.teacher);
      renderFidelity(d.fidelity);
      drawFigures(d.figures);
      drawCostModel();
      if (document.getElementById("trial-where").value.trim()) await applyWhere(); else renderTrials();
      app.dataset.version = d.version;
    }
    return running;
  }

  function initStudy() {
    document.querySelector("#trials-table thead").addEventListener("click", (ev) => {
      const th = ev.target.closest("th");
      if (!th) return;
      const key = th.dataset.key;
      if (key === sortKey) sortDir = -sortDir; else { sortKey = key; sortDir = key === "accuracy" || key === "test" || key === "front" || key === "acc_teacher" ? -1 : 1; }
      renderTrials();
    });
    document.getElementById("trial-filter").addEventListener("input", renderTrials);
    document.getElementById("trial-state").addEventListener("change", renderTrials);
    document.getElementById("trial-front").addEventListener("change", renderTrials);
    document.getElementById("trial-controls").addEventListener("submit", (ev) => { ev.preventDefault(); applyWhere(); });
    poll(refreshStudy);
  }

  // --------------------------------------------------------------------------------------- trial page
  function renderTrial(t) {
    const st = document.getElementById("trial-state");
    st.className = `badge state-${t.state.toLowerCase()}`;
    st.textContent = t.state;
    const fr = document.getElementById("trial-front");
    fr.hidden = !t.on_front;
    fr.textContent = t.noise === "tied" ? "Pareto front (tied within noise)" : "Pareto front";
    document.getElementById("trial-candidate-text").textContent = t.candidate_text + (t.fail_reason ? ` — ${t.fail_reason}` : "");
    const v = t.values, o = t.objectives || {};
    const inf = t.result && t.result.inference;
    document.getElementById("trial-metrics").innerHTML = kvTable([
      ["Test accuracy (reported, never selected on)", fmtPct(v.test_accuracy)],
      ["Test macro F1", fmtPct(v.test_macro_f1)],
      ["Dev accuracy (selected on)", fmtPct(v.accuracy)],
      ["Dev macro F1", fmtPct(v.macro_f1)],
      ["Dev majority-class rate", fmtPct(v.majority_accuracy)],
      ["Dev accuracy at rungs (mid-training)", (t.rung_accuracies || []).length
        ? esc(t.rung_accuracies.map((r) => `step ${r.step}: ${fmtPct(r.accuracy)}`).join(" · ")) : "–"],
      ["Energy per sample", `${fmtNum(v.energy_per_sample_j)} J ${t.meter ? energyBadge(t.is_estimate, t.meter) : ""}`],
      ["Energy per sample, idle-corrected", `${fmtNum(v.energy_per_sample_net_j)} J`],
      ["Latency p50 / p95", `${fmtNum(v.latency_p50_ms, 3)} / ${fmtNum(v.latency_p95_ms, 3)} ms`],
      ["Throughput", `${fmtNum(o.throughput_samples_s, 1)} samples/s`],
      ["Parameters", fmtNum(v.params, 0)],
      ["Size", isNum(v.size_bytes) ? fmtNum(v.size_bytes / 1024, 1) + " KiB" : "–"],
      ["FLOPs per sample", fmtNum(v.flops_per_sample)],
      ["Measured as", inf ? esc(`${inf.serving_form}, ${inf.dtype}, batch ${inf.batch_size} × seq ${inf.seq_len}, ${inf.n_windows} windows of ${inf.window_s} s, CV ${fmtNum(inf.cv, 3)}`) : "–"],
      ["Kernels", esc((t.result && t.result.kernels) || "–")],
      ["Hardware", esc(t.hardware || "–")],
    ].concat(t.teacher ? [
      ["Teacher (reference)", `${esc(t.teacher.name)}: dev ${fmtPct(t.teacher.accuracy)}, ${fmtNum(t.teacher.energy_per_sample_j)} J ${t.teacher.meter ? energyBadge(t.teacher.is_estimate, t.teacher.meter) : ""}`],
      ["Dev accuracy / teacher's", fmtRatio(t.teacher_ratios.accuracy_ratio_to_teacher)],
      ["J/sample / teacher's", fmtRatio(t.teacher_ratios.energy_ratio_to_teacher) + (t.teacher_ratios.teacher_ratio_note ? ` <span class="muted small">${esc(t.teacher_ratios.teacher_ratio_note)}</span>` : "")],
    ] : []));
    const c = t.cost;
    document.getElementById("trial-cost").innerHTML = c ? "<h3>What this trial cost the search</h3>" + kvTable([
      ["Training and distillation", fmtJ(c.train_energy_j)],
      ["Measurement", fmtJ(c.measure_energy_j)],
      ["Meter", energyBadge(c.is_estimate, c.meter)],
      ["CO₂eq", isNum(c.co2eq_g) ? fmtNum(c.co2eq_g, 4) + " g" : "–"],
      ["Wall time", fmtS(c.wall_s)],
    ]) : "";
    const readings = t.readings || [];
    document.getElementById("trial-readings").innerHTML = readings.length ? `<div class="table-wrap"><table class="grid readings">
      <thead><tr><th>Kind</th><th>Meter</th><th>Exclusive</th><th class="num">Energy</th><th class="num">J/sample</th><th class="num">J/sample net</th><th class="num">Idle W</th><th class="num">CV</th><th class="num">Duration</th><th class="num">CO₂eq</th><th>Hardware</th><th>Provenance</th></tr></thead>
      <tbody>${readings.map((r) => `<tr class="${r.is_estimate ? "estimate" : ""}">
        <td>${esc(r.kind)}</td><td>${energyBadge(r.is_estimate, r.meter)}</td><td>${r.exclusive ? "yes" : "shared"}</td>
        <td class="num">${fmtJ(r.energy_j)}</td><td class="num">${fmtNum(r.energy_per_sample_j)}</td><td class="num">${fmtNum(r.energy_per_sample_net_j)}</td>
        <td class="num">${fmtNum(r.idle_w, 1)}</td><td class="num">${fmtNum(r.cv, 3)}</td><td class="num">${fmtS(r.duration_s)}</td>
        <td class="num">${isNum(r.co2eq_g) ? fmtNum(r.co2eq_g, 4) + " g" : "–"}</td><td>${esc(r.hardware_fingerprint || "–")}${r.origin === "remeasure" ? ` <span class="badge" title="measured again on this machine by nas remeasure">re-measured</span>` : ""}</td>
        <td><details><summary>show</summary><pre>${esc(JSON.stringify(r.provenance, null, 2))}</pre></details></td></tr>`).join("")}</tbody></table></div>`
      : `<p class="muted">No energy reading recorded${t.state === "RUNNING" ? " yet" : ""}.</p>`;
    const flat = Object.entries(v).filter(([k]) => ["n_layers", "d_model", "n_heads", "d_ffn", "attention", "window", "k", "weight_bits",
      "embedding_bits", "attention_bits", "ffn_bits", "quant_scheme", "sparsity", "sparsity_amount", "distill", "pooling"].includes(k));
    document.getElementById("trial-candidate").innerHTML = kvTable(flat.map(([k, x]) => [k, esc(x === null ? "–" : x)])) +
      `<details><summary>Candidate JSON (hash ${esc((t.candidate_hash || "").slice(0, 12))})</summary><pre>${esc(JSON.stringify(t.candidate, null, 2))}</pre></details>`;
    const arts = t.artefacts || [];
    const prov = inf && inf.provenance;
    document.getElementById("trial-artefacts").innerHTML =
      (arts.length ? kvTable(arts.map((a) => [a.kind, `${esc(a.name)} <span class="muted">${isNum(a.size_bytes) ? fmtNum(a.size_bytes / 1024, 1) + " KiB" : ""}</span>`])) : `<p class="muted">No artefacts recorded.</p>`) +
      (prov ? `<h3>Inference provenance</h3>` + kvTable([
        ["Device", esc(`${prov.device_name || prov.device} (${prov.device})`)],
        ["Driver", esc(prov.driver_version || "–")], ["Power limit", prov.power_limit_w ? esc(prov.power_limit_w + " W") : "–"],
        ["Temperature before / after", `${fmtNum(prov.temperature_before_c, 1)} / ${fmtNum(prov.temperature_after_c, 1)} °C`],
        ["SM clock", prov.sm_clock_mhz ? esc(prov.sm_clock_mhz + " MHz") : "–"],
        ["Software", esc(Object.entries(prov.versions || {}).map(([k, x]) => `${k} ${x}`).join(", ") || "–")],
        ["Host", esc(prov.host_id || "–")],
        ["Not available", esc(Object.entries(prov.absent || {}).map(([k, x]) => `${k}: ${x}`).join("; ") || "–")],
      ]) : "");
    document.getElementById("export-button").disabled = t.state !== "COMPLETE";
    if (t.state !== "COMPLETE") document.getElementById("export-status").textContent = "Only complete trials can be exported.";
  }

  async function refreshTrial() {
    const t = await getJSON(`/api/studies/${enc(study)}/trials/${enc(trial)}`);
    renderTrial(t);
    return t.state === "RUNNING";
  }

  function initTrial() {
    document.getElementById("export-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const button = document.getElementById("export-button");
      const status = document.getElementById("export-status");
      const fmt = document.getElementById("export-format").value;
      button.disabled = true;
      status.textContent = "Exporting… (this can take a minute)";
      try {
        const r = await fetch(`/api/studies/${enc(study)}/trials/${enc(trial)}/export?format=${enc(fmt)}`,
          // The server refuses state-changing requests that are not JSON-typed (a guard against
          // cross-site forms); this one has no body, so only the header is sent.
          {method: "POST", credentials: "same-origin", headers: {"Content-Type": "application/json", "Accept": "application/zip"}});
        if (!r.ok) {
          let detail = r.statusText;
          try { detail = (await r.json()).detail; } catch (e) { /* not JSON */ }
          throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
        }
        const blob = await r.blob();
        const a = document.createElement("a");
        a.href = URL.createObjectURL(blob);
        a.download = `${study}-trial${trial}-${fmt}.zip`;
        document.body.appendChild(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(a.href), 10000);
        status.textContent = `Downloaded ${a.download} (${fmtNum(blob.size / 1024, 1)} KiB).`;
      } catch (e) {
        status.innerHTML = `<span class="error">Export failed: ${esc(e.message)}</span>`;
      } finally {
        button.disabled = false;
      }
    });
    poll(refreshTrial);
  }

  // ---------------------------------------------------------------------------------------------- boot
  if (page === "studies") {
    poll(async () => {
      try { return renderStudies(await getJSON("/api/studies")); }
      catch (e) {
        document.querySelector("#studies-table tbody").innerHTML =
          `<tr><td colspan="8" class="error">Cannot read the studies: ${esc(e.message)}</td></tr>`;
        throw e;
      }
    });
  }
  else if (page === "study") initStudy();
  else if (page === "trial") initTrial();
})();
