// Chart.js (vendored UMD build, global `Chart`) wrappers. Every canvas gets data attributes
// (data-points, data-values) so tests and scripts can check what was drawn without reading pixels.
import { formatNumber, formatTokens } from "./format.js";

export const COLORS = {
  loss: "#17202e", val: "#d9480f", lr: "#2b8a3e", checkpoint: "#556173",
  wso: "#b3261e", anneal: "#1f5fd1", baseline: "#a15c00", target: "#8a96a8",
  span: "rgba(31, 95, 209, 0.07)", spanSelected: "rgba(31, 95, 209, 0.2)",
};

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

/** Create or update the chart on canvas #id; `points` is recorded on the canvas for assertions. */
function draw(id, config, points, values) {
  if (!charts.size) defaults();
  const canvas = document.getElementById(id);
  let chart = charts.get(id);
  if (chart && chart.config.type === config.type) {
    chart.data = config.data;
    chart.options = config.options;
    chart.update("none");
  } else {
    chart?.destroy();
    chart = new Chart(canvas, config);
    charts.set(id, chart);
  }
  canvas.dataset.points = String(points);
  if (values) canvas.dataset.values = JSON.stringify(values);
  return chart;
}

// Anneal windows as shaded bands with a label lane at the top, checkpoints as ticks on the x axis.
const overlays = {
  id: "wsmOverlays",
  beforeDatasetsDraw(chart, _args, opts) {
    const { ctx, chartArea: area, scales: { x } } = chart;
    ctx.save();
    // Merge windows are shaded; a real decay branch (baseline) only gets its lane bar and edge,
    // so overlapping windows stay readable.
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
    (opts.spans || []).forEach((span, i) => {
      const left = Math.max(area.left, x.getPixelForValue(span.start));
      const right = Math.min(area.right, x.getPixelForValue(span.end));
      const y = area.top + 4 + (i % 4) * 15;
      const color = span.kind === "baseline" ? COLORS.baseline : COLORS.anneal;
      ctx.fillStyle = color;
      ctx.globalAlpha = span.selected || span.kind === "baseline" ? 1 : 0.55;
      ctx.fillRect(left, y, right - left, 3);
      if (span.kind === "baseline") ctx.fillRect(left, area.top, 1, area.height);
      ctx.globalAlpha = 1;
      if (right - left > 50) ctx.fillText(span.label, left + 3, y + 13, right - left - 6);
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

/** `series`: GET /runs/{run}/metrics/series (already downsampled by the API). */
export function trainingChart(series, checkpoints, spans) {
  const loss = series.train.map((r) => ({ x: r.tokens, y: r.loss }));
  const val = series.val.map((r) => ({ x: r.tokens, y: r.val_loss }));
  const lr = series.train.filter((r) => r.lr !== null).map((r) => ({ x: r.tokens, y: r.lr }));
  const line = { parsing: false, pointRadius: 0, borderWidth: 1.6, tension: 0 };
  return draw("chart-training", {
    type: "line",
    data: {
      datasets: [
        { ...line, label: "train loss", data: loss, borderColor: COLORS.loss, yAxisID: "y" },
        { ...line, label: "val loss", data: val, borderColor: COLORS.val, backgroundColor: COLORS.val,
          pointRadius: 3, showLine: val.length > 1, borderWidth: 1.2, yAxisID: "y" },
        { ...line, label: "LR", data: lr, borderColor: COLORS.lr, borderDash: [5, 4], yAxisID: "lr" },
      ],
    },
    options: {
      interaction: { mode: "nearest", axis: "x", intersect: false },
      scales: {
        x: tokenAxis("tokens"),
        y: { title: { display: true, text: "loss" } },
        lr: { position: "right", grid: { drawOnChartArea: false }, beginAtZero: true,
          title: { display: true, text: "learning rate" }, ticks: { callback: (v) => formatNumber(v, 2) } },
      },
      plugins: {
        tooltip: { callbacks: { title: (items) => `${formatTokens(items[0].parsed.x)} tokens` } },
        wsmOverlays: { spans, checkpoints },
      },
    },
    plugins: [overlays],
  }, loss.length);
}

const KIND_COLOR = (row) => COLORS[row.kind];

export function metricChart(id, rows, metric, valueOf) {
  const shown = rows.filter((r) => valueOf(r) !== null);
  const values = shown.map(valueOf);
  // Dots, not bars: the axis zooms on the (small) differences, and bars would exaggerate them.
  return draw(id, {
    type: "line",
    data: {
      labels: shown.map((r) => r.short),
      datasets: [{ label: metric.label, data: values, showLine: false, pointRadius: 7, pointHoverRadius: 9,
        pointBackgroundColor: shown.map(KIND_COLOR), pointBorderColor: shown.map(KIND_COLOR),
        pointStyle: shown.map((r) => (r.kind === "wso" ? "rectRot" : "circle")) }],
    },
    options: {
      indexAxis: "y",
      layout: { padding: { left: 4, right: 12 } },
      scales: {
        x: { grace: "15%", ticks: { maxTicksLimit: 4, callback: (v) => formatNumber(v, 3) } },
        y: { ticks: { autoSkip: false }, offset: true, grid: { display: false } },
      },
      plugins: { legend: { display: false } },
    },
  }, values.length, values);
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
        x: { title: { display: true, text: "pre-training val loss (lower = better)" }, grace: "10%" },
        // SFT loss: lower is better, so flip it to keep "up = better after SFT".
        y: { title: { display: true, text: `${yMetric.label} (up = better)` }, reverse: yMetric.lower, grace: "10%" },
      },
      plugins: { legend: { position: "bottom" } },
    },
    plugins: [pointLabels],
  }, count, groups.flatMap((g) => g.data.map((p) => [p.x, p.y])));
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
  }, values.length, values);
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
  }, steps.length, steps.map((p) => [p.x, p.y]));
}
