/**
 * The designer's model: a flow spec v1 document plus the layout of its nodes.
 *
 * The spec document is the model and the graph is a view of it (STYLE.md point 27): every edit
 * below returns a new document, and `deriveGraph` turns document + layout into nodes and edges.
 * A spec has no explicit edges: every device feeds the first operator, operators run in list
 * order, and a sink takes the points of its `input` operator (default: the last one). So
 * "connecting" a node means placing it in that chain, and a node that is dropped on the canvas
 * but not yet connected is a *draft*: kept beside the document (never sent to the API) until it
 * is connected. The document keeps every key it was given, so import → export gives it back.
 */

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

export interface SpecDoc extends JsonObject {}

export interface Position {
  x: number;
  y: number;
}

/** The flow version's `layout` field: `{"nodes": {"<node id>": {"x", "y"}}}`. */
export interface Layout {
  nodes: Record<string, Position>;
}

export type NodeKind = "source" | "operator" | "sink";

/** A node dropped on the canvas but not connected: not part of the spec yet. */
export interface Draft {
  kind: "operator" | "sink";
  node: JsonObject;
}

export interface DesignState {
  spec: SpecDoc;
  layout: Layout;
  drafts: Draft[];
}

export const PROTOCOLS = ["modbus", "opcua", "s7", "mqtt"] as const;
export type Protocol = (typeof PROTOCOLS)[number];

export const OPERATOR_TYPES = [
  "normalize",
  "calculate",
  "deadband",
  "swinging_door",
  "window",
  "anomaly",
  "oee",
] as const;
export const SINK_TYPES = ["mqtt_uns", "historian", "sparkplug_b"] as const;

/** Graph id of a protocol's device group; `:` cannot appear in a spec node id, so none clash. */
export const groupId = (protocol: Protocol): string => `devices:${protocol}`;

export function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function list(spec: SpecDoc, key: "devices" | "operators" | "sinks"): JsonObject[] {
  const value = spec[key];
  return Array.isArray(value) ? value.filter(isObject) : [];
}

export const devicesOf = (spec: SpecDoc) => list(spec, "devices");
export const operatorsOf = (spec: SpecDoc) => list(spec, "operators");
export const sinksOf = (spec: SpecDoc) => list(spec, "sinks");

/** A device's protocol as the spec reads it (`modbus` when absent; `modbus_tcp` is modbus). */
export function protocolOf(device: JsonObject): Protocol {
  const p = device.protocol ?? "modbus";
  if (p === "modbus_tcp") return "modbus";
  return (PROTOCOLS as readonly unknown[]).includes(p) ? (p as Protocol) : "modbus";
}

/** Protocols with at least one device, in order of their first device. */
export function protocolsIn(spec: SpecDoc): Protocol[] {
  const out: Protocol[] = [];
  for (const d of devicesOf(spec)) {
    const p = protocolOf(d);
    if (!out.includes(p)) out.push(p);
  }
  return out;
}

/** Indexes in `spec.devices` of the devices of one protocol. */
export function deviceIndexes(spec: SpecDoc, protocol: Protocol): number[] {
  const out: number[] = [];
  const devices = spec.devices;
  if (!Array.isArray(devices)) return out;
  devices.forEach((d, i) => {
    if (isObject(d) && protocolOf(d) === protocol) out.push(i);
  });
  return out;
}

/** A fresh state for a new flow. */
export function emptyState(id = "new-flow"): DesignState {
  return { spec: { version: 1, id, devices: [], operators: [], sinks: [] }, layout: { nodes: {} }, drafts: [] };
}

/** The layout as stored in a version, or an empty one when absent or malformed. */
export function layoutFrom(value: unknown): Layout {
  const nodes: Record<string, Position> = {};
  if (isObject(value) && isObject(value.nodes)) {
    for (const [id, p] of Object.entries(value.nodes)) {
      if (isObject(p) && typeof p.x === "number" && typeof p.y === "number") nodes[id] = { x: p.x, y: p.y };
    }
  }
  return { nodes };
}
