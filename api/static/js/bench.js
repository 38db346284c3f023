// Benchmark scores (lm-evaluation-harness, "bench/<task>/<metric>" keys of an evaluation's metrics)
// beside the SFT metrics: one column per task and metric found at this anneal point, shown as
// value ± standard error (lm-eval's "<metric>_stderr" key).
import { h } from "./dom.js";
import { formatNumber } from "./format.js";

const PREFIX = "bench/";
const STDERR = "_stderr";

/** The benchmark score keys present in these rows' evaluations, sorted (stderr keys excluded). */
export function benchKeys(rows) {
  const keys = new Set();
  for (const row of rows) {
    for (const key of Object.keys(row.eval?.metrics || {})) {
      if (key.startsWith(PREFIX) && !key.endsWith(STDERR)) keys.add(key);
    }
  }
  return [...keys].sort();
}

export function formatScore(metrics, key) {
  const value = metrics?.[key];
  if (typeof value !== "number") return "–";
  const err = metrics[`${key}${STDERR}`];
  return typeof err === "number" ? `${formatNumber(value)} ± ${formatNumber(err)}` : formatNumber(value);
}

/** Fills #bench-table (head and body) and shows the section only when some row has scores. */
export function renderBench(table, rows) {
  const keys = benchKeys(rows);
  table.closest("[data-bench]").hidden = keys.length === 0;
  if (!keys.length) return;
  const label = (key) => key.slice(PREFIX.length).replace("/", " · ");
  table.tHead.replaceChildren(h("tr", {}, h("th", { scope: "col" }, "Model"),
    ...keys.map((k) => h("th", { scope: "col", class: "num" }, label(k)))));
  table.tBodies[0].replaceChildren(...rows.map((row) => h("tr", {},
    h("th", { scope: "row" }, row.label),
    ...keys.map((k) => h("td", { class: "num" }, formatScore(row.eval?.metrics, k))))));
}
