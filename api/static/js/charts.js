// Chart.js (vendored UMD build, global `Chart`) wrappers. Every canvas gets data attributes
// (data-points, data-values) so tests and scripts can check what was drawn without reading pixels.
// Every value drawn comes from the API; these functions only place it (no curve math here).
import { formatLoss, formatNumber, formatTokens, formatValue, metricLabel } from "./format.js";

export const COLORS = {
  loss: "#17202e", val: "#d9480f", lr: "#2b8a3e", checkpoint: "#556173",
  wso: "#b3261e", anneal: "#1f5fd1", baseline: "#a15c00", target: "#8a96a8",
  span: "rgba(31, 95, 209, 0.07)", spanSelected: "rgba(31, 95, 209, 0.2)",
};
// Series colours for several variants on one chart (colour-blind safe, Okabe-Ito based).
export const PALETTE = ["#1f5fd1", "#009e73", "#8e44ad", "#cc79a7", "#0072b2", "#56b4e9", "#e69f00", "#3d5a80"];

const charts = new Map();

function defaults() {
  const d = Chart.defaults;
  d.animation = false; // live refresh every few seconds: no re-animation, no flicker
  d.maintainAspectRatio = false;
  d.responsive = true;
  d.font.family = getComputedStyle(document.body).fontFamily;
  d.font.size = 12;
  d.color = "#344054";
  d.borderColor = "#e4e9f1";
  d.plugins.legend.labels.boxWidth = 12;
  d.plugins.legend.labels.usePointStyle = true;
}

const tokenAxis = (title) => ({
  type: "linear",
  title: { display: !!title, text: title },
  ticks: { callback: (v) => formatTokens(v), maxTicksLimit: 8 },
});

/** A y (or x) axis for a metric: losses tick with three decimals. */
const metricAxis = (name, extra = {}) => ({
  ...extra, ticks: { maxTicksLimit: 6, ...(extra.ticks || {}), callback: (v) => formatValue(name, v) },
});

/** Say why a chart is empty instead of drawing bare axes; returns true if it was empty. */
function showEmpty(canvas, message) {
  const box = canvas.parentElement;
  let note = box.querySelector(".chart-empty");
  if (!message) {
    note?.remove();
    canvas.hidden = false;
    return false;
  }
  if (!note) {
    note = document.createElement("p");
    note.className = "chart-empty";
    box.append(note);
  }
  note.textContent = message;
  canvas.hidden = true;
  return true;
}

/**
 * Create or update the chart on canvas #id; `points` is recorded on the canvas for assertions.
 * With no points the chart is removed and `empty` (what to do to get data) shown in its place.
 */
function draw(id, config, points, values, empty = "No data yet.") {
  if (!charts.size) defaults();
  const canvas = document.getElementById(id);
  canvas.dataset.points = String(points);
  if (values) canvas.dataset.values = JSON.stringify(values);
  let chart = charts.get(id);
  if (showEmpty(canvas, points ? null : empty)) {
    chart?.destroy();
    charts.delete(id);
    return null;
  }
  if (chart && chart.config.type === config.type) {
    chart.data = config.data;
    chart.options = config.options;
    chart.update("none");
  } else {
    chart?.destroy();
    chart = new Chart(canvas, config);
    charts.set(id, chart);
  }
  return chart;
}

/** "SFT val loss ↓": short enough for a phone's axis. */
const axisTitle = (metric, lower) => `${metricLabel(metric)}${lower === true ? " ↓" : lower === false ? " ↑" : ""}`;

/** Legends below the chart, compact on a phone so the plot keeps its height. */
const legend = () => (window.innerWidth < 560
  ? { position: "bottom", labels: { boxWidth: 8, boxHeight: 8, padding: 6, font: { size: 10 } } }
  : { position: "bottom" });

const LANE = 15;

/**
 * Lanes for the window labels: each label goes to the first lane where neither its bar nor its
 * text touches another's, so labels never overlap however many windows there are. A label is
 * moved left to stay inside the plot; one that fits no lane in the top third is left out.
 */
