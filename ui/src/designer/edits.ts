/**
 * Every edit the designer can make, as a pure function from one design state to the next.
 *
 * Each returns a new state (the old one is never mutated) or throws `EditError` with a sentence
 * the canvas shows. Edits keep every key of the document they do not change.
 */
import {
  type DesignState,
  type Draft,
  type JsonObject,
  type Position,
  type Protocol,
  type SpecDoc,
  deviceIndexes,
  devicesOf,
  groupId,
  isObject,
  operatorsOf,
  protocolOf,
  sinksOf,
} from "./model";

export class EditError extends Error {}

/** What the palette offers; `template` is the new node's document (a minimal valid one). */
export interface PaletteItem {
  kind: "source" | "operator" | "sink";
  type: string;
  label: string;
  template: JsonObject;
}

const LOCATION = { enterprise: "acme", site: "plant1", area: "area1", line: "line1" };

export const PALETTE: PaletteItem[] = [
  {
    kind: "source",
    type: "modbus",
    label: "Modbus",
    template: {
      id: "device",
      protocol: "modbus",
      connection: { host: "127.0.0.1", port: 502, unit_id: 1 },
      poll_interval_s: 1.0,
      location: LOCATION,
      tags: [{ name: "value", table: "holding", address: 0, data_type: "uint16" }],
    },
  },
  {
    kind: "source",
    type: "opcua",
    label: "OPC UA",
    template: {
      id: "server",
      protocol: "opcua",
      connection: { endpoint: "opc.tcp://127.0.0.1:4840" },
      location: LOCATION,
      tags: [{ name: "value", node_id: "ns=2;i=2" }],
    },
  },
  {
    kind: "source",
    type: "s7",
    label: "Siemens S7",
    template: {
      id: "plc",
      protocol: "s7",
      connection: { host: "127.0.0.1", rack: 0, slot: 1 },
      location: LOCATION,
      tags: [{ name: "value", address: "DB1.DBD0", data_type: "REAL" }],
    },
  },
  {
    kind: "source",
    type: "mqtt",
    label: "MQTT",
    template: {
      id: "gateway",
      protocol: "mqtt",
      location: LOCATION,
      tags: [{ name: "value", topic: "sensors/value" }],
    },
  },
  { kind: "operator", type: "normalize", label: "Normalize", template: { type: "normalize" } },
  { kind: "operator", type: "calculate", label: "Calculate", template: { type: "calculate" } },
  { kind: "operator", type: "deadband", label: "Deadband", template: { type: "deadband" } },
  { kind: "operator", type: "swinging_door", label: "Swinging door", template: { type: "swinging_door" } },
  { kind: "operator", type: "window", label: "Window", template: { type: "window", windows: ["1m"] } },
  { kind: "operator", type: "anomaly", label: "Anomaly", template: { type: "anomaly" } },
  { kind: "operator", type: "oee", label: "OEE", template: { type: "oee", window: "5m" } },
  { kind: "sink", type: "mqtt_uns", label: "UNS (MQTT)", template: { type: "mqtt_uns" } },
  { kind: "sink", type: "historian", label: "Historian", template: { type: "historian" } },
  {
    kind: "sink",
    type: "sparkplug_b",
    label: "Sparkplug B",
    template: { type: "sparkplug_b", group_id: "nexus", edge_node_id: "edge1" },
  },
];

const clone = <T>(value: T): T => structuredClone(value);

/** Graph ids in use: spec node ids, draft ids and device-group ids. */
function usedIds(state: DesignState): Set<string> {
  const ids = new Set<string>();
  for (const n of [...operatorsOf(state.spec), ...sinksOf(state.spec), ...state.drafts.map((d) => d.node)]) {
    if (typeof n.id === "string") ids.add(n.id);
  }
  return ids;
}

function freshId(base: string, used: Set<string>): string {
  const stem = base.replace(/[^A-Za-z0-9_-]/g, "_");
  if (!used.has(stem)) return stem;
  for (let i = 2; ; i++) if (!used.has(`${stem}-${i}`)) return `${stem}-${i}`;
}

function withSpec(state: DesignState, spec: SpecDoc): DesignState {
  return { ...state, spec };
}

function setList(spec: SpecDoc, key: "devices" | "operators" | "sinks", items: JsonObject[]): SpecDoc {
  return { ...spec, [key]: items };
}

function withPosition(state: DesignState, id: string, position: Position | undefined): DesignState {
  if (!position) return state;
  return { ...state, layout: { nodes: { ...state.layout.nodes, [id]: position } } };
}

/**
 * Drop a palette item. A device group adds a device of that protocol to the spec (a second drop
 * of the same protocol adds another device to its group); an operator or sink becomes a draft
 * until it is connected. Returns the new state and the graph id of the node.
 */
