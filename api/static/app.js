// Dashboard entry point: loads runs, then the selected run's metrics, checkpoints, models,
// evaluations and jobs through the public API, and refreshes them while the page stays open.
import { api, enc } from "./js/api.js";
import * as charts from "./js/charts.js";
import { $, code, fillSelect, h, setState } from "./js/dom.js";
import { METRICS, formatLoss, formatMetric, formatNumber, formatTokens, metricValue } from "./js/format.js";
import { initGridForm, showGrids, syncGridCurves } from "./js/grids.js";
import { initForm, showJobs } from "./js/jobs.js";
import { initPolicyForm, showPolicies } from "./js/policies.js";
import { renderFrontier, renderPairs } from "./js/research.js";
import { renderBench } from "./js/bench.js";
import { buildPoints, curveLabel } from "./js/variants.js";

const REFRESH_MS = 15000;
const state = { runs: [], run: null, data: null, points: [], point: null, variant: null };

// Selection lives in the URL hash so a reload or a shared link shows the same view.
function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  return { run: p.get("run"), point: p.get("point") && Number(p.get("point")), variant: p.get("variant") };
}
function writeHash() {
  const p = new URLSearchParams();
  if (state.run) p.set("run", state.run);
  if (state.point !== null) p.set("point", String(state.point));
  if (state.variant) p.set("variant", state.variant);
  history.replaceState(null, "", `#${p}`);
}

const startHelp = () => [
  ["Start pre-training with ", code("wsm train --config demo"), ", or bring up the whole ",
    "embedded service (trainer, worker, API) with ", code("wsm up"), "."],
  "Runs appear here as soon as the trainer registers them; this page refreshes by itself.",
];

async function checkHealth() {
  const pill = $("#health");
  try {
    // A degraded service answers 503 with the same body; show which part is down.
    const health = await api("healthz").catch((err) => { if (err.body?.status) return err.body; throw err; });
    pill.dataset.state = health.status === "ok" ? "ok" : "down";
    pill.textContent = health.status === "ok" ? "API ok" : `degraded: ${!health.store.ok ? "store" : "broker"}`;
    pill.title = `store: ${health.store.detail}; broker: ${health.broker.detail}`;
  } catch (err) {
    pill.dataset.state = "down";
    pill.textContent = "API unreachable";
  }
}

function renderRuns() {
  const list = $("#run-list");
  if (!state.runs.length) {
    list.replaceChildren();
    setState("runs", "empty", "No runs yet", ...startHelp());
    return;
  }
  setState("runs", null);
  list.replaceChildren(...state.runs.map((run) => h("li", {},
    h("button", { type: "button", "aria-pressed": String(run.run === state.run), dataset: { run: run.run },
      onclick: () => selectRun(run.run) },
      h("span", { class: "run-name" }, run.run),
      h("span", { class: "small muted" }, `${formatTokens(run.latest_tokens)} tokens · ${run.checkpoints} checkpoints`),
      run.description ? h("span", { class: "small muted" }, run.description) : null))));
}

function renderStats(detail, series) {
  const last = series.train.at(-1);
  const stats = [
    ["tokens", formatTokens(detail.latest_tokens)], ["step", detail.latest_step ?? "–"],
    ["checkpoints", detail.checkpoints], ["loss", formatLoss(last?.loss ?? null)],
    ["LR", formatNumber(last?.lr ?? null, 3)],
  ];
  $("#run-stats").replaceChildren(...stats.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v))));
}

function renderTraining() {
  const { detail, series, checkpoints, models } = state.data;
  $("#training-title").textContent = `Pre-training · ${detail.run}`;
  renderStats(detail, series);
  if (!series.train.length) {
    setState("training", "empty", "No training metrics yet",
      "The trainer appends loss and LR records as it logs; they show here within a refresh.",
      checkpoints.length ? `${checkpoints.length} checkpoints are already in the store.` : "");
    return;
  }
  setState("training", null);
  const spans = models.filter((m) => m.window_start !== null && m.window_end !== null).map((m) => ({
    start: m.window_start, end: m.window_end, selected: m.id === state.variant, kind: m.kind,
    label: `${m.kind === "baseline" ? "real decay " : ""}${curveLabel(m.curve)} ${formatTokens(m.window_end - m.window_start)}` }));
  charts.trainingChart(series, checkpoints.map((c) => c.tokens), spans, state.data.branches);
}

