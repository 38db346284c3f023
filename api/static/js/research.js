// The annealed frontier and merge-against-real-decay sections. Every number shown comes from the
// API (GET /runs/{run}/frontier and /compare, computed by anneal/frontier.py and anneal/pairing.py).
import * as charts from "./charts.js";
import { $, code, fillSelect, h, setState } from "./dom.js";
import { formatMeasure, formatTokens, metricLabel } from "./format.js";

const DEFAULT_METRIC = "pretrain_val_loss";

/** Keep the chosen metric if the data still has it, else the pre-training loss, else the first. */
function chooseMetric(select, metrics) {
  const current = select.value;
  const chosen = metrics.includes(current) ? current : metrics.includes(DEFAULT_METRIC) ? DEFAULT_METRIC : metrics[0];
  fillSelect(select, metrics.map((m) => [m, metricLabel(m)]), chosen);
  return chosen;
}

export function renderFrontier(frontier, run) {
  const metrics = frontier.metrics.filter((m) => [...frontier.wso, ...frontier.trainer].some((p) => p.metrics[m])
    || frontier.series.some((s) => s.points.some((p) => p.metrics[m])));
  if (!metrics.length) {
    fillSelect($("#frontier-metric"), [], null);
    setState("frontier", "empty", "Nothing measured yet",
      "The WSO curve appears with the trainer's first validation loss; annealed points with the first evaluated anneal.");
    return;
  }
  setState("frontier", null);
  const metric = chooseMetric($("#frontier-metric"), metrics);
  charts.frontierChart(frontier, metric, frontier.lower_is_better[metric] ?? null);
  const anneals = frontier.series.filter((s) => s.kind === "anneal");
  $("#frontier-note").replaceChildren(anneals.length
    ? `${anneals.length} annealed variant(s), ${anneals.reduce((n, s) => n + s.points.length, 0)} anneal point(s). `
      + "A point below the WSO curve is what stopping and decaying there would give."
    : h("span", {}, "No annealed points yet: create a policy (right) to anneal at every interval while training runs, or ",
      code(`wsm anneal --run ${run} --window …`), "."));
}

const noiseBadge = (stats) => {
  if (stats.within_noise === null) {
    return h("span", { class: "badge badge-unknown", title: "No estimate: evaluate neighbouring checkpoints or repeat with other seeds" }, "no noise estimate");
  }
  const title = `noise ${stats.noise.toPrecision(3)} from ${stats.noise_from === "seeds" ? "repeated seeds" : "neighbouring WSO checkpoints"}`;
  return stats.within_noise
    ? h("span", { class: "badge badge-warn", title }, "within noise")
    : h("span", { class: "badge badge-ok", title }, "above noise");
};

const pairLabel = (row) => `${row.curve} ${formatTokens(row.window)}${row.interval ? ` / ${formatTokens(row.interval)}` : ""} @ ${formatTokens(row.window_end)}`;

/** Chart labels, unique: two merges of one window (other checkpoints) get their digest appended. */
function uniqueLabels(rows) {
  const labels = rows.map(pairLabel);
  return new Map(rows.map((row, i) => [row.model_id,
    labels.indexOf(labels[i]) === labels.lastIndexOf(labels[i]) ? labels[i] : `${labels[i]} #${row.name.slice(-4)}`]));
}

export function renderPairs(comparison, run) {
  const rows = comparison.rows;
  if (!rows.length) {
    fillSelect($("#pairs-metric"), [], null);
    const hint = comparison.unpaired
      ? [`${comparison.unpaired} merge(s) have no real-decay twin yet. Train one over the same window and curve: `,
        code(`wsm train branch --run ${run} --from <window start> --window <width> --curve <curve>`), "."]
      : ["Anneal first (form above or a policy), then train the real decay of the same window with ",
        code(`wsm train branch --run ${run}`), "."];
    setState("pairs", "empty", "No merge has a real-decay twin yet", hint);
    return;
  }
  setState("pairs", null);
  const metrics = comparison.metrics.filter((m) => rows.some((r) => r.metrics[m]));
  const metric = chooseMetric($("#pairs-metric"), metrics);
  $("#pairs-table tbody").replaceChildren(...rows.map((row) => {
    const s = row.metrics[metric];
    const cell = (content, cls = "num") => h("td", { class: cls }, content);
    if (!s) {
      return h("tr", { dataset: { model: row.model_id } }, h("th", { scope: "row" }, pairLabel(row)),
        h("td", { colspan: 7, class: "muted" }, `no ${metricLabel(metric)} for this pair yet`));
    }
    return h("tr", { dataset: { model: row.model_id, within: String(s.within_noise) } },
      h("th", { scope: "row" }, h("span", { class: "kind kind-anneal" }, "merge"), `${row.curve} `,
        h("span", { class: "muted small" }, `${formatTokens(row.window)}${row.interval ? ` / ${formatTokens(row.interval)}` : ""}, ${row.checkpoints} ckpts`)),
      cell(formatTokens(row.window_end), ""),
      cell(formatMeasure(metric, s.wso)),
      h("td", { class: "num", dataset: { role: "merge", value: s.merge?.mean ?? "" } }, formatMeasure(metric, s.merge)),
      h("td", { class: "num", dataset: { role: "decay", value: s.decay?.mean ?? "" },
        title: row.decay_models.join(", ") }, h("span", { class: "muted small" }, `${row.curve}: `), formatMeasure(metric, s.decay)),
      h("td", { class: "num", dataset: { role: "gap", value: s.gap_pct ?? "" } },
        s.gap_pct === null ? "–" : `${s.gap_pct >= 0 ? "+" : ""}${s.gap_pct.toFixed(2)}%${s.gap_pct_sd !== null ? ` ± ${s.gap_pct_sd.toFixed(2)}` : ""}`),
      h("td", { class: "num", dataset: { role: "recovered", value: s.recovered ?? "" } },
        s.recovered === null ? "–" : `${Math.round(s.recovered * 100)}%`),
      h("td", {}, noiseBadge(s)));
  }));
  $("#pairs-note").textContent = `Gap = (merge − decay) / |decay|. Recovered = the share of the WSO → decay difference the merge recovers. `
    + `Within noise: |WSO − decay| ≤ ${comparison.noise_sigmas}× the noise (spread of neighbouring WSO checkpoints about their trend, or across seeds), `
    + "so the recovered share means little. Error bars: ± one standard deviation over seeds and repeated evaluations."
    + (comparison.unpaired ? ` ${comparison.unpaired} merge(s) have no twin yet.` : "")
    + (comparison.evals_excluded ? ` ${comparison.evals_excluded} evaluation(s) made with another configuration are left out.` : "");
  const box = $("#chart-pairs").parentElement;
  box.style.height = `${Math.max(200, 44 * rows.length + 90)}px`;
  const labels = uniqueLabels(rows);
  charts.pairChart(rows, metric, (row) => labels.get(row.model_id));
}
