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

/** Stored qualities are codes (core/quality.py); live ones are names. */
const QUALITY_NAMES: Record<number, string> = {
  0: "good", 64: "uncertain", 65: "clamped", 66: "stale", 67: "replayed",
  128: "bad", 129: "comm_error", 130: "device_exception", 131: "out_of_range", 132: "config_error",
};

export function qualityName(q: unknown): string | undefined {
  if (q === null || q === undefined || q === "") return undefined;
  if (typeof q === "number") return QUALITY_NAMES[q] ?? String(q);
  return String(q);
}

export function qualityClass(q: unknown): string {
  const name = qualityName(q);
  if (!name) return "muted";
  if (name === "good") return "good";
  return typeof q === "number" ? (q < 128 ? "warn" : "bad") : ["uncertain", "clamped", "stale", "replayed"].includes(name) ? "warn" : "bad";
}

export function stateClass(state: string | null | undefined): string {
  if (state === "running") return "good";
  if (state === "starting" || state === "stopping" || state === "mixed") return "warn";
  if (state === "failed" || state === "crashed" || state === "error") return "bad";
  return "muted";
}
