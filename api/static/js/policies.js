// Annealing policies (POST/GET/DELETE /policies): the form, and each policy with its points.
import { api, enc, token } from "./api.js";
import { $, fillSelect, h } from "./dom.js";
import { formatTokens } from "./format.js";

const STATE_TEXT = { waiting: "due: the next worker sweep starts it", queued: "queued", running: "running",
  done: "done", failed: "failed", skipped: "skipped" };

function pointChip(point) {
  const text = `${formatTokens(point.tokens)}: ${STATE_TEXT[point.state]}${point.error ? ` (${point.error})` : ""}`;
  return h("li", { class: `point point-${point.state}`, dataset: { tokens: point.tokens, state: point.state }, title: text },
    h("span", { class: "sr-only" }, text), h("span", { "aria-hidden": "true" }, formatTokens(point.tokens)));
}

function policyCard(policy, onDelete) {
  const done = policy.points.filter((p) => p.state === "done").length;
  const active = policy.points.filter((p) => ["waiting", "queued", "running"].includes(p.state)).length;
  const title = `${policy.curve_label} · ${formatTokens(policy.window)} window · every ${formatTokens(policy.every)}`;
  return h("li", { class: "policy", dataset: { policy: policy.policy_id } },
    h("div", { class: "job-head" }, h("strong", {}, title),
      h("button", { type: "button", class: "secondary small-button", "aria-label": `Delete policy ${title}`,
        onclick: () => onDelete(policy) }, "Delete")),
    h("span", { class: "small muted" },
      `${done} of ${policy.points.length} point(s) done${active ? `, ${active} in progress` : ""} · next at ${formatTokens(policy.next_point)} tokens`
      + (policy.evaluate ? "" : " · no evaluation")),
    policy.points.length ? h("ol", { class: "points", "aria-label": `Points of ${title}` }, ...policy.points.map(pointChip))
      : h("span", { class: "small muted" }, "No point passed yet."));
}

export function showPolicies(policies, reload) {
  const list = $("#policies");
  const remove = async (policy) => {
    try {
      await api(`policies/${enc(policy.policy_id)}`, { method: "DELETE" });
      reload();
    } catch (err) {
      if (err.status === 401) $("#token-field").hidden = false;
      $("#policy-error").textContent = err.status === 401
        ? "Deleting needs the API token: enter it in the anneal form's token field." : err.message;
    }
  };
  list.replaceChildren(...policies.map((p) => policyCard(p, remove)));
  $("#policies-empty").hidden = policies.length > 0;
}

export function initPolicyForm(getRun, reload) {
  const form = $("#policy-form");
  // Curves as the anneal form offers them (filled from GET /curves).
  const sync = () => fillSelect(form.elements.curve, [...$("#f-curve").options].map((o) => [o.value, o.value]),
    form.elements.curve.value || "1-sqrt");
  new MutationObserver(sync).observe($("#f-curve"), { childList: true });
  sync();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = $("#policy-error");
    error.textContent = "";
    const value = (name) => form.elements[name].value.trim();
    if (!value("window") || !value("every")) {
      error.textContent = "Enter a window and how often to anneal, e.g. 40M every 100M.";
      return;
    }
    const body = { curve: value("curve"), window: value("window"), every: value("every"),
      evaluate: form.elements.evaluate.checked };
    if (getRun()) body.run = getRun();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await api("policies", { method: "POST", body });
      form.reset();
      sync();
      reload();
    } catch (err) {
      if (err.status === 401) $("#token-field").hidden = false;
      error.textContent = err.status === 401 && !token.get()
        ? "This service needs WSM_API_TOKEN: enter it in the anneal form's token field, then try again."
        : `${err.message}${err.choices ? ` Choose one of: ${err.choices.join(", ")}.` : ""}`;
    } finally {
      button.disabled = false;
    }
  });
}
