/**
 * Pin the API's validation problems (`{"path": "operators[1].windows[0]", "message"}`) on the node
 * and the form field they concern.
 *
 * Checks that span fields report at the level above with the field path leading the message
 * (`path ""`, message `operators[1]: window node ...`); that leading path is read too.
 */
import { type DesignState, type JsonObject, devicesOf, groupId, operatorsOf, protocolOf, sinksOf } from "./model";

export interface Problem {
  path: string;
  message: string;
}

export type PathPart = string | number;

/** A nested error tree in the shape JSON Schema form libraries take (`{field: {__errors: [...]}}`). */
export interface ErrorTree {
  __errors?: string[];
  [key: string]: ErrorTree | string[] | undefined;
}

export interface Pinned {
  /** Messages per graph node id, as shown on the node. */
  nodes: Record<string, string[]>;
  /** Field errors per graph node id, relative to that node's form. */
  fields: Record<string, ErrorTree>;
  /** Problems of the flow as a whole (its settings, or no node in particular). */
  flow: string[];
  /** Field errors of the flow settings form. */
  flowFields: ErrorTree;
}

/** `devices[0].tags[1].scale` → `["devices", 0, "tags", 1, "scale"]`. */
export function parsePath(path: string): PathPart[] {
  const parts: PathPart[] = [];
  for (const m of path.matchAll(/([^.[\]]+)|\[(\d+)\]/g)) {
    if (m[2] !== undefined) parts.push(Number(m[2]));
    else parts.push(m[1]);
  }
  return parts;
}

export function formatPath(parts: PathPart[]): string {
  return parts.map((p, i) => (typeof p === "number" ? `[${p}]` : i === 0 ? p : `.${p}`)).join("");
}

const LEADING = /^([A-Za-z_]\w*(?:\[\d+\])*(?:\.[A-Za-z_]\w*(?:\[\d+\])*)*): ([\s\S]+)$/;

/** A problem's full path (its own plus the one leading its message) and the rest of the message. */
export function splitProblem(problem: Problem): { parts: PathPart[]; message: string } {
  let parts = parsePath(problem.path);
  let message = problem.message;
  const m = LEADING.exec(message);
  if (m) {
    parts = [...parts, ...parsePath(m[1])];
    message = m[2];
  }
  return { parts, message };
}

function addTo(tree: ErrorTree, parts: PathPart[], message: string): void {
  let node = tree;
  for (const p of parts) {
    const key = String(p);
    const child = node[key];
    if (child === undefined || Array.isArray(child)) node[key] = {};
    node = node[key] as ErrorTree;
  }
  node.__errors = [...(node.__errors ?? []), message];
}

export function pinProblems(state: DesignState, problems: Problem[]): Pinned {
  const out: Pinned = { nodes: {}, fields: {}, flow: [], flowFields: {} };
  const devices = devicesOf(state.spec);
  const pin = (id: string, field: PathPart[], label: PathPart[], message: string) => {
    const where = formatPath(label);
    (out.nodes[id] ??= []).push(where ? `${where}: ${message}` : message);
    addTo((out.fields[id] ??= {}), field, message);
  };
  for (const problem of problems) {
    const { parts, message } = splitProblem(problem);
    const [head, index, ...rest] = parts;
    if (head === "devices" && typeof index === "number" && devices[index]) {
      const device = devices[index];
      const protocol = protocolOf(device);
      const inGroup = devices.slice(0, index).filter((d) => protocolOf(d) === protocol).length;
      pin(groupId(protocol), [inGroup, ...rest], [String(device.id ?? index), ...rest], message);
      continue;
    }
    const nodes: JsonObject[] | null =
      head === "operators" ? operatorsOf(state.spec) : head === "sinks" ? sinksOf(state.spec) : null;
    if (nodes && typeof index === "number" && nodes[index]) {
      pin(String(nodes[index].id ?? `${head}[${index}]`), rest, rest, message);
      continue;
    }
    const where = formatPath(parts);
    out.flow.push(where ? `${where}: ${message}` : message);
    if (parts.length > 0 && head !== "devices" && head !== "operators" && head !== "sinks") {
      addTo(out.flowFields, parts, message);
    }
  }
  return out;
}
