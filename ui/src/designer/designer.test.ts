import { describe, expect, it } from "vitest";

import { EditError, PALETTE, addNode, connect, disconnect, moveNode, removeNode, updateGroup, updateNode } from "./edits";
import { deriveGraph } from "./graph";
import { type DesignState, emptyState } from "./model";
import { pinProblems } from "./problems";
import { parseSpecText, specToYaml } from "./yaml";

/** Every shipped spec's text (the repository's dataflows/specs/). */
const SPECS = import.meta.glob<string>("../../../dataflows/specs/*.{yaml,yml,json}", {
  query: "?raw",
  import: "default",
  eager: true,
});
const item = (type: string) => PALETTE.find((p) => p.type === type)!;
const edgesOf = (s: DesignState) => deriveGraph(s).edges.map((e) => e.id).sort();

describe("spec ⇄ graph", () => {
  it("finds the shipped specs", () => expect(Object.keys(SPECS).length).toBeGreaterThan(0));
  for (const [name, text] of Object.entries(SPECS)) {
    it(`round-trips ${name} through the graph, layout moves and YAML`, () => {
      const original = parseSpecText(text);
      let state: DesignState = { spec: original, layout: { nodes: {} }, drafts: [] };
      for (const node of deriveGraph(state).nodes) state = moveNode(state, node.id, { x: 1, y: 2 });
      expect(parseSpecText(specToYaml(state.spec))).toEqual(original);
    });
  }

  it("derives the chain: groups → first operator → ... → sinks (input or last operator)", () => {
    const spec = parseSpecText(`
version: 1
id: f
devices:
  - {id: a, connection: {host: h}, location: {enterprise: e, site: s, area: a, line: l}, tags: []}
  - {id: b, protocol: opcua, connection: {endpoint: x}, location: {enterprise: e, site: s, area: a, line: l}, tags: []}
operators: [{id: n, type: normalize}, {id: w, type: window, windows: [1m]}]
sinks: [{id: h, type: historian, input: n}, {id: u, type: mqtt_uns}]
`);
    const state = { spec, layout: { nodes: {} }, drafts: [] };
    expect(edgesOf(state)).toEqual(["devices:modbus->n", "devices:opcua->n", "n->h", "n->w", "w->u"].sort());
    const implicit = deriveGraph(state).edges.find((e) => e.id === "w->u")!;
    expect(implicit.data?.implicit).toBe(true);
  });
});

