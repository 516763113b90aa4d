// The JSON API as the pages call it: same-origin cookies, Django's CSRF header on writes, the
// body sent and read as JSON. An answer the server refuses becomes an ApiError carrying the
// status (the label page stops on 403, moves on after 404 and 409) and a message to show:
// DRF's ``detail``, else the field errors as JSON, else the status itself.

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export async function callApi(url, csrf, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") headers["X-CSRFToken"] = csrf;
  const response = await fetch(url, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const fields = Object.keys(data).length ? JSON.stringify(data) : "";
    throw new ApiError(response.status, data.detail || fields || `The server answered ${response.status}.`);
  }
  return data;
}
