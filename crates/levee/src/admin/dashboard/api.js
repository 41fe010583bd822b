// The admin API client: the token kept in sessionStorage (this tab only, gone when it
// closes) and sent as a bearer token on every call; never in a URL, never logged.

const TOKEN = "levee.admin-token";

export function token() {
  return sessionStorage.getItem(TOKEN);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN, value);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN);
}

// An answer other than 2xx: its status, the API's stable code and its message.
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Calls the admin API; resolves with the JSON answer, rejects with an ApiError.
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const secret = token();
  if (secret) headers.Authorization = `Bearer ${secret}`;
  const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, "unreachable", `The gateway's admin listener did not answer (${error.message}).`);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const detail = data && data.error ? data.error : {};
    throw new ApiError(
      response.status,
      detail.code || `http_${response.status}`,
      detail.message || `${method} ${path} answered ${response.status}.`,
    );
  }
  return data;
}

export const get = (path) => api("GET", path);