export function layoutLabels(ctx, area, x, spans) {
  const maxLanes = Math.max(1, Math.floor(area.height / 3 / LANE));
  const lanes = []; // right edge (px) of what each lane holds so far
  const placed = [];
  const order = spans.map((span, i) => ({ span, i, left: Math.max(area.left, x.getPixelForValue(span.start)) }))
    .sort((a, b) => a.left - b.left || b.span.selected - a.span.selected);
  for (const { span, left } of order) {
    const right = Math.min(area.right, x.getPixelForValue(span.end));
    const width = ctx.measureText(span.label).width;
    const textX = Math.max(area.left, Math.min(left + 3, area.right - width - 2));
    const x0 = Math.min(left, textX);
    const x1 = Math.max(right, textX + width);
    let lane = lanes.findIndex((edge) => edge + 6 <= x0);
    if (lane < 0 && lanes.length < maxLanes) lane = lanes.push(-Infinity) - 1;
    if (lane < 0) {
      placed.push({ span, lane: null, left, right, textX, x0, x1 });
      continue;
    }
    lanes[lane] = x1;
    placed.push({ span, lane, left, right, textX, x0, x1 });
  }
  return placed;
}

// Anneal windows as shaded bands with label lanes at the top, checkpoints as ticks on the x axis.
const overlays = {
  id: "wsmOverlays",
  beforeDatasetsDraw(chart, _args, opts) {
    const { ctx, chartArea: area, scales: { x } } = chart;
    ctx.save();
    // Merge windows are shaded; a real decay branch (baseline) only gets its lane bar and fork
    // line, so overlapping windows stay readable.
    for (const span of (opts.spans || []).filter((s) => s.kind !== "baseline")) {
      const left = Math.max(area.left, x.getPixelForValue(span.start));
      const right = Math.min(area.right, x.getPixelForValue(span.end));
      ctx.fillStyle = span.selected ? COLORS.spanSelected : COLORS.span;
      ctx.fillRect(left, area.top, right - left, area.height);
    }
    ctx.restore();
  },
  afterDatasetsDraw(chart, _args, opts) {
    const { ctx, chartArea: area, scales: { x } } = chart;
    ctx.save();
    ctx.fillStyle = COLORS.checkpoint;
    for (const t of opts.checkpoints || []) {
      const px = x.getPixelForValue(t);
      if (px < area.left - 1 || px > area.right + 1) continue;
      ctx.beginPath();
      ctx.moveTo(px, area.bottom - 7);
      ctx.lineTo(px - 4, area.bottom);
      ctx.lineTo(px + 4, area.bottom);
      ctx.fill();
    }
    ctx.font = "11px " + Chart.defaults.font.family;
    const placed = layoutLabels(ctx, area, x, opts.spans || []);
    for (const p of placed) {
      const color = p.span.kind === "baseline" ? COLORS.baseline : COLORS.anneal;
      ctx.fillStyle = color;
      if (p.span.kind === "baseline") ctx.fillRect(p.left, area.top, 1, area.height); // the fork point
      if (p.lane === null) continue;
      const y = area.top + 4 + p.lane * LANE;
      ctx.globalAlpha = p.span.selected || p.span.kind === "baseline" ? 1 : 0.55;
      ctx.fillRect(p.left, y, Math.max(2, p.right - p.left), 3);
      ctx.globalAlpha = 1;
      ctx.fillText(p.span.label, p.textX, y + 13);
    }
    chart.canvas.dataset.labels = JSON.stringify(placed.map((p) => ({
      label: p.span.label, lane: p.lane, x0: Math.round(p.x0), x1: Math.round(p.x1) })));
    ctx.restore();
  },
};

// Error bars from the API's spread (± one standard deviation): `yMin/yMax` or `xMin/xMax` per point.
const errorBars = {
  id: "wsmErrorBars",
  afterDatasetsDraw(chart) {
    const { ctx, scales } = chart;
    ctx.save();
    ctx.lineWidth = 1.5;
    chart.data.datasets.forEach((ds, i) => {
      const meta = chart.getDatasetMeta(i);
      if (meta.hidden) return;
      ctx.strokeStyle = ds.borderColor;
      meta.data.forEach((el, j) => {
        const p = ds.data[j];
        if (!p || typeof p !== "object") return;
        if (p.yMin !== undefined && p.yMax !== undefined) {
          const [a, b] = [scales.y.getPixelForValue(p.yMin), scales.y.getPixelForValue(p.yMax)];
          ctx.beginPath();
          ctx.moveTo(el.x, a); ctx.lineTo(el.x, b);
          ctx.moveTo(el.x - 4, a); ctx.lineTo(el.x + 4, a);
          ctx.moveTo(el.x - 4, b); ctx.lineTo(el.x + 4, b);
          ctx.stroke();
        }
        if (p.xMin !== undefined && p.xMax !== undefined) {
          const [a, b] = [scales.x.getPixelForValue(p.xMin), scales.x.getPixelForValue(p.xMax)];
          ctx.beginPath();
          ctx.moveTo(a, el.y); ctx.lineTo(b, el.y);
          ctx.moveTo(a, el.y - 4); ctx.lineTo(a, el.y + 4);
          ctx.moveTo(b, el.y - 4); ctx.lineTo(b, el.y + 4);
          ctx.stroke();
        }
      });
    });
    ctx.restore();
  },
};