const shortLabel = (row) => row.kind === "wso" ? "WSO" : row.kind === "baseline"
  ? `real decay ${row.curve} ${formatTokens(row.window)}`
  : `${row.curve} ${formatTokens(row.window)}${row.interval ? ` / ${formatTokens(row.interval)}` : ""}`;

function metricCell(row, metric, best) {
  const value = metricValue(row.eval?.metrics, metric);
  const isBest = value !== null && value === best;
  return h("td", { class: `num${isBest ? " best" : ""}`, dataset: { metric: metric.id, value: value ?? "" },
    title: row.eval ? null : "not evaluated yet" },
    formatMetric(value, metric), isBest ? h("span", { class: "sr-only" }, " (best)") : null);
}

function renderTable(rows) {
  const best = Object.fromEntries(METRICS.map((m) => {
    const values = rows.map((r) => metricValue(r.eval?.metrics, m)).filter((v) => v !== null);
    return [m.id, values.length > 1 ? (m.lower ? Math.min(...values) : Math.max(...values)) : null];
  }));
  $("#variants-table tbody").replaceChildren(...rows.map((row) => {
    const selectable = row.kind === "anneal";
    const name = selectable
      ? h("button", { type: "button", class: "link-button", onclick: () => selectVariant(row.key) }, row.label)
      : h("span", {}, row.label);
    return h("tr", { dataset: { key: row.key, kind: row.kind, selectable: selectable || null },
      "aria-selected": selectable ? String(row.key === state.variant) : null,
      onclick: selectable ? (e) => e.target.tagName !== "BUTTON" && selectVariant(row.key) : null },
      h("th", { scope: "row" }, h("span", { class: `kind kind-${row.kind}` }, row.kind), name),
      h("td", {}, row.curve), h("td", {}, row.window ? formatTokens(row.window) : "–"),
      h("td", {}, row.interval ? formatTokens(row.interval) : "–"),
      ...METRICS.map((m) => metricCell(row, m, best[m.id])));
  }));
}

function renderMetricCharts(rows) {
  const grid = $("#metric-charts");
  if (!grid.children.length) {
    grid.append(...METRICS.map((m) => h("figure", {},
      h("figcaption", { class: "small" }, `${m.label} ${m.lower ? "(lower is better)" : "(higher is better)"}`),
      h("div", { class: "chart-box" }, h("canvas", { id: `chart-metric-${m.id}`, role: "img",
        "aria-label": `${m.label} per model at this anneal point` })))));
  }
  // One row of dots per model: grow the charts with the number of variants instead of cramming them.
  const height = `${Math.max(190, 30 * rows.length + 50)}px`;
  for (const box of grid.querySelectorAll(".chart-box")) box.style.height = height;
  for (const m of METRICS) charts.metricChart(`chart-metric-${m.id}`, rows, m, (r) => metricValue(r.eval?.metrics, m));
}

function renderInversion(rows) {
  const yMetric = METRICS.find((m) => m.id === $("#inversion-y").value);
  const xOf = (r) => metricValue(r.eval?.metrics, METRICS[0]);
  const yOf = (r) => metricValue(r.eval?.metrics, yMetric);
  if (rows.filter((r) => xOf(r) !== null && yOf(r) !== null).length < 1) {
    setState("inversion", "empty", "No evaluations at this point yet",
      "Each anneal job with “Run the SFT evaluation” checked adds a point here, and the WSO checkpoint beside it.");
    return;
  }
  setState("inversion", null);
  charts.inversionChart(rows, yMetric, xOf, yOf);
}

function renderVariant(rows) {
  const anneals = rows.filter((r) => r.kind === "anneal");
  fillSelect($("#variant-select"), anneals.map((r) => [r.key, r.short]), state.variant);
  const row = anneals.find((r) => r.key === state.variant);
  if (!row) {
    setState("variant", "empty", "No merged variant at this point", "Request an anneal with the form to see its weights.");
    return;
  }
  setState("variant", null);
  $("#variant-title").textContent = `Merge: ${row.short}`;
  charts.weightsChart(row.model);
  // Both curves come from the API (theory computes them); the page does no curve math.
  charts.lrChart(row.model.lr_steps || [], row.model.target_curve);
}

