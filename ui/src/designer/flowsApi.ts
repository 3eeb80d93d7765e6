// The flows API calls the designer makes (through the app's one API client).
import { api } from "../api/client";
import type { Json, Layout, SpecDoc } from "./model";

export interface VersionSummary {
  flow_id: string;
  number: number;
  parent_number: number | null;
  author: string;
  message: string;
  created_at: string;
}

export interface VersionOut extends VersionSummary {
  spec: SpecDoc;
  layout: { [key: string]: Json } | null;
  source_format: "yaml" | "json";
}

export interface FlowOut {
  id: string;
  desired_state: "running" | "stopped";
  deployed_version: number | null;
  latest_version: number;
}

export interface DeployOut {
  flow_id: string;
  version: number;
  against: number | null;
  path: "hot" | "redeploy" | "noop";
  reasons: string[];
  devices: string[];
  desired_state: "running" | "stopped";
}

export interface DiffOut {
  changes: { path: string; op: string; old?: Json; new?: Json }[];
  plan: { path: "hot" | "redeploy" | "noop"; reasons: string[]; devices: string[] };
}

const base = (id: string) => `/api/v1/flows/${encodeURIComponent(id)}`;
const ifMatch = (n: number) => ({ "If-Match": `"${n}"` });

export const flowsApi = {
  schema: () => api<Record<string, Json>>("/api/v1/flow-specs/schema"),
  validate: (spec: SpecDoc, signal?: AbortSignal) => api("/api/v1/flows/validate", { method: "POST", body: spec, signal }),
  flow: (id: string) => api<FlowOut>(base(id)),
  version: (id: string, n: number) => api<VersionOut>(`${base(id)}/versions/${n}`),
  versions: (id: string) => api<VersionSummary[]>(`${base(id)}/versions`),
  create: (spec: SpecDoc, layout: Layout, message: string) =>
    api<VersionOut>("/api/v1/flows", { method: "POST", body: { spec, layout, message } }),
  update: (id: string, baseVersion: number, spec: SpecDoc, layout: Layout, message: string) =>
    api<VersionOut>(base(id), { method: "PUT", body: { spec, layout, message }, headers: ifMatch(baseVersion) }),
  deploy: (id: string, version: number) => api<DeployOut>(`${base(id)}/deploy`, { method: "POST", body: { version } }),
  rollback: (id: string, version: number) =>
    api<DeployOut>(`${base(id)}/rollback`, { method: "POST", body: { version, message: `rolled back to version ${version}` } }),
  diff: (id: string, from: number, to: number) => api<DiffOut>(`${base(id)}/diff?from=${from}&to=${to}`),
};
