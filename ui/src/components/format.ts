// Small display helpers shared by the pages.

export function fmtValue(v: unknown): string {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(6).replace(/\.?0+$/, "");
  return String(v);
}

export function fmtTime(iso: string | null | undefined): string {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

export function qualityClass(q: string | null | undefined): string {
  if (!q) return "muted";
  return q === "good" ? "good" : q.startsWith("uncertain") ? "warn" : "bad";
}

export function stateClass(state: string | null | undefined): string {
  if (state === "running") return "good";
  if (state === "starting" || state === "stopping" || state === "mixed") return "warn";
  if (state === "failed" || state === "crashed" || state === "error") return "bad";
  return "muted";
}