function renderCompare() {
  const pointSelect = $("#point-select");
  fillSelect(pointSelect, state.points.map((p) => [String(p.tokens), `${formatTokens(p.tokens)} tokens`]),
    String(state.point));
  const point = state.points.find((p) => p.tokens === state.point);
  if (!point && !state.data.checkpoints.length) {
    setState("compare", "empty", "No checkpoints yet",
      "An anneal merges saved checkpoints; the trainer publishes the first one at its save interval.");
    for (const name of ["inversion", "variant"]) setState(name, "empty", "Nothing to compare yet", "Wait for checkpoints.");
    return;
  }
  if (!point) {
    // The API's suggestion (theory/suggest.py): a recent window, and from when the run is long enough.
    const s = state.data.detail?.suggestion;
    const example = s ? formatTokens(s.window) : "80B";
    setState("compare", "empty", "No annealed models yet",
      ["Request one with the form: pick a curve (1-sqrt is the paper's best) and a window, e.g. ",
        code(example), ". Or from a terminal: ",
        code(`wsm anneal --run ${state.run} --curve 1-sqrt --window ${example}`), ".",
        ...(s && !s.ready ? [` Not yet, though: ${s.reason}.`] : [])]);
    for (const name of ["inversion", "variant"]) setState(name, "empty", "Nothing to compare yet", "Request an anneal first.");
    return;
  }
  setState("compare", null);
  const rows = point.rows.map((r) => ({ ...r, short: shortLabel(r) }));
  renderTable(rows);
  renderBench($("#bench-table"), rows);
  renderMetricCharts(rows);
  renderInversion(rows);
  renderVariant(rows);
}

function recompute() {
  const { detail, checkpoints, models, evals } = state.data;
  state.points = buildPoints(detail.run, models, checkpoints, evals);
  if (!state.points.some((p) => p.tokens === state.point)) state.point = state.points.at(-1)?.tokens ?? null;
  const rows = state.points.find((p) => p.tokens === state.point)?.rows || [];
  if (!rows.some((r) => r.key === state.variant && r.kind === "anneal")) {
    state.variant = rows.find((r) => r.kind === "anneal")?.key ?? null;
  }
  writeHash();
  renderTraining();
  renderCompare();
  renderResearch();
}

function renderResearch() {
  const { frontier, comparison, policies, grids } = state.data;
  renderFrontier(frontier, state.run);
  renderPairs(comparison, state.run);
  showPolicies(policies, () => loadRun(state.run, { quiet: true }));
  showGrids(grids);
}

async function loadRun(run, { quiet = false } = {}) {
  if (!quiet) {
    setState("training", "loading", `Loading ${run}…`);
    setState("compare", "loading", "Loading models and evaluations…");
    for (const name of ["frontier", "pairs", "grids"]) setState(name, "loading", "Loading…");
  }
  const base = `runs/${enc(run)}`;
  try {
    // The chart reads the downsampled series; the run detail is wanted without its raw records.
    const [detail, series, cks, models, evals, jobs, branches, frontier, comparison, policies, grids] = await Promise.all([
      api(`${base}?metrics_limit=0`), api(`${base}/metrics/series?points=800`), api(`${base}/checkpoints`),
      api(`${base}/models`), api(`${base}/evals`), api(`anneal?run=${enc(run)}`), api(`${base}/branches`),
      api(`${base}/frontier`), api(`${base}/compare`), api(`policies?run=${enc(run)}`), api(`grids?run=${enc(run)}`),
    ]);
    if (run !== state.run) return; // the user switched runs meanwhile
    state.data = { detail, series, checkpoints: cks.checkpoints, models: models.models, evals: evals.evals,
      branches: branches.branches, frontier, comparison, policies: policies.policies, grids: grids.grids };
    showJobs(jobs.jobs, onJobDone);
    recompute();
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    $("#banner").hidden = true;
  } catch (err) {
    if (quiet && state.data) {
      showBanner(`Refresh failed: ${err.message}. Showing the last data; retrying every ${REFRESH_MS / 1000}s.`);
      return;
    }
    setState("training", "error", `Could not load run ${run}`, err.message,
      ["Check the service (", code("wsm up"), ") and ", h("button", { type: "button", class: "secondary",
        onclick: () => loadRun(run) }, "retry"), "."]);
    setState("compare", "error", "Could not load models and evaluations", err.message);
    for (const name of ["frontier", "pairs", "grids"]) setState(name, "error", "Could not load this run", err.message);
  }
}