// Text next to each scatter point (which variant it is).
const pointLabels = {
  id: "wsmPointLabels",
  afterDatasetsDraw(chart) {
    const { ctx } = chart;
    ctx.save();
    ctx.font = "11px " + Chart.defaults.font.family;
    ctx.fillStyle = "#344054";
    chart.data.datasets.forEach((ds, i) => {
      chart.getDatasetMeta(i).data.forEach((el, j) => {
        const label = ds.data[j].label;
        if (label) ctx.fillText(label, el.x + 8, el.y - 6);
      });
    });
    ctx.restore();
  },
};

/**
 * `series`: GET /runs/{run}/metrics/series (already downsampled by the API); `branches`: GET
 * /runs/{run}/branches, each real-decay branch's own loss and LR placed from its fork point.
 */
export function trainingChart(series, checkpoints, spans, branches = []) {
  const loss = series.train.map((r) => ({ x: r.tokens, y: r.loss }));
  const val = series.val.map((r) => ({ x: r.tokens, y: r.val_loss }));
  const lr = series.train.filter((r) => r.lr !== null).map((r) => ({ x: r.tokens, y: r.lr }));
  const line = { parsing: false, pointRadius: 0, borderWidth: 1.6, tension: 0 };
  const branchSets = branches.flatMap((b) => {
    const name = `real decay ${b.curve} from ${formatTokens(b.fork_tokens)}`;
    const bLoss = b.points.filter((p) => p.loss !== null).map((p) => ({ x: p.tokens, y: p.loss }));
    const bLr = b.points.filter((p) => p.lr !== null).map((p) => ({ x: p.tokens, y: p.lr }));
    // One legend entry for all branches (the tooltip names each): many branches must not bury the chart.
    return [
      bLoss.length ? { ...line, label: "real decay loss", wsmName: `${name} · loss`, data: bLoss,
        borderColor: COLORS.baseline, backgroundColor: COLORS.baseline, pointRadius: bLoss.length < 30 ? 2 : 0,
        yAxisID: "y", wsmBranch: b.model_id } : null,
      bLr.length ? { ...line, label: "real decay LR", wsmName: `${name} · LR`, data: bLr, borderColor: COLORS.baseline,
        borderDash: [2, 3], yAxisID: "lr", wsmBranch: b.model_id } : null,
    ].filter(Boolean);
  });
  const chart = draw("chart-training", {
    type: "line",
    data: {
      datasets: [
        { ...line, label: "train loss", data: loss, borderColor: COLORS.loss, yAxisID: "y" },
        { ...line, label: "val loss", data: val, borderColor: COLORS.val, backgroundColor: COLORS.val,
          pointRadius: 3, showLine: val.length > 1, borderWidth: 1.2, yAxisID: "y" },
        { ...line, label: "LR", data: lr, borderColor: COLORS.lr, borderDash: [5, 4], yAxisID: "lr" },
        ...branchSets,
      ],
    },
    options: {
      interaction: { mode: "nearest", axis: "x", intersect: false },
      scales: {
        x: tokenAxis("tokens"),
        y: { title: { display: true, text: "loss" }, ticks: { callback: (v) => formatLoss(v) } },
        lr: { position: "right", grid: { drawOnChartArea: false }, beginAtZero: true,
          title: { display: true, text: "learning rate" }, ticks: { callback: (v) => formatNumber(v, 2) } },
      },
      plugins: {
        tooltip: { callbacks: {
          title: (items) => `${formatTokens(items[0].parsed.x)} tokens`,
          label: (item) => `${item.dataset.wsmName ?? item.dataset.label}: ${item.dataset.yAxisID === "lr" ? formatNumber(item.parsed.y, 3) : formatLoss(item.parsed.y)}`,
        } },
        legend: { labels: { filter: (item, data) =>
          data.datasets.findIndex((d) => d.label === item.text) === item.datasetIndex } },
        wsmOverlays: { spans, checkpoints },
      },
    },
    plugins: [overlays],
  }, loss.length, null, "No training metrics yet.");
  const canvas = document.getElementById("chart-training");
  canvas.dataset.branches = JSON.stringify(branches.map((b) => ({ id: b.model_id, fork: b.fork_tokens,
    first: b.points[0]?.tokens ?? null, lr: b.points.filter((p) => p.lr !== null).length,
    loss: b.points.filter((p) => p.loss !== null).length })));
  return chart;
}

