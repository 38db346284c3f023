// Grids (POST /grids, GET /grids?run=): curves × windows × intervals as one table and one chart.
import { api } from "./api.js";
import * as charts from "./charts.js";
import { $, fillSelect, h, setState } from "./dom.js";
import { formatTokens, formatValue, metricLabel } from "./format.js";

let grids = [];
let wanted = null; // a grid just requested from this tab: shown once the reload has it

const rowKey = (cell) => `${cell.curve_label}|${cell.interval ?? ""}`;

function cellContent(cell, metric) {
  if (cell.state === "skipped") return h("span", { class: "muted small", title: cell.error }, "n/a");
  const value = cell.metrics[metric];
  if (typeof value === "number") return formatValue(metric, value);
  return h("span", { class: `small state-${cell.state}`, title: cell.error || "" }, cell.state === "done" ? "–" : cell.state);
}

function renderGrid() {
  const grid = grids.find((g) => g.grid_id === $("#grid-select").value);
  if (!grid) return;
  const metrics = [...new Set(grid.cells.flatMap((c) => Object.keys(c.metrics)))];
  const metricSelect = $("#grid-metric");
  const keep = metrics.includes(metricSelect.value) ? metricSelect.value
    : metrics.includes("pretrain_val_loss") ? "pretrain_val_loss" : metrics[0] ?? "pretrain_val_loss";
  fillSelect(metricSelect, metrics.map((m) => [m, metricLabel(m)]), keep);
  const metric = keep;
  const rows = [...new Map(grid.cells.map((c) => [rowKey(c), c])).values()];
  $("#grid-table thead").replaceChildren(h("tr", {}, h("th", { scope: "col" }, "Curve / interval"),
    ...grid.windows.map((w) => h("th", { scope: "col", class: "num" }, `${formatTokens(w)} window`))));
  $("#grid-table tbody").replaceChildren(...rows.map((r) => h("tr", { dataset: { row: rowKey(r) } },
    h("th", { scope: "row" }, r.curve_label, h("span", { class: "muted small" },
      r.interval ? ` every ${formatTokens(r.interval)}` : " every checkpoint")),
    ...grid.windows.map((w) => {
      const cell = grid.cells.find((c) => rowKey(c) === rowKey(r) && c.window === w);
      return h("td", { class: "num", dataset: { window: w, state: cell?.state ?? "", value: cell?.metrics[metric] ?? "" } },
        cell ? cellContent(cell, metric) : "–");
    }))));
  const done = grid.cells.filter((c) => c.state === "done").length;
  const wso = grid.cells.find((c) => typeof c.wso_metrics[metric] === "number")?.wso_metrics[metric];
  $("#grid-note").textContent = `${grid.cells.length} cells ending at ${formatTokens(grid.end)} tokens, ${done} done.`
    + (wso !== undefined ? ` WSO checkpoint: ${formatValue(metric, wso)}.` : "");
  charts.gridChart(grid, metric);
}

export function showGrids(list) {
  grids = list;
  $("#grids .heads").hidden = !grids.length;
  if (!grids.length) {
    fillSelect($("#grid-select"), [], null);
    setState("grids", "empty", "No grid yet",
      "Ask for curves × windows × intervals at once with the form: each cell is an ordinary anneal job.");
    return;
  }
  setState("grids", null);
  const current = grids.some((g) => g.grid_id === wanted) ? wanted : $("#grid-select").value;
  if (wanted && current === wanted) wanted = null;
  fillSelect($("#grid-select"), grids.map((g) => [g.grid_id,
    `${g.curves.join(", ")} × ${g.windows.length} windows × ${g.intervals.length} intervals at ${formatTokens(g.end)}`]),
    grids.some((g) => g.grid_id === current) ? current : grids[0].grid_id);
  renderGrid();
}

const sizes = (text) => text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);

export function initGridForm(getRun, reload) {
  const form = $("#grid-form");
  $("#grid-select").addEventListener("change", renderGrid);
  $("#grid-metric").addEventListener("change", renderGrid);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = $("#grid-error");
    error.textContent = "";
    const curves = [...form.querySelectorAll("input[name=grid-curve]:checked")].map((i) => i.value);
    const windows = sizes(form.elements.windows.value);
    const intervals = sizes(form.elements.intervals.value);
    if (!curves.length || !windows.length) {
      error.textContent = "Pick at least one curve and one window.";
      return;
    }
    const body = { curves, windows, intervals: intervals.length ? intervals : [null], evaluate: form.elements.evaluate.checked };
    if (getRun()) body.run = getRun();
    try {
      const grid = await api("grids", { method: "POST", body });
      wanted = grid.grid_id;
      reload();
    } catch (err) {
      if (err.status === 401) $("#token-field").hidden = false;
      error.textContent = `${err.message}${err.choices ? ` Choose one of: ${err.choices.join(", ")}.` : ""}`;
    }
  });
}

/** The curve checkboxes, from the anneal form's curve list (GET /curves). */
export function syncGridCurves() {
  const box = $("#grid-curves");
  const checked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
  if (!checked.size) checked.add("1-sqrt");
  box.replaceChildren(...[...$("#f-curve").options].map((o) => h("label", { class: "check" },
    h("input", { type: "checkbox", name: "grid-curve", value: o.value, checked: checked.has(o.value) }), o.value)));
}