export function addNode(state: DesignState, item: PaletteItem, position?: Position): [DesignState, string] {
  if (item.kind === "source") {
    const protocol = item.type as Protocol;
    const deviceIds = new Set(devicesOf(state.spec).map((d) => String(d.id)));
    const device = { ...clone(item.template), id: freshId(String(item.template.id), deviceIds) };
    const id = groupId(protocol);
    const next = withSpec(state, setList(state.spec, "devices", [...devicesOf(state.spec), device]));
    return [state.layout.nodes[id] ? next : withPosition(next, id, position), id];
  }
  const id = freshId(item.type, usedIds(state));
  const draft: Draft = { kind: item.kind, node: { id, ...clone(item.template) } };
  return [withPosition({ ...state, drafts: [...state.drafts, draft] }, id, position), id];
}

type Located =
  | { where: "group"; protocol: Protocol }
  | { where: "operator"; index: number; node: JsonObject }
  | { where: "sink"; index: number; node: JsonObject }
  | { where: "draft"; index: number; draft: Draft };

function locate(state: DesignState, id: string): Located {
  if (id.startsWith("devices:")) {
    const protocol = id.slice("devices:".length) as Protocol;
    if (deviceIndexes(state.spec, protocol).length > 0) return { where: "group", protocol };
  }
  const ops = operatorsOf(state.spec);
  const oi = ops.findIndex((n) => n.id === id);
  if (oi >= 0) return { where: "operator", index: oi, node: ops[oi] };
  const sinks = sinksOf(state.spec);
  const si = sinks.findIndex((n) => n.id === id);
  if (si >= 0) return { where: "sink", index: si, node: sinks[si] };
  const di = state.drafts.findIndex((d) => d.node.id === id);
  if (di >= 0) return { where: "draft", index: di, draft: state.drafts[di] };
  throw new EditError(`no node ${JSON.stringify(id)}`);
}

/** Sinks reading from `removed` read from `replacement` instead (none: the last operator). */
function rewireSinks(sinks: JsonObject[], removed: string, replacement: string | undefined): JsonObject[] {
  return sinks.map((s) => {
    if (s.input !== removed) return s;
    const { input: _dropped, ...rest } = s;
    return replacement === undefined ? rest : { ...s, input: replacement };
  });
}

/** Take an operator out of the chain (the chain closes up); returns the state and its document. */
function detachOperator(state: DesignState, index: number): [DesignState, JsonObject] {
  const ops = operatorsOf(state.spec);
  const node = ops[index];
  const before = index > 0 ? String(ops[index - 1].id) : undefined;
  let spec = setList(state.spec, "operators", ops.filter((_, i) => i !== index));
  spec = setList(spec, "sinks", rewireSinks(sinksOf(spec), String(node.id), before));
  return [withSpec(state, spec), node];
}

function removeDraft(state: DesignState, index: number): DesignState {
  return { ...state, drafts: state.drafts.filter((_, i) => i !== index) };
}

/**
 * Connect `source` → `target`: place the target in the flow after the source.
 *
 * Target operator: moved (or, for a draft, inserted) right after the source operator, or first
 * when the source is a device group. Target sink: takes its points from the source operator
 * (its `input`); from a device group only when the flow has no operators.
 */
export function connect(state: DesignState, source: string, target: string): DesignState {
  if (source === target) throw new EditError("a node cannot feed itself");
  const from = locate(state, source);
  const to = locate(state, target);
  if (to.where === "group") throw new EditError("device groups take no input: they are where points start");
  if (from.where === "sink") throw new EditError(`${source} is a sink: nothing comes out of it`);
  if (from.where === "draft") {
    throw new EditError(`${source} is not connected yet: connect something into it first`);
  }
  const targetKind = to.where === "draft" ? to.draft.kind : to.where;
  if (targetKind === "operator") {
    let next = state;
    let node: JsonObject;
    if (to.where === "draft") {
      node = to.draft.node;
      next = removeDraft(next, to.index);
    } else if (to.where === "operator") {
      [next, node] = detachOperator(next, to.index);
    } else {
      throw new EditError("unreachable");
    }
    const ops = operatorsOf(next.spec);
    const at = from.where === "group" ? 0 : ops.findIndex((n) => n.id === source) + 1;
    const chain = [...ops.slice(0, at), node, ...ops.slice(at)];
    return withSpec(next, setList(next.spec, "operators", chain));
  }
  // the target is a sink
  let input: string | undefined;
  if (from.where === "group") {
    if (operatorsOf(state.spec).length > 0) {
      throw new EditError("a sink takes points from an operator: connect it to one (the flow has operators)");
    }
  } else {
    input = source;
  }
  let next = state;
  let node: JsonObject;
  if (to.where === "draft") {
    node = to.draft.node;
    next = removeDraft(next, to.index);
  } else {
    node = (to as { node: JsonObject }).node;
  }
  const { input: _old, ...rest } = node;
  const wired = input === undefined ? rest : { ...rest, input };
  const sinks = sinksOf(next.spec);
  const i = sinks.findIndex((s) => s.id === target);
  const list = i >= 0 ? sinks.map((s, j) => (j === i ? wired : s)) : [...sinks, wired];
  return withSpec(next, setList(next.spec, "sinks", list));
}