const KIND_COLOR = (row) => COLORS[row.kind];

/** A long category label on two lines (Chart.js draws an array as lines) instead of cut off. */
const twoLines = (text) => {
  if (text.length <= 16) return text;
  const middle = text.lastIndexOf(" ", Math.ceil(text.length / 2));
  return middle > 0 ? [text.slice(0, middle), text.slice(middle + 1)] : text;
};

export function metricChart(id, rows, metric, valueOf) {
  const shown = rows.filter((r) => valueOf(r) !== null);
  const values = shown.map(valueOf);
  // Dots, not bars: the axis zooms on the (small) differences, and bars would exaggerate them.
  return draw(id, {
    type: "line",
    data: {
      labels: shown.map((r) => twoLines(r.short)),
      datasets: [{ label: metric.label, data: values, showLine: false, pointRadius: 7, pointHoverRadius: 9,
        pointBackgroundColor: shown.map(KIND_COLOR), pointBorderColor: shown.map(KIND_COLOR),
        pointStyle: shown.map((r) => (r.kind === "wso" ? "rectRot" : "circle")) }],
    },
    options: {
      indexAxis: "y",
      layout: { padding: { left: 4, right: 12 } },
      scales: {
        x: { grace: "15%", ticks: { maxTicksLimit: 4, callback: (v) => metric.loss ? formatLoss(v) : formatNumber(v, 3) } },
        y: { ticks: { autoSkip: false }, offset: true, grid: { display: false } },
      },
      plugins: { legend: { display: false },
        tooltip: { callbacks: { label: (item) => `${metric.label}: ${formatValue(metric.keys[0], item.parsed.x)}` } } },
    },
  }, values.length, values, `No ${metric.label.toLowerCase()} at this point yet: it appears once the models here are evaluated.`);
}

export function inversionChart(rows, yMetric, xOf, yOf) {
  const groups = ["wso", "baseline", "anneal"].map((kind) => ({
    label: { wso: "WSO checkpoint", baseline: "real decay", anneal: "merged (WSM)" }[kind],
    data: rows.filter((r) => r.kind === kind && xOf(r) !== null && yOf(r) !== null)
      .map((r) => ({ x: xOf(r), y: yOf(r), label: r.short })),
    backgroundColor: COLORS[kind], borderColor: COLORS[kind],
    pointRadius: 6, pointHoverRadius: 8, pointStyle: kind === "wso" ? "rectRot" : "circle",
  }));
  const count = groups.reduce((n, g) => n + g.data.length, 0);
  return draw("chart-inversion", {
    type: "scatter",
    data: { datasets: groups },
    options: {
      layout: { padding: { right: 40 } },
      scales: {
        x: { title: { display: true, text: "pre-training val loss (lower = better)" }, grace: "10%",
          ticks: { callback: (v) => formatLoss(v) } },
        // SFT loss: lower is better, so flip it to keep "up = better after SFT".
        y: metricAxis(yMetric.keys[0], { title: { display: true, text: `${yMetric.label} (up = better)` },
          reverse: yMetric.lower, grace: "10%" }),
      },
      plugins: { legend: { position: "bottom" } },
    },
    plugins: [pointLabels],
  }, count, groups.flatMap((g) => g.data.map((p) => [p.x, p.y])), "No evaluations at this point yet.");
}

export function weightsChart(model) {
  const src = [...model.sources].sort((a, b) => a.tokens - b.tokens);
  const values = src.map((s) => s.c);
  return draw("chart-weights", {
    type: "bar",
    data: {
      labels: src.map((s) => formatTokens(s.tokens)),
      datasets: [{ label: "c_j", data: values, backgroundColor: COLORS.anneal, borderRadius: 4, maxBarThickness: 48 }],
    },
    options: {
      scales: { y: { beginAtZero: true, title: { display: true, text: "merge weight c" } },
        x: { title: { display: true, text: "checkpoint (tokens)" } } },
      plugins: { legend: { display: false },
        tooltip: { callbacks: { label: (item) => `c = ${formatNumber(item.parsed.y, 4)}` } } },
    },
  }, values.length, values, "This model records no merged checkpoints.");
}

