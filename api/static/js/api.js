// Thin client of the public HTTP API. Paths are relative so the page also works under a proxy prefix.

export class ApiError extends Error {
  constructor(status, body) {
    const detail = body && typeof body.detail === "string" ? body.detail : `HTTP ${status}`;
    super(detail);
    this.status = status;
    this.code = body && body.error ? body.error : "http_error";
    this.detail = detail;
    this.choices = body && Array.isArray(body.choices) ? body.choices : null;
    this.body = body;
  }
}

// Mutating endpoints need WSM_API_TOKEN when the service sets one; kept for this tab only.
const TOKEN_KEY = "wsm-api-token";
export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || "",
  set: (value) => (value ? sessionStorage.setItem(TOKEN_KEY, value) : sessionStorage.removeItem(TOKEN_KEY)),
};

export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal, headers: { accept: "application/json" } };
  if (token.get()) init.headers.authorization = `Bearer ${token.get()}`;
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path.replace(/^\//, ""), init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { error: "unreachable", detail: "The API did not answer (is the service running?)" });
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { detail: text.slice(0, 300) };
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

export const enc = encodeURIComponent;
