// Number formatting and the evaluation metrics the page compares.

/** Short token count, as theory.format_tokens prints it: 80B, 1.5T, 25M, 300k. */
export function formatTokens(tokens) {
  if (tokens === null || tokens === undefined) return "–";
  for (const [suffix, scale] of [["T", 1e12], ["B", 1e9], ["M", 1e6], ["k", 1e3]]) {
    if (tokens >= scale) return `${(tokens / scale).toFixed(3).replace(/\.?0+$/, "")}${suffix}`;
  }
  return String(Math.round(tokens));
}

export function formatNumber(value, digits = 4) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return value.toExponential(2);
  return Number(value.toPrecision(digits)).toString();
}

/** Losses always with three decimals, so 4.300 and 4.329 never read alike. */
export function formatLoss(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return value.toFixed(3);
}

const isLoss = (name) => /loss|perplexity/i.test(name);
const isShare = (name) => /acc|exact_match/i.test(name);

/** Any metric by its name (losses: 3 decimals; accuracies in [0, 1]: percent; else 4 digits). */
export function formatValue(name, value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (isLoss(name)) return formatLoss(value);
  if (isShare(name) && value >= 0 && value <= 1) return `${(value * 100).toFixed(1)}%`;
  return formatNumber(value);
}

/** A readable label for a metric key such as "pretrain_val_loss" or "task_accuracy/arith". */
export function metricLabel(name) {
  const known = METRICS.find((m) => m.keys[0] === name);
  return known ? known.label : name.replaceAll("_", " ");
}

// The four numbers of every SFT evaluation (trainer/evaluate.py names them). `keys` lists the
// metric names to read, preferred first. `lower` = lower is better.
export const METRICS = [
  { id: "pretrain_val_loss", label: "Pre-train val loss", keys: ["pretrain_val_loss"], lower: true, loss: true },
  { id: "sft_val_loss", label: "SFT val loss", keys: ["sft_val_loss"], lower: true, loss: true },
  { id: "task_accuracy", label: "Task accuracy", keys: ["task_accuracy"], lower: false, percent: true },
  // Hessian trace (Hutchinson) of the pre-trained model on pre-training data, as in the WSO
  // paper; on SFT data when only that was measured.
  { id: "sharpness", label: "Sharpness", keys: ["sharpness_pretrain", "sharpness_sft", "sharpness"], lower: true },
];

export function metricValue(metrics, metric) {
  if (!metrics) return null;
  for (const key of metric.keys) {
    if (typeof metrics[key] === "number") return metrics[key];
  }
  return null;
}

export function formatMetric(value, metric) {
  if (value === null) return "–";
  if (metric.loss) return formatLoss(value);
  return metric.percent && value <= 1 ? `${(value * 100).toFixed(1)}%` : formatNumber(value);
}

/** "3.251 ± 0.004" for a measure of the API (mean, sd, n), in the metric's format. */
export function formatMeasure(name, m) {
  if (!m) return "–";
  // Spread over seeds/repeats when there are several; else the evaluation's own standard error (lm-eval).
  const err = m.sd ?? m.reported_se ?? null;
  const sd = err !== null ? ` ± ${isShare(name) && err <= 1 ? `${(err * 100).toFixed(1)}%` : isLoss(name) ? formatLoss(err) : formatNumber(err)}` : "";
  return `${formatValue(name, m.mean)}${sd}`;
}