describe("edits", () => {
  it("builds device group → normalize → window → historian + UNS by dropping and connecting", () => {
    let s = emptyState("line");
    let group: string, norm: string, win: string, hist: string, uns: string;
    [s, group] = addNode(s, item("modbus"), { x: 0, y: 0 });
    [s, norm] = addNode(s, item("normalize"));
    [s, win] = addNode(s, item("window"));
    [s, hist] = addNode(s, item("historian"));
    [s, uns] = addNode(s, item("mqtt_uns"));
    expect(s.drafts).toHaveLength(4);
    expect(s.spec.operators).toEqual([]);
    s = connect(s, group, norm);
    s = connect(s, norm, win);
    s = connect(s, win, hist);
    s = connect(s, win, uns);
    expect(s.drafts).toEqual([]);
    expect(s.spec.operators).toEqual([
      { id: "normalize", type: "normalize" },
      { id: "window", type: "window", windows: ["1m"] },
    ]);
    expect(s.spec.sinks).toEqual([
      { id: "historian", type: "historian", input: "window" },
      { id: "mqtt_uns", type: "mqtt_uns", input: "window" },
    ]);
    expect(edgesOf(s)).toEqual(
      ["devices:modbus->normalize", "normalize->window", "window->historian", "window->mqtt_uns"].sort(),
    );
    expect(s.layout.nodes["devices:modbus"]).toEqual({ x: 0, y: 0 });
  });

  it("refuses connections the spec cannot express", () => {
    let s = emptyState();
    let group: string, norm: string, hist: string;
    [s, group] = addNode(s, item("modbus"));
    [s, norm] = addNode(s, item("normalize"));
    [s, hist] = addNode(s, item("historian"));
    expect(() => connect(s, norm, hist)).toThrow(EditError); // norm is a draft
    expect(() => connect(s, hist, group)).toThrow(/take no input/);
    s = connect(s, group, norm);
    expect(() => connect(s, group, hist)).toThrow(/operator/);
  });

  it("disconnect makes a draft and rewires sinks; removing a group removes its devices", () => {
    let s = emptyState();
    let g: string, a: string, b: string, h: string;
    [s, g] = addNode(s, item("modbus"));
    [s, a] = addNode(s, item("normalize"));
    [s, b] = addNode(s, item("deadband"));
    [s, h] = addNode(s, item("historian"));
    s = connect(connect(connect(s, g, a), a, b), b, h);
    s = disconnect(s, b);
    expect(s.spec.operators).toEqual([{ id: "normalize", type: "normalize" }]);
    expect(s.spec.sinks).toEqual([{ id: "historian", type: "historian", input: "normalize" }]);
    expect(s.drafts.map((d) => d.node.id)).toEqual(["deadband"]);
    s = removeNode(s, g);
    expect(s.spec.devices).toEqual([]);
  });

  it("renaming a node moves its layout and the sinks reading from it", () => {
    let s = emptyState();
    let g: string, a: string, h: string;
    [s, g] = addNode(s, item("modbus"));
    [s, a] = addNode(s, item("normalize"), { x: 5, y: 5 });
    [s, h] = addNode(s, item("historian"));
    s = connect(connect(s, g, a), a, h);
    [s] = updateNode(s, a, { id: "norm", type: "normalize" });
    expect(s.spec.sinks).toEqual([{ id: "historian", type: "historian", input: "norm" }]);
    expect(s.layout.nodes.norm).toEqual({ x: 5, y: 5 });
  });

  it("updateGroup keeps devices of other protocols in place", () => {
    let s = emptyState();
    [s] = addNode(s, item("modbus"));
    [s] = addNode(s, item("opcua"));
    [s] = addNode(s, item("modbus"));
    const ids = () => (s.spec.devices as { id: string }[]).map((d) => d.id);
    expect(ids()).toEqual(["device", "server", "device-2"]);
    s = updateGroup(s, "modbus", [{ id: "m1", protocol: "modbus" }, { id: "m2" }, { id: "m3" }]);
    expect(ids()).toEqual(["m1", "server", "m2", "m3"]);
  });
});

describe("problems", () => {
  it("pins a problem on its node and field, also when the path leads the message", () => {
    let s = emptyState();
    let g: string, n: string, w: string;
    [s, g] = addNode(s, item("opcua"));
    [s] = addNode(s, item("modbus"));
    [s, n] = addNode(s, item("normalize"));
    [s, w] = addNode(s, item("window"));
    s = connect(connect(s, g, n), n, w);
    const pinned = pinProblems(s, [
      { path: "operators[1].windows[0]", message: "String should match pattern" },
      { path: "", message: "operators[0]: normalize node is odd" },
      { path: "devices[1].tags[0].scale", message: "scale must not be 0" },
      { path: "shifts[0].start", message: "bad time" },
    ]);
    expect(pinned.nodes.window).toEqual(["windows[0]: String should match pattern"]);
    expect(pinned.fields.window).toEqual({ windows: { "0": { __errors: ["String should match pattern"] } } });
    expect(pinned.nodes.normalize).toEqual(["normalize node is odd"]);
    expect(pinned.nodes["devices:modbus"]).toEqual(["device.tags[0].scale: scale must not be 0"]);
    expect(pinned.fields["devices:modbus"]).toEqual({ "0": { tags: { "0": { scale: { __errors: ["scale must not be 0"] } } } } });
    expect(pinned.flow).toEqual(["shifts[0].start: bad time"]);
  });
});

describe("yaml", () => {
  it("writes what YAML 1.1 would misread quoted, and machine states with integer keys", () => {
    const text = specToYaml({ version: 1, id: "f", shifts: [{ start: "06:00", name: "yes" }], machines: [{ states: { "1": "running" } }] });
    expect(text).toContain('start: "06:00"');
    expect(text).toContain('name: "yes"');
    expect(text).toMatch(/\n\s+1: running/);
  });
});
