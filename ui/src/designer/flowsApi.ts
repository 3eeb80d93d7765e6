// The flows API calls the designer makes (through the app's one API client; shapes from the
// types generated from the OpenAPI document).
import { api } from "../api/client";
import type { components } from "../api/schema";
import type { Json, Layout, SpecDoc } from "./model";

type Schemas = components["schemas"];
export type VersionSummary = Schemas["VersionSummary"];
/** A version; its `spec` is a flow spec document (secrets masked). */
export type VersionOut = Omit<Schemas["VersionOut"], "spec"> & { spec: SpecDoc };
export type FlowOut = Schemas["FlowOut"];
export type DeployOut = Schemas["DeployOut"];
export type DiffOut = Schemas["DiffOut"];

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