/** Remove the edge into `target`: the target leaves the flow and becomes a draft again. */
export function disconnect(state: DesignState, target: string): DesignState {
  const to = locate(state, target);
  if (to.where === "operator") {
    const [next, node] = detachOperator(state, to.index);
    return { ...next, drafts: [...next.drafts, { kind: "operator", node }] };
  }
  if (to.where === "sink") {
    const { input: _dropped, ...node } = to.node;
    const spec = setList(state.spec, "sinks", sinksOf(state.spec).filter((_, i) => i !== to.index));
    return { ...withSpec(state, spec), drafts: [...state.drafts, { kind: "sink", node }] };
  }
  return state; // device groups have no incoming edge; drafts none at all
}

/** Delete a node: a device group deletes its devices. */
export function removeNode(state: DesignState, id: string): DesignState {
  const at = locate(state, id);
  const { [id]: _gone, ...positions } = state.layout.nodes;
  const base = { ...state, layout: { nodes: positions } };
  switch (at.where) {
    case "group": {
      const devices = devicesOf(state.spec).filter((d) => protocolOf(d) !== at.protocol);
      return withSpec(base, setList(state.spec, "devices", devices));
    }
    case "operator":
      return detachOperator(base, at.index)[0];
    case "sink":
      return withSpec(base, setList(state.spec, "sinks", sinksOf(state.spec).filter((_, i) => i !== at.index)));
    case "draft":
      return removeDraft(base, at.index);
  }
}

/** The document a node's form edits: a node's own, or the list of a group's devices. */
export function nodeDocument(state: DesignState, id: string): JsonObject | JsonObject[] {
  const at = locate(state, id);
  if (at.where === "group") {
    const all = state.spec.devices as JsonObject[];
    return deviceIndexes(state.spec, at.protocol).map((i) => all[i]);
  }
  return at.where === "draft" ? at.draft.node : at.node;
}

/**
 * Replace a node's document with what its form produced. A changed `id` moves the layout entry
 * and the `input` of the sinks that read from it. Returns the new state and the node's graph id.
 */
export function updateNode(state: DesignState, id: string, doc: JsonObject): [DesignState, string] {
  const at = locate(state, id);
  if (at.where === "group") throw new EditError("a device group is edited as a list: use updateGroup");
  const newId = typeof doc.id === "string" && doc.id !== "" ? doc.id : id;
  if (newId !== id && usedIds(state).has(newId)) throw new EditError(`id ${JSON.stringify(newId)} is taken`);
  let next: DesignState = state;
  if (at.where === "draft") {
    next = { ...state, drafts: state.drafts.map((d, i) => (i === at.index ? { ...d, node: doc } : d)) };
  } else {
    const key = at.where === "operator" ? "operators" : "sinks";
    const items = (key === "operators" ? operatorsOf : sinksOf)(state.spec).map((n, i) => (i === at.index ? doc : n));
    next = withSpec(state, setList(state.spec, key, items));
  }
  if (newId !== id) {
    if (at.where === "operator") next = withSpec(next, setList(next.spec, "sinks", rewireSinks(sinksOf(next.spec), id, newId)));
    const { [id]: position, ...positions } = next.layout.nodes;
    next = { ...next, layout: { nodes: position ? { ...positions, [newId]: position } : positions } };
  }
  return [next, newId];
}

/**
 * Replace a group's devices with the form's list, keeping each device at its place in
 * `spec.devices` (new ones go to the end, removed ones leave their place).
 */
export function updateGroup(state: DesignState, protocol: Protocol, devices: JsonObject[]): DesignState {
  const all = Array.isArray(state.spec.devices) ? state.spec.devices : [];
  const queue = [...devices];
  const out = [];
  for (const d of all) {
    if (isObject(d) && protocolOf(d) === protocol) {
      const replacement = queue.shift();
      if (replacement !== undefined) out.push(replacement);
    } else {
      out.push(d);
    }
  }
  out.push(...queue);
  return withSpec(state, { ...state.spec, devices: out });
}

/** The flow-wide settings: every top-level key but the node lists. */
export function flowSettings(spec: SpecDoc): JsonObject {
  const { devices: _d, operators: _o, sinks: _s, ...rest } = spec;
  return rest;
}

export function updateSettings(state: DesignState, settings: JsonObject): DesignState {
  const spec: SpecDoc = {};
  for (const [key, value] of Object.entries(state.spec)) {
    if (key === "devices" || key === "operators" || key === "sinks") spec[key] = value;
    else if (key in settings) spec[key] = settings[key];
  }
  for (const [key, value] of Object.entries(settings)) if (!(key in spec)) spec[key] = value;
  return withSpec(state, spec);
}

export function moveNode(state: DesignState, id: string, position: Position): DesignState {
  return withPosition(state, id, { x: Math.round(position.x), y: Math.round(position.y) });
}
