// The anneal request form and the live job list (polls GET /anneal/{id} until the job ends).
import { api, enc, token } from "./api.js";
import { $, fillSelect, h } from "./dom.js";
import { formatTokens } from "./format.js";

const POLL_MS = 1000;
const MAX_POLL_MS = 10000;
const FIELDS = ["curve", "window", "interval", "end", "floor", "alpha", "out_format"];
const STAGES = {
  queued: "queued", resolving: "resolving checkpoints", merging: "merging", publishing: "publishing",
  waiting_eval: "waiting for evaluation", evaluating_anneal: "evaluating merged model",
  evaluating_baseline: "evaluating WSO checkpoint", done: "done", failed: "failed",
};
// Short names of the phases in a job's stepper; a job lists only the phases it runs (job.phases).
const PHASES = {
  queued: "queued", resolving: "resolve", merging: "merge", publishing: "publish", waiting_eval: "to eval",
  evaluating_anneal: "eval merged", evaluating_baseline: "eval WSO", done: "done",
};
const SHOWN = 10;
const cards = new Map(); // job_id -> { li, timer }
const mine = new Set(); // jobs requested from this tab: the page jumps to their model when done

function phaseList(job) {
  const phases = job.phases || [];
  if (!phases.length || job.state === "failed") return null;
  const at = job.state === "done" ? phases.length : phases.indexOf(job.stage);
  return h("ol", { class: "phases", "aria-label": "phases of this job" }, ...phases.map((phase, i) =>
    h("li", { dataset: { phase, status: i < at ? "done" : i === at ? "current" : "todo" },
      "aria-current": i === at ? "step" : null }, PHASES[phase] || phase)));
}

function jobCard(job) {
  const sel = job.selection;
  const status = job.state === "done" ? "succeeded" : job.state;
  const finished = job.state === "done" || job.state === "failed";
  const title = `${sel.curve_label} · ${formatTokens(sel.window)} window · at ${formatTokens(sel.window_end)}`;
  return h("li", { class: "job", dataset: { job: job.job_id, status, stage: job.stage } },
    h("div", { class: "job-head" }, h("strong", {}, title),
      h("span", { class: "job-stage" }, STAGES[job.stage] || job.stage)),
    phaseList(job),
    finished ? null : h("progress", { max: 100, value: job.progress,
      "aria-label": `${title}: ${STAGES[job.stage] || job.stage}, ${Math.round(job.progress)}%` }),
    job.message ? h("span", { class: "small muted" }, job.message) : null,
    job.error ? h("p", { class: "job-error" }, job.error) : null,
    h("span", { class: "job-id" }, job.model_id || job.job_id));
}

function render(job, list) {
  const entry = cards.get(job.job_id) || {};
  // The card is rebuilt on every poll; screen readers hear only stage changes (#job-status).
  if (entry.job && entry.job.stage !== job.stage) {
    $("#job-status").textContent = `Anneal job ${job.selection.curve_label} ${formatTokens(job.selection.window)}: ${STAGES[job.stage] || job.stage}`;
  }
  const li = jobCard(job);
  if (entry.li?.isConnected) entry.li.replaceWith(li);
  else list.prepend(li);
  cards.set(job.job_id, { ...entry, li, job });
}

function poll(jobId, list, onDone, delay = POLL_MS) {
  const entry = cards.get(jobId);
  clearTimeout(entry.timer);
  entry.timer = setTimeout(async () => {
    try {
      const job = await api(`anneal/${enc(jobId)}`);
      render(job, list);
      if (job.state === "done" || job.state === "failed") return onDone(job, mine.has(job.job_id));
      poll(jobId, list, onDone);
    } catch (err) {
      // Keep trying with back-off: a restarting API should not lose the job on the page.
      poll(jobId, list, onDone, Math.min(delay * 2, MAX_POLL_MS));
    }
  }, delay);
}

/** Show the run's newest jobs (also those requested elsewhere, e.g. with curl) and follow the active ones. */
export function showJobs(jobs, onDone) {
  const list = $("#jobs");
  for (const { timer } of cards.values()) clearTimeout(timer);
  const previous = new Map([...cards].map(([id, entry]) => [id, entry.job]));
  cards.clear();
  list.replaceChildren();
  const shown = jobs.slice(0, SHOWN);
  [...shown].reverse().forEach((job) => {
    cards.set(job.job_id, { job: previous.get(job.job_id) });
    render(job, list);
  });
  for (const job of shown) if (job.state === "queued" || job.state === "running") poll(job.job_id, list, onDone);
  const note = $('.state[data-for="jobs"]');
  note.hidden = jobs.length > 0 && jobs.length <= SHOWN;
  note.textContent = jobs.length ? `Showing the newest ${SHOWN} of ${jobs.length} jobs.`
    : "No anneal jobs for this run yet. Submit the form to request one.";
}