export function lrChart(steps, target) {
  const datasets = [{ label: "equivalent LR (steps)", data: steps, stepped: true, borderColor: COLORS.anneal,
    backgroundColor: "rgba(31, 95, 209, 0.12)", fill: "origin", pointRadius: 0, borderWidth: 2,
    clip: 4 }]; // the factor-1 segment lies on the top edge: do not clip it
  if (target) {
    datasets.push({ label: "decay curve", data: target, borderColor: COLORS.target, borderDash: [4, 4],
      pointRadius: 0, borderWidth: 1.5 });
  }
  return draw("chart-lr", {
    type: "line",
    data: { datasets },
    options: {
      scales: { x: tokenAxis("tokens"), y: { min: 0, max: 1, title: { display: true, text: "LR / peak" } } },
      plugins: { legend: { position: "bottom" } },
    },
  }, steps.length, steps.map((p) => [p.x, p.y]), "The API gave no equivalent LR for this model.");
}

const withBars = (x, y, m, horizontal = false) => {
  const point = horizontal ? { x: m.mean, y } : { x, y: m.mean };
  if (m.sd !== null && m.sd !== undefined) {
    Object.assign(point, horizontal ? { xMin: m.mean - m.sd, xMax: m.mean + m.sd }
      : { yMin: m.mean - m.sd, yMax: m.mean + m.sd });
  }
  return point;
};

/**
 * The annealed frontier (GET /runs/{run}/frontier): the WSO curve and, per variant, what an
 * anneal at each point scores, with ± sd error bars where a point was measured more than once.
 */
export function frontierChart(frontier, metric, lower) {
  const of = (points) => points.filter((p) => p.metrics[metric]).map((p) => withBars(p.tokens, null, p.metrics[metric]));
  const wso = of(frontier.wso);
  const trained = of(frontier.trainer);
  // The evaluated WSO checkpoints, and the trainer's own curve (its samples) apart from them.
  const datasets = [
    { label: "WSO checkpoint (evaluated)", data: wso, borderColor: COLORS.wso, backgroundColor: COLORS.wso,
      pointRadius: 5, borderWidth: 1.5, pointStyle: "rectRot", showLine: wso.length > 1, tension: 0 },
    { label: "WSO val loss (trainer)", data: trained, borderColor: COLORS.val, backgroundColor: COLORS.val,
      pointRadius: 0, borderWidth: 1.2, borderDash: [4, 3], tension: 0 },
  ].filter((d) => d.data.length);
  const measuredWso = [...wso, ...trained];
  let variantPoints = 0;
  frontier.series.forEach((s, i) => {
    const data = s.points.filter((p) => p.metrics[metric]).map((p) => withBars(p.tokens, null, p.metrics[metric]));
    variantPoints += data.length;
    if (!data.length) return;
    const decay = s.kind === "decay";
    const color = decay ? COLORS.baseline : PALETTE[i % PALETTE.length];
    datasets.push({ label: decay ? `real decay ${s.curve} ${formatTokens(s.window)}`
      : `anneal ${s.curve} ${formatTokens(s.window)}${s.interval ? ` / ${formatTokens(s.interval)}` : ""}`,
      data, borderColor: color, backgroundColor: color, pointRadius: 5, pointStyle: decay ? "triangle" : "circle",
      showLine: !decay && data.length > 1, borderWidth: 2, tension: 0, wsmSeries: s.key });
  });
  // Zoom on where the anneals are (from the checkpoint before the first one): the early WSO
  // losses are far higher and would flatten the differences that matter.
  const annealed = datasets.filter((d) => d.wsmSeries).flatMap((d) => d.data);
  const zoom = {};
  if (annealed.length) {
    const first = Math.min(...annealed.map((p) => p.x));
    const from = Math.max(0, ...measuredWso.map((p) => p.x).filter((x) => x < first));
    const ys = [...annealed, ...measuredWso.filter((p) => p.x >= from)].flatMap((p) => [p.yMin ?? p.y, p.yMax ?? p.y]);
    const pad = (Math.max(...ys) - Math.min(...ys)) * 0.08 || Math.abs(ys[0]) * 0.01 || 1;
    Object.assign(zoom, { xMin: from, yMin: Math.min(...ys) - pad, yMax: Math.max(...ys) + pad });
  }
  const chart = draw("chart-frontier", {
    type: "line",
    data: { datasets },
    options: {
      parsing: false,
      interaction: { mode: "nearest", intersect: false },
      scales: { x: { ...tokenAxis("tokens (anneal point = end of the window)"), min: zoom.xMin },
        y: metricAxis(metric, { min: zoom.yMin, max: zoom.yMax, ticks: { includeBounds: false },
          title: { display: true, text: axisTitle(metric, lower) } }) },
      plugins: {
        legend: legend(),
        tooltip: { callbacks: { title: (items) => `${formatTokens(items[0].parsed.x)} tokens`,
          label: (item) => `${item.dataset.label}: ${formatValue(metric, item.parsed.y)}` } },
      },
    },
    plugins: [errorBars],
  }, variantPoints + measuredWso.length, datasets.map((d) => ({ label: d.label, points: d.data.map((p) => [p.x, p.y]) })),
  "No measurements of this metric yet. Training writes the WSO validation loss; a policy or an anneal adds the annealed points.");
  document.getElementById("chart-frontier").dataset.variantPoints = String(variantPoints);
  return chart;
}

