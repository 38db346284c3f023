// Joins models, checkpoints and evaluations into "anneal points": for each end token count, the
// WSO checkpoint, the real-decay baseline(s) and every merged variant, each with its evaluation.
import { formatTokens } from "./format.js";

const modelDir = (run, name) => `runs/${run}/models/${name}`;
const checkpointDir = (run, tokens) => `runs/${run}/checkpoints/${String(tokens).padStart(18, "0")}`;

/** Newest evaluation per evaluated directory (an evaluation may be repeated). */
function latestEvalByDir(evals) {
  const byDir = new Map();
  for (const ev of evals) {
    const seen = byDir.get(ev.model_dir);
    if (!seen || new Date(ev.created_at) > new Date(seen.created_at)) byDir.set(ev.model_dir, ev);
  }
  return byDir;
}

/** Checkpoint spacing the merge used: the median gap between its sources. */
export function intervalOf(model) {
  const t = (model.sources || []).map((s) => s.tokens).sort((a, b) => a - b);
  if (t.length < 2) return null;
  const gaps = t.slice(1).map((v, i) => v - t[i]).sort((a, b) => a - b);
  return gaps[Math.floor(gaps.length / 2)];
}

export function curveLabel(curve) {
  if (!curve) return "–";
  if (curve.label) return curve.label;
  const name = curve.name === "ema" ? `ema(α=${curve.alpha})` : curve.name;
  const floor = curve.floor || curve.min_lr_factor; // a real decay records its floor as min_lr_factor
  return floor ? `${name} floor=${floor}` : name;
}

function modelRow(run, model, byDir) {
  const base = { key: model.id, kind: model.kind, model, eval: byDir.get(modelDir(run, model.name)) || null };
  if (model.kind === "baseline") {
    // The real decay branch (trainer/branch.py): forked at window_start, decayed until tokens.
    const start = model.window_start ?? null;
    return { ...base, label: `Real decay · ${curveLabel(model.curve)}`, curve: curveLabel(model.curve),
      window: start !== null ? model.tokens - start : null, interval: null, start };
  }
  return { ...base, label: model.name, curve: curveLabel(model.curve),
    window: model.window_end - model.window_start, interval: intervalOf(model), start: model.window_start };
}

const ORDER = { wso: 0, baseline: 1, anneal: 2 };

export function buildPoints(run, models, checkpoints, evals) {
  const byDir = latestEvalByDir(evals);
  const known = new Set(checkpoints.map((c) => c.tokens));
  const points = new Map();
  for (const model of models) {
    if (!points.has(model.tokens)) points.set(model.tokens, []);
    points.get(model.tokens).push(modelRow(run, model, byDir));
  }
  for (const [tokens, rows] of points) {
    rows.push({ key: `wso:${tokens}`, kind: "wso", label: `WSO checkpoint ${formatTokens(tokens)}`,
      curve: "– (no decay)", window: 0, interval: null, start: null, model: null, missing: !known.has(tokens),
      eval: byDir.get(checkpointDir(run, tokens)) || null });
    rows.sort((a, b) => ORDER[a.kind] - ORDER[b.kind] || String(a.curve).localeCompare(String(b.curve))
      || (a.window ?? 0) - (b.window ?? 0) || (a.interval ?? 0) - (b.interval ?? 0));
  }
  return [...points.entries()].sort((a, b) => a[0] - b[0]).map(([tokens, rows]) => ({ tokens, rows }));
}
