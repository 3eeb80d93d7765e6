// The API's answer shapes the pages use (from the generated OpenAPI types where the API declares them).
import type { components } from "./schema";

type S = components["schemas"];
export type FlowOut = S["FlowOut"];
export type StatusOut = S["StatusOut"];
export type DeployOut = S["DeployOut"];
export type Written = S["Written"];
export type DeviceTestOut = S["DeviceTestOut"];
export type BrowsedOut = S["BrowsedOut"];
export type AckOut = S["AckOut"];

/** A device section of a spec (its shape depends on the protocol; see the flow-spec schema). */
export type Device = { id: string; protocol?: string; connection: Record<string, unknown>; tags: Tag[]; location?: Record<string, string>; poll_interval_s?: number } & Record<string, unknown>;
export type Tag = { name: string; unit?: string; access?: string; scale?: number; data_type?: string; table?: string; address?: number; node_id?: string } & Record<string, unknown>;

export interface HistTag {
  tag_id: string;
  device_id: string;
  name: string;
  unit: string | null;
  uns_path: string;
}

export interface LatestValue {
  tag_id: string;
  time: string | null;
  value: number | null;
  /** A code of core/quality.py (0 good, 64.. uncertain, 128.. bad). */
  quality: number | string | null;
}

export interface LiveValue {
  tag_id: string;
  value: number | string | null;
  quality?: string;
  timestamp?: string;
  unit?: string;
}

export interface Alert {
  id?: string;
  time: string;
  device_id: string;
  tag_id: string;
  tag: string | null;
  kind: string;
  state: "raised" | "cleared";
  severity: string;
  value: number | null;
  limit: number | null;
  message: string | null;
  acked_by?: string | null;
  acked_at?: string | null;
}

export interface DeviceStats {
  version?: number;
  polls?: number;
  skipped_polls?: number;
  failures?: number;
  breaker?: string | null;
  latency_ms?: number | null;
  interval_s?: number | null;
}
