// The one way the UI talks to the API: JSON in and out, problem+json errors as ApiError, the CSRF
// header from the `nexus_csrf` cookie on unsafe methods, one refresh attempt on 401, then /login.

export interface FieldProblem {
  path: string;
  message: string;
}

export interface Problem {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  problems?: FieldProblem[];
}

export class ApiError extends Error {
  readonly status: number;
  readonly problem: Problem;

  constructor(status: number, problem: Problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }

  /** Field problems keyed by path (`devices[0].tags[1].scale`), for pinning errors on form fields. */
  byPath(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const p of this.problem.problems ?? []) out[p.path] = p.message;
    return out;
  }
}

const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);
const AUTH_PATHS = ["/api/v1/auth/login", "/api/v1/auth/refresh", "/api/v1/auth/logout"];

export function cookie(name: string): string | null {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return null;
}

export interface RequestOptions {
  method?: string;
  body?: unknown;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  /** Answer text instead of JSON (CSV, YAML). */
  text?: boolean;
  /** Do not redirect to /login on 401 (the login page and the "who am I" probe). */
  noRedirect?: boolean;
}

let refreshing: Promise<boolean> | null = null;

/** One refresh at a time, shared by every request that got a 401 meanwhile. */
function refresh(): Promise<boolean> {
  refreshing ??= fetch("/api/v1/auth/refresh", {
    method: "POST",
    credentials: "same-origin",
    headers: csrfHeaders("POST"),
  })
    .then((r) => r.ok)
    .catch(() => false)
    .finally(() => {
      refreshing = null;
    });
  return refreshing;
}

function csrfHeaders(method: string): Record<string, string> {
  const token = UNSAFE.has(method) ? cookie("nexus_csrf") : null;
  return token ? { "X-CSRF-Token": token } : {};
}

export function toLogin(): void {
  if (window.location.pathname === "/login") return;
  const next = window.location.pathname + window.location.search;
  window.location.assign(`/login?next=${encodeURIComponent(next)}`);
}

async function send(path: string, opts: RequestOptions): Promise<Response> {
  const method = (opts.method ?? "GET").toUpperCase();
  const headers: Record<string, string> = { Accept: "application/json, application/problem+json, */*", ...csrfHeaders(method), ...opts.headers };
  let body: BodyInit | undefined;
  if (opts.body !== undefined) {
    headers["Content-Type"] ??= "application/json";
    body = typeof opts.body === "string" ? opts.body : JSON.stringify(opts.body);
  }
  return fetch(path, { method, headers, body, signal: opts.signal, credentials: "same-origin" });
}

async function problemOf(res: Response): Promise<Problem> {
  const text = await res.text();
  try {
    const parsed = JSON.parse(text) as Problem;
    if (parsed && typeof parsed === "object") return parsed;
  } catch {
    /* not JSON: fall through */
  }
  return { status: res.status, title: res.statusText, detail: text.slice(0, 300) };
}

const BIG_ID = /("tag_id"\s*:\s*)(-?\d+)/g;

/** JSON with every `tag_id` as a string: tag ids are 64-bit and a JS number keeps only 53 bits. */
export function parseJson(text: string): unknown {
  return JSON.parse(text.replace(BIG_ID, '$1"$2"'));
}

/** A JSON list of tag ids (digit strings) written as numbers, exactly. */
export function idList(ids: string[]): string {
  return `[${ids.filter((id) => /^-?\d+$/.test(id)).join(",")}]`;
}

export async function api<T = unknown>(path: string, opts: RequestOptions = {}): Promise<T> {
  let res = await send(path, opts);
  if (res.status === 401 && !AUTH_PATHS.includes(path)) {
    if (await refresh()) res = await send(path, opts);
    if (res.status === 401 && !opts.noRedirect) toLogin();
  }
  if (!res.ok) throw new ApiError(res.status, await problemOf(res));
  if (opts.text) return (await res.text()) as T;
  if (res.status === 204 || res.headers.get("content-length") === "0") return undefined as T;
  const type = res.headers.get("content-type") ?? "";
  const text = await res.text();
  return (type.includes("json") ? parseJson(text) : text) as T;
}

/** The query string of the defined entries (arrays repeat the key). */
export function qs(params: Record<string, string | number | boolean | undefined | null | (string | number)[]>): string {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === "") continue;
    if (Array.isArray(value)) value.forEach((v) => q.append(key, String(v)));
    else q.set(key, String(value));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}
