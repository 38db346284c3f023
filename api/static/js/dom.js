// Minimal DOM helpers: element builder and the empty/loading/error state boxes.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** `code` snippets inside state messages: pass ["text ", code("wsm up"), " more"]. */
export const code = (text) => h("code", {}, text);

/**
 * Show a state box (kind: empty | loading | error) in place of a section's content, or clear it.
 * The section gets `has-state` so its charts/table hide instead of showing stale or blank axes.
 */
export function setState(name, kind, title, ...body) {
  const box = document.querySelector(`.state[data-for="${name}"]`);
  const section = box.closest("section");
  if (!kind) {
    box.hidden = true;
    box.replaceChildren();
    section.classList.remove("has-state");
    return;
  }
  box.hidden = false;
  box.dataset.kind = kind;
  box.setAttribute("role", kind === "error" ? "alert" : "status");
  box.replaceChildren(h("h3", {}, title), ...body.map((part) => h("p", {}, part)));
  section.classList.add("has-state");
}

export function fillSelect(select, options, selected) {
  select.replaceChildren(...options.map(([value, label]) => h("option", { value, selected: value === selected }, label)));
  select.disabled = options.length === 0;
}