function clearErrors(form) {
  $("#form-error").textContent = "";
  for (const name of FIELDS) {
    form.elements[name].removeAttribute("aria-invalid");
    $(`#e-${name}`).textContent = "";
  }
}

/** The API answers with one message; mark the field it is about (the first one it names). */
function showError(form, message) {
  const hits = FIELDS.map((f) => [f, message.search(new RegExp(`\\b${f}\\b`, "i"))]).filter(([, i]) => i >= 0);
  hits.sort((a, b) => a[1] - b[1]);
  const field = hits.length ? form.elements[hits[0][0]] : null;
  $("#form-error").textContent = message;
  if (field && !field.closest("details:not([open])") && !field.closest("[hidden]")) {
    field.setAttribute("aria-invalid", "true");
    field.focus();
  }
}

function requestBody(form, run) {
  const value = (name) => form.elements[name].value.trim();
  const number = (text) => (text !== "" && !Number.isNaN(Number(text)) ? Number(text) : text);
  const body = { curve: value("curve"), window: value("window"), evaluate: form.elements.evaluate.checked };
  if (run) body.run = run;
  for (const name of ["interval", "end"]) if (value(name)) body[name] = value(name);
  if (value("floor")) body.floor = number(value("floor"));
  if (body.curve === "ema" && value("alpha")) body.alpha = number(value("alpha"));
  if (value("out_format")) body.out_format = value("out_format");
  return body;
}

// The formats are the API's own list (the merger's output formats, as the OpenAPI schema of
// POST /anneal enumerates them): a new format appears here by itself.
async function loadFormats(select) {
  try {
    const schema = await api("openapi.json");
    const field = schema.components.schemas.AnnealRequest.properties.out_format;
    fillSelect(select, field.enum.map((name) => [name, name]), select.value || field.default);
  } catch {
    // Keep the built-in default option.
  }
}

// The curve choices come from GET /curves (theory's registry): a new curve appears here by itself.
async function loadCurves(select) {
  try {
    const { curves } = await api("curves");
    const offered = curves.filter((c) => !c.parameters.includes("coefficients"));  // custom: API only
    fillSelect(select, offered.map((c) => [c.name, `${c.name} (${c.description})`]), select.value || "1-sqrt");
  } catch {
    // Keep the built-in default option; the request itself will report a curve the API rejects.
  }
}

export function initForm(getRun, onDone) {
  const form = $("#anneal-form");
  const curve = form.elements.curve;
  loadCurves(curve);
  loadFormats(form.elements.out_format);
  curve.addEventListener("change", () => { $("#alpha-field").hidden = curve.value !== "ema"; });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    if (!form.elements.window.value.trim()) {
      form.elements.window.setAttribute("aria-invalid", "true");
      $("#e-window").textContent = "Enter a window width, e.g. 80B (tokens to decay over).";
      form.elements.window.focus();
      return;
    }
    if (!$("#token-field").hidden) token.set(form.elements.token.value.trim());
    const button = $("#f-submit");
    button.disabled = true;
    button.textContent = "Requesting…";
    try {
      const job = await api("anneal", { method: "POST", body: requestBody(form, getRun()) });
      mine.add(job.job_id);
      render(job, $("#jobs"));
      $('.state[data-for="jobs"]').hidden = true;
      if (job.state === "done" || job.state === "failed") onDone(job, true);
      else poll(job.job_id, $("#jobs"), onDone);
    } catch (err) {
      if (err.status === 401) {
        // Reveal the token field; the user pastes WSM_API_TOKEN and submits again.
        $("#token-field").hidden = false;
        token.set("");
      }
      const choices = err.choices ? ` Choose one of: ${err.choices.join(", ")}.` : "";
      showError(form, `${err.message}${choices}`);
      if (err.status === 401) form.elements.token.focus();
    } finally {
      button.disabled = false;
      button.textContent = "Request anneal";
    }
  });
}
