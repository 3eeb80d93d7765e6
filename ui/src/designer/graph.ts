/**
 * The graph view of a design: nodes and edges derived from the spec document plus layout.
 *
 * Nothing here is stored: the canvas is redrawn from the document after every edit.
 */
import type { Edge, Node } from "@xyflow/react";

import {
  type DesignState,
  type JsonObject,
  type NodeKind,
  type Position,
  type Protocol,
  deviceIndexes,
  groupId,
  operatorsOf,
  protocolsIn,
  sinksOf,
} from "./model";

export interface NodeData extends Record<string, unknown> {
  kind: NodeKind;
  /** The operator or sink `type`, or the protocol of a device group. */
  type: string;
  label: string;
  detail: string;
  /** Where the node's document is: `operators[2]`, `sinks[0]`, `devices` (a group), or `draft`. */
  path: string;
  protocol?: Protocol;
  draft: boolean;
  errors: string[];
}

export type DesignNode = Node<NodeData>;

export interface EdgeData extends Record<string, unknown> {
  /** A sink without `input` takes the last operator's points: drawn dashed. */
  implicit: boolean;
}

export type DesignEdge = Edge<EdgeData>;

const COLUMN = 240;
const ROW = 110;

const PER_ROW = 4;

/** Where a node without a stored position goes: sources left, operators in rows of four (a long
 * chain stays readable on a laptop screen), sinks right. */
function defaultPosition(kind: NodeKind, index: number, operators: number): Position {
  if (kind === "source") return { x: 0, y: index * ROW };
  if (kind === "operator") return { x: COLUMN * (1 + (index % PER_ROW)), y: Math.floor(index / PER_ROW) * ROW * 1.5 };
  return { x: COLUMN * (1 + Math.min(operators, PER_ROW)), y: index * ROW };
}

const PROTOCOL_LABEL: Record<Protocol, string> = {
  modbus: "Modbus devices",
  opcua: "OPC UA devices",
  s7: "S7 devices",
  mqtt: "MQTT devices",
};

function nodeDetail(node: JsonObject): string {
  if (node.type === "window" && Array.isArray(node.windows)) return node.windows.join(", ");
  if (node.type === "oee" && typeof node.window === "string") return `per ${node.window}`;
  if (typeof node.input === "string") return `from ${node.input}`;
  return String(node.type ?? "");
}

function idOf(node: JsonObject, fallback: string): string {
  return typeof node.id === "string" && node.id !== "" ? node.id : fallback;
}

/** Nodes and edges of a design; `errors` maps a graph node id to the messages pinned on it. */
export function deriveGraph(
  state: DesignState,
  errors: Record<string, string[]> = {},
): { nodes: DesignNode[]; edges: DesignEdge[] } {
  const { spec, layout, drafts } = state;
  const ops = operatorsOf(spec);
  const sinks = sinksOf(spec);
  const nodes: DesignNode[] = [];
  const edges: DesignEdge[] = [];
  const at = (id: string, kind: NodeKind, i: number) => layout.nodes[id] ?? defaultPosition(kind, i, ops.length);

  const groups = protocolsIn(spec);
  groups.forEach((protocol, i) => {
    const id = groupId(protocol);
    const all = spec.devices as JsonObject[];
    const names = deviceIndexes(spec, protocol).map((j) => String(all[j].id ?? "?"));
    nodes.push({
      id,
      type: "design",
      position: at(id, "source", i),
      data: {
        kind: "source",
        type: protocol,
        protocol,
        label: PROTOCOL_LABEL[protocol],
        detail: `${names.length} device${names.length === 1 ? "" : "s"}: ${names.slice(0, 3).join(", ")}${names.length > 3 ? ", …" : ""}`,
        path: "devices",
        draft: false,
        errors: errors[id] ?? [],
      },
    });
  });
  const opIds = ops.map((op, i) => idOf(op, `operators[${i}]`));
  ops.forEach((op, i) => {
    const id = opIds[i];
    nodes.push({
      id,
      type: "design",
      position: at(id, "operator", i),
      data: {
        kind: "operator",
        type: String(op.type ?? "?"),
        label: id,
        detail: nodeDetail(op),
        path: `operators[${i}]`,
        draft: false,
        errors: errors[id] ?? [],
      },
    });
  });
  sinks.forEach((sink, i) => {
    const id = idOf(sink, `sinks[${i}]`);
    nodes.push({
      id,
      type: "design",
      position: at(id, "sink", i),
      data: {
        kind: "sink",
        type: String(sink.type ?? "?"),
        label: id,
        detail: nodeDetail(sink),
        path: `sinks[${i}]`,
        draft: false,
        errors: errors[id] ?? [],
      },
    });
  });
  drafts.forEach((d, i) => {
    const id = idOf(d.node, `draft-${i}`);
    nodes.push({
      id,
      type: "design",
      position: layout.nodes[id] ?? { x: COLUMN * (i + 1), y: ROW * 3 },
      data: {
        kind: d.kind,
        type: String(d.node.type ?? "?"),
        label: id,
        detail: "not connected",
        path: "draft",
        draft: true,
        errors: errors[id] ?? [],
      },
    });
  });

  const edge = (source: string, target: string, implicit = false) =>
    edges.push({
      id: `${source}->${target}`,
      source,
      target,
      data: { implicit },
      style: implicit ? { strokeDasharray: "6 4" } : undefined,
      ariaLabel: `${source} to ${target}`,
    });
  const groupIds = groups.map(groupId);
  if (opIds.length > 0) for (const g of groupIds) edge(g, opIds[0]);
  for (let i = 1; i < opIds.length; i++) edge(opIds[i - 1], opIds[i]);
  sinks.forEach((sink, i) => {
    const id = idOf(sink, `sinks[${i}]`);
    if (typeof sink.input === "string") {
      if (opIds.includes(sink.input)) edge(sink.input, id);
    } else if (opIds.length > 0) {
      edge(opIds[opIds.length - 1], id, true);
    } else {
      for (const g of groupIds) edge(g, id, true);
    }
  });
  return { nodes, edges };
}

/** Where a node added without a drop point goes: its kind's column, the first free row. */
export function freePosition(nodes: DesignNode[], kind: NodeKind): Position {
  const operators = nodes.filter((n) => n.data.kind === "operator").length;
  const x = kind === "source" ? 0 : kind === "operator" ? COLUMN * (operators + 1) : COLUMN * (operators + 2);
  const near = (p: Position, y: number) => Math.abs(p.x - x) < COLUMN * 0.8 && Math.abs(p.y - y) < ROW * 0.8;
  let y = 0;
  while (nodes.some((n) => near(n.position, y))) y += ROW;
  return { x, y };
}