function showBanner(text) {
  $("#banner").textContent = text;
  $("#banner").hidden = false;
}

function selectRun(run) {
  if (run === state.run) return;
  Object.assign(state, { run, data: null, point: null, variant: null });
  renderRuns();
  loadRun(run);
}

function selectVariant(key) {
  state.variant = key;
  writeHash();
  renderTraining();
  renderCompare();
}

/** A followed job ended: reload the run; show the new model if this tab requested it. */
function onJobDone(job, requestedHere) {
  if (job.run !== state.run) return;
  if (requestedHere && job.state === "done") {
    state.variant = job.model_id;
    state.point = job.selection.window_end;
  }
  loadRun(state.run, { quiet: true });
}

async function loadRuns({ quiet = false } = {}) {
  try {
    state.runs = (await api("runs")).runs;
  } catch (err) {
    if (quiet) return showBanner(`Refresh failed: ${err.message}`);
    setState("runs", "error", "Cannot reach the wsm API", err.message,
      ["Start it with ", code("wsm serve"), " (API only) or ", code("wsm up"), " (everything), then ",
        h("button", { type: "button", class: "secondary", onclick: () => loadRuns() }, "retry"), "."]);
    setState("training", "error", "No data", "The run list could not be loaded.");
    setState("compare", "error", "No data", "The run list could not be loaded.");
    for (const name of ["frontier", "pairs", "grids"]) setState(name, "error", "No data", "The run list could not be loaded.");
    return;
  }
  const wanted = state.run || readHash().run;
  const run = state.runs.find((r) => r.run === wanted)?.run
    ?? [...state.runs].sort((a, b) => (b.latest_tokens ?? -1) - (a.latest_tokens ?? -1))[0]?.run ?? null;
  if (!run) {
    renderRuns();
    setState("training", "empty", "Nothing is training yet", ...startHelp());
    setState("compare", "empty", "No annealed models yet", "Once a run has checkpoints, request an anneal with the form.");
    for (const name of ["inversion", "variant"]) setState(name, "empty", "Nothing to compare yet", "Start a run first.");
    for (const name of ["frontier", "pairs", "grids"]) setState(name, "empty", "Nothing yet", "Start a run first.");
    return;
  }
  const changed = run !== state.run;
  state.run = run;
  renderRuns();
  await loadRun(run, { quiet: quiet && !changed });
}

function init() {
  const hash = readHash();
  Object.assign(state, { point: hash.point, variant: hash.variant });
  setState("runs", "loading", "Loading runs…");
  $("#point-select").addEventListener("change", (e) => {
    state.point = Number(e.target.value);
    state.variant = null;
    recompute();
  });
  $("#variant-select").addEventListener("change", (e) => selectVariant(e.target.value));
  $("#inversion-y").addEventListener("change", () => renderCompare());
  initForm(() => state.run, onJobDone);
  const reload = () => loadRun(state.run, { quiet: true });
  initPolicyForm(() => state.run, reload);
  initGridForm(() => state.run, reload);
  new MutationObserver(syncGridCurves).observe($("#f-curve"), { childList: true });
  syncGridCurves();
  $("#frontier-metric").addEventListener("change", () => renderFrontier(state.data.frontier, state.run));
  $("#pairs-metric").addEventListener("change", () => renderPairs(state.data.comparison, state.run));
  checkHealth();
  loadRuns();
  setInterval(() => {
    if (document.hidden) return; // a background tab does not poll the store
    checkHealth();
    loadRuns({ quiet: true });
  }, REFRESH_MS);
}

// Chart.js is a deferred classic script; module scripts run after it, so `Chart` is defined here.
init();