/** Merge against real decay: per pair, WSO, merge and decay on one row, ± sd bars. */
export function pairChart(rows, metric, labelOf) {
  const shown = rows.filter((r) => r.metrics[metric]);
  const labels = shown.map(labelOf);
  const set = (key, label, color, style) => ({
    label, borderColor: color, backgroundColor: color, pointStyle: style, pointRadius: 7, showLine: false,
    data: shown.map((r, i) => (r.metrics[metric][key] ? withBars(null, labels[i], r.metrics[metric][key], true) : null))
      .filter(Boolean),
  });
  const datasets = [set("wso", "WSO checkpoint", COLORS.wso, "rectRot"), set("merge", "merge (WSM)", COLORS.anneal, "circle"),
    set("decay", "real decay", COLORS.baseline, "triangle")];
  return draw("chart-pairs", {
    type: "line",
    data: { labels, datasets },
    options: {
      indexAxis: "y",
      scales: { x: metricAxis(metric, { type: "linear", grace: "10%" }), y: { type: "category", labels, offset: true, grid: { display: false } } },
      plugins: { legend: legend(),
        tooltip: { callbacks: { label: (item) => `${item.dataset.label}: ${formatValue(metric, item.parsed.x)}` } } },
    },
    plugins: [errorBars],
  }, shown.length, datasets.map((d) => d.data.map((p) => p.x)), `No pair has ${metric} yet.`);
}

/** A grid (GET /grids/{id}): the metric against the window, one line per curve and interval. */
export function gridChart(grid, metric) {
  const groups = new Map();
  for (const cell of grid.cells) {
    const key = `${cell.curve_label}${cell.interval ? ` / ${formatTokens(cell.interval)}` : ""}`;
    if (!groups.has(key)) groups.set(key, []);
    if (typeof cell.metrics[metric] === "number") groups.get(key).push({ x: cell.window, y: cell.metrics[metric] });
  }
  const datasets = [...groups.entries()].filter(([, data]) => data.length).map(([label, data], i) => ({
    label, data: data.sort((a, b) => a.x - b.x), borderColor: PALETTE[i % PALETTE.length],
    backgroundColor: PALETTE[i % PALETTE.length], pointRadius: 5, borderWidth: 2, tension: 0 }));
  const wso = grid.cells.find((c) => typeof c.wso_metrics[metric] === "number")?.wso_metrics[metric];
  if (wso !== undefined && datasets.length) {
    const xs = datasets.flatMap((d) => d.data.map((p) => p.x));
    datasets.push({ label: "WSO checkpoint", data: [{ x: Math.min(...xs), y: wso }, { x: Math.max(...xs), y: wso }],
      borderColor: COLORS.wso, borderDash: [5, 4], pointRadius: 0, borderWidth: 1.5 });
  }
  const count = datasets.reduce((n, d) => n + (d.label === "WSO checkpoint" ? 0 : d.data.length), 0);
  return draw("chart-grid", {
    type: "line",
    data: { datasets },
    options: {
      parsing: false,
      scales: { x: tokenAxis("window (merge duration)"), y: metricAxis(metric, { title: { display: true, text: axisTitle(metric, null) } }) },
      plugins: { legend: legend(),
        tooltip: { callbacks: { title: (items) => `window ${formatTokens(items[0].parsed.x)}`,
          label: (item) => `${item.dataset.label}: ${formatValue(metric, item.parsed.y)}` } } },
    },
  }, count, datasets.map((d) => ({ label: d.label, points: d.data.map((p) => [p.x, p.y]) })),
  "No evaluated cell yet: results appear as the grid's jobs finish.");
}
