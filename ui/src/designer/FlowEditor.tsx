// The designer: palette, canvas and inspector over one design state (spec document + layout).
// Every canvas gesture goes through an edit in edits.ts; the canvas is redrawn from the result.
import type { RJSFSchema } from "@rjsf/utils";
import { useQueryClient } from "@tanstack/react-query";
import {
  Background,
  type Connection,
  Controls,
  type EdgeChange,
  type NodeChange,
  ReactFlow,
  ReactFlowProvider,
  useNodesInitialized,
  useReactFlow,
} from "@xyflow/react";
import "@xyflow/react/dist/style.css";
import { type DragEvent, useEffect, useMemo, useRef, useState } from "react";
import { useLocation, useNavigate } from "react-router";

import { ApiError } from "../api/client";
import { useAuth } from "../api/auth";
import {
  EditError,
  PALETTE,
  type PaletteItem,
  addNode,
  connect,
  disconnect,
  moveNode,
  removeNode,
  updateGroup,
  updateNode,
  updateSettings,
} from "./edits";
import { type DeployOut, flowsApi } from "./flowsApi";
import { type DesignNode, deriveGraph, freePosition } from "./graph";
import Inspector from "./Inspector";
import { type DesignState, type Json, type JsonObject, type Layout, type Protocol, isObject } from "./model";
import NodeView from "./NodeView";
import { type Pinned, type Problem, pinProblems } from "./problems";
import Versions from "./Versions";
import { ImportError, parseSpecText, specToYaml } from "./yaml";
import "./designer.css";

const NODE_TYPES = { design: NodeView };
const NO_PROBLEMS: Pinned = { nodes: {}, fields: {}, flow: [], flowFields: {} };
const DRAG_TYPE = "application/x-nexus-palette";

export interface EditorProps {
  /** The stored flow's id; null for a new flow (the first save creates it). */
  flowId: string | null;
  baseVersion: number | null;
  deployedVersion: number | null;
  initial: DesignState;
  schema: RJSFSchema;
  onReload: () => void;
}

type Dims = Record<string, { width: number; height: number }>;

function problemsOf(e: unknown): Problem[] | null {
  return e instanceof ApiError && e.status === 422 ? (e.problem.problems ?? []) : null;
}

function describe(e: unknown): string {
  if (e instanceof ApiError) {
    if (e.status === 409) return `${e.message} (someone saved a newer version: reload the flow)`;
    return e.message;
  }
  return e instanceof Error ? e.message : String(e);
}

function Palette({ readOnly, onAdd }: { readOnly: boolean; onAdd: (item: PaletteItem) => void }) {
  const groups = [
    ["source", "Sources (device groups)"],
    ["operator", "Operators"],
    ["sink", "Sinks"],
  ] as const;
  return (
    <nav className="palette" aria-label="node palette">
      {groups.map(([kind, title]) => (
        <div key={kind}>
          <h3>{title}</h3>
          {PALETTE.filter((p) => p.kind === kind).map((p) => (
            <button
              key={p.type}
              type="button"
              className={`palette-item palette-${kind}`}
              data-testid={`palette-${p.type}`}
              draggable={!readOnly}
              disabled={readOnly}
              title="Drag onto the canvas, or press Enter to add"
              onDragStart={(e) => {
                e.dataTransfer.setData(DRAG_TYPE, p.type);
                e.dataTransfer.effectAllowed = "move";
              }}
              onClick={() => onAdd(p)}
            >
              {p.label}
            </button>
          ))}
        </div>
      ))}
    </nav>
  );
}

function download(name: string, text: string) {
  const url = URL.createObjectURL(new Blob([text], { type: "application/yaml" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function Editor({ flowId, baseVersion, deployedVersion, initial, schema, onReload }: EditorProps) {
  const { can } = useAuth();
  const readOnly = !can("flows:write");
  const canDeploy = can("flows:deploy");
  const navigate = useNavigate();
  const location = useLocation();
  const arrived = location.state as { deployed?: DeployOut; notice?: string } | null;
  const queries = useQueryClient();
  const flow = useReactFlow();
  const [design, setDesign] = useState<DesignState>(initial);
  const current = useRef(design);
  const [base, setBase] = useState(baseVersion);
  const [dirty, setDirty] = useState(flowId === null);
  const [selected, setSelected] = useState<string | null>(null);
  const [selectedEdge, setSelectedEdge] = useState<string | null>(null);
  const [dims, setDims] = useState<Dims>({});
  const [problems, setProblems] = useState<Pinned>(NO_PROBLEMS);
  const [notice, setNotice] = useState<{ text: string; bad: boolean } | null>(
    arrived?.notice ? { text: arrived.notice, bad: false } : null,
  );
  const [deployed, setDeployed] = useState<DeployOut | null>(arrived?.deployed ?? null);
  const [busy, setBusy] = useState(false);
  const [showVersions, setShowVersions] = useState(false);
  const fileInput = useRef<HTMLInputElement>(null);
  const [fitPending, setFitPending] = useState(false);

  // What the previous page showed (a first save, a rollback) is shown once: not again on reload.
  useEffect(() => {
    if (arrived) navigate(location.pathname, { replace: true, state: null });
  }, []); // eslint-disable-line react-hooks/exhaustive-deps -- once, on mount
  const measured = useNodesInitialized();

  // Fit the view once the nodes an import or a keyboard add made have their sizes.
  useEffect(() => {
    if (fitPending && measured) {
      void flow.fitView({ maxZoom: 1, padding: 0.1 });
      setFitPending(false);
    }
  }, [fitPending, measured, flow]);

  /** Apply an edit to the newest state; a refused edit shows its reason instead. */
  function edit(change: (d: DesignState) => DesignState, layoutOnly = false): boolean {
    try {
      const next = change(current.current);
      current.current = next;
      setDesign(next);
      setDirty(true);
      if (!layoutOnly) setNotice(null);
      return true;
    } catch (e) {
      if (!(e instanceof EditError)) throw e;
      setNotice({ text: e.message, bad: true });
      return false;
    }
  }

  // The API validates the document after every change (debounced); its problems are pinned.
  useEffect(() => {
    const spec = design.spec;
    if (!Array.isArray(spec.devices) || spec.devices.length === 0) {
      setProblems(pinProblems(current.current, [{ path: "devices", message: "add a device group from the palette" }]));
      return;
    }
    const abort = new AbortController();
    const timer = setTimeout(() => {
      flowsApi
        .validate(spec, abort.signal)
        .then(() => setProblems(NO_PROBLEMS))
        .catch((e: unknown) => {
          const found = problemsOf(e);
          if (found) setProblems(pinProblems(current.current, found));
          else if (!abort.signal.aborted) setNotice({ text: `validation failed: ${describe(e)}`, bad: true });
        });
    }, 350);
    return () => {
      clearTimeout(timer);
      abort.abort();
    };
  }, [design.spec]);

  const graph = useMemo(() => deriveGraph(design, problems.nodes), [design, problems]);
  const nodes: DesignNode[] = graph.nodes.map((n) => ({ ...n, selected: n.id === selected, measured: dims[n.id] }));
  const edges = graph.edges.map((e) => ({ ...e, selected: e.id === selectedEdge }));

  function onNodesChange(changes: NodeChange<DesignNode>[]) {
    const newDims: Dims = {};
    for (const c of changes) {
      if (c.type === "dimensions" && c.dimensions) newDims[c.id] = c.dimensions;
      else if (c.type === "position" && c.position && !readOnly) edit((d) => moveNode(d, c.id, c.position!), true);
      else if (c.type === "select") {
        if (c.selected) {
          setSelected(c.id);
          setSelectedEdge(null);
        } else setSelected((s) => (s === c.id ? null : s));
      }
    }
    if (Object.keys(newDims).length) setDims((d) => ({ ...d, ...newDims }));
  }

  function onEdgesChange(changes: EdgeChange[]) {
    for (const c of changes) {
      if (c.type === "select") {
        if (c.selected) {
          setSelectedEdge(c.id);
          setSelected(null);
        } else setSelectedEdge((s) => (s === c.id ? null : s));
      }
    }
  }

  /** The Delete key: deleted nodes leave the spec; a deleted edge alone detaches its target
   * (the edges of a deleted node go with it, they detach nothing). */
  function onDelete({ nodes: gone, edges: cut }: { nodes: DesignNode[]; edges: { target: string; source: string }[] }) {
    if (readOnly) return;
    const ids = new Set(gone.map((n) => n.id));
    for (const n of gone) edit((d) => removeNode(d, n.id));
    for (const e of cut) if (!ids.has(e.target) && !ids.has(e.source)) edit((d) => disconnect(d, e.target));
    setSelected((s) => (s !== null && ids.has(s) ? null : s));
    setSelectedEdge(null);
  }

  function add(item: PaletteItem, position?: { x: number; y: number }) {
    let id = "";
    const at = position ?? freePosition(graph.nodes, item.kind);
    if (edit((d) => ([d, id] = addNode(d, item, at))[0])) {
      setSelected(id);
      setSelectedEdge(null);
      if (!position) setFitPending(true);
    }
  }

  function onDrop(e: DragEvent) {
    e.preventDefault();
    const item = PALETTE.find((p) => p.type === e.dataTransfer.getData(DRAG_TYPE));
    if (item && !readOnly) add(item, flow.screenToFlowPosition({ x: e.clientX, y: e.clientY }));
  }

  function onNodeChange(id: string, doc: Json) {
    const node = graph.nodes.find((n) => n.id === id);
    if (!node) return;
    if (node.data.kind === "source") {
      const devices = Array.isArray(doc) ? doc.filter(isObject) : [];
      edit((d) => updateGroup(d, node.data.protocol as Protocol, devices));
    } else if (isObject(doc)) {
      let newId = id;
      if (edit((d) => ([d, newId] = updateNode(d, id, doc))[0]) && newId !== id) setSelected(newId);
    }
  }

  function layoutToSave(): Layout {
    const ids = new Set(graph.nodes.map((n) => n.id));
    return { nodes: Object.fromEntries(Object.entries(design.layout.nodes).filter(([id]) => ids.has(id))) };
  }

  /** Store the document as a new version; the version number, or null when it was refused. */
  async function save(): Promise<number | null> {
    const d = current.current;
    if (d.drafts.length > 0) {
      const ids = d.drafts.map((x) => String(x.node.id)).join(", ");
      setNotice({ text: `Connect or delete the nodes that are not connected first: ${ids}`, bad: true });
      return null;
    }
    try {
      const v =
        flowId === null || base === null
          ? await flowsApi.create(d.spec, layoutToSave(), "created in the designer")
          : await flowsApi.update(flowId, base, d.spec, layoutToSave(), "edited in the designer");
      setBase(v.number);
      setDirty(false);
      setProblems(NO_PROBLEMS);
      await queries.invalidateQueries({ queryKey: ["flows"] });
      await queries.invalidateQueries({ queryKey: ["flow-versions"] });
      return v.number;
    } catch (e) {
      const found = problemsOf(e);
      if (found) setProblems(pinProblems(d, found));
      setNotice({ text: `Not saved: ${describe(e)}`, bad: true });
      return null;
    }
  }

  async function run(action: () => Promise<void>) {
    setBusy(true);
    try {
      await action();
    } finally {
      setBusy(false);
    }
  }

  /** A new flow's first save makes it a stored flow: its page (what was shown goes along). */
  const afterCreate = (id: string, state: { deployed?: DeployOut; notice?: string }) => {
    if (flowId === null) navigate(`/flows/${encodeURIComponent(id)}`, { replace: true, state });
  };

  const onSave = () =>
    run(async () => {
      const n = await save();
      if (n !== null) {
        setNotice({ text: `Saved version ${n}`, bad: false });
        afterCreate(String(current.current.spec.id), { notice: `Saved version ${n}` });
      }
    });

  const onDeploy = () =>
    run(async () => {
      const n = dirty || base === null ? await save() : base;
      if (n === null) return;
      const id = String(current.current.spec.id);
      try {
        const result = await flowsApi.deploy(id, n);
        setDeployed(result);
        setNotice(null);
        await queries.invalidateQueries({ queryKey: ["flows"] });
        afterCreate(id, { deployed: result });
      } catch (e) {
        setNotice({ text: `Not deployed: ${describe(e)}`, bad: true });
        afterCreate(id, { notice: `Saved version ${n}; not deployed: ${describe(e)}` });
      }
    });

  async function onImport(file: File) {
    try {
      const spec = parseSpecText(await file.text());
      edit((d) => ({ spec, layout: d.layout, drafts: [] }));
      setSelected(null);
      setNotice({ text: `Imported ${file.name}`, bad: false });
      setFitPending(true);
    } catch (e) {
      if (!(e instanceof ImportError)) throw e;
      setNotice({ text: `Not imported: ${e.message}`, bad: true });
    }
  }

  const specId = typeof design.spec.id === "string" ? design.spec.id : "flow";
  return (
    <div className="designer">
      <header className="designer-bar">
        <h1>
          {flowId ?? "New flow"}{" "}
          <span className="muted">
            {base !== null ? `version ${base}` : "not saved"}
            {deployedVersion !== null ? ` · deployed ${deployedVersion}` : ""}
            {dirty ? " · unsaved changes" : ""}
          </span>
        </h1>
        <span className="spacer" />
        <button type="button" onClick={onSave} disabled={readOnly || busy || !dirty} data-testid="save">
          Save
        </button>
        <button type="button" className="primary" onClick={onDeploy} disabled={!canDeploy || readOnly || busy} data-testid="deploy">
          Deploy
        </button>
        <button type="button" onClick={() => fileInput.current?.click()} disabled={readOnly}>
          Import YAML
        </button>
        <input
          ref={fileInput}
          type="file"
          accept=".yaml,.yml,.json"
          hidden
          data-testid="import-file"
          onChange={(e) => {
            const file = e.target.files?.[0];
            if (file) void onImport(file);
            e.target.value = "";
          }}
        />
        <button type="button" onClick={() => download(`${specId}.yaml`, specToYaml(current.current.spec))} data-testid="export">
          Export YAML
        </button>
        {flowId !== null && (
          <button type="button" aria-pressed={showVersions} onClick={() => setShowVersions((v) => !v)}>
            Versions
          </button>
        )}
      </header>
      {notice && (
        <p className={notice.bad ? "error designer-notice" : "designer-notice"} role="status" data-testid="notice">
          {notice.text}
        </p>
      )}
      {deployed && (
        <p className="designer-notice" role="status" data-testid="deploy-result">
          Deployed version {deployed.version}: <strong>{deployed.path}</strong>
          {deployed.path === "hot" && deployed.devices.length > 0 ? ` (devices ${deployed.devices.join(", ")})` : ""}
          {deployed.reasons.length > 0 ? ` — ${deployed.reasons.join("; ")}` : ""}
        </p>
      )}
      {showVersions && flowId !== null && (
        <Versions
          flowId={flowId}
          canDeploy={canDeploy}
          onRolledBack={(r) => {
            setDeployed(r);
            navigate(location.pathname, { replace: true, state: { deployed: r } }); // survives the reload
            onReload();
          }}
        />
      )}
      <div className="designer-body">
        <Palette readOnly={readOnly} onAdd={(p) => add(p)} />
        <div className="canvas" onDragOver={(e) => e.preventDefault()} onDrop={onDrop} data-testid="canvas">
          <ReactFlow<DesignNode>
            nodes={nodes}
            edges={edges}
            nodeTypes={NODE_TYPES}
            onNodesChange={onNodesChange}
            onEdgesChange={onEdgesChange}
            onDelete={onDelete}
            onConnect={(c: Connection) => edit((d) => connect(d, c.source, c.target))}
            onPaneClick={() => {
              setSelected(null);
              setSelectedEdge(null);
            }}
            nodesDraggable={!readOnly}
            nodesConnectable={!readOnly}
            deleteKeyCode={readOnly ? null : ["Delete", "Backspace"]}
            fitView={flowId !== null}
            fitViewOptions={{ maxZoom: 1 }}
            minZoom={0.2}
            defaultViewport={{ x: 20, y: 20, zoom: 1 }}
            proOptions={{ hideAttribution: true }}
          >
            <Background />
            <Controls showInteractive={false} />
          </ReactFlow>
        </div>
        <Inspector
          design={design}
          schema={schema}
          nodes={graph.nodes}
          edges={graph.edges}
          selected={selected}
          selectedEdge={selectedEdge}
          problems={problems}
          readOnly={readOnly}
          onNodeChange={onNodeChange}
          onSettingsChange={(doc: JsonObject) => edit((d) => updateSettings(d, doc))}
          onConnect={(s, t) => edit((d) => connect(d, s, t))}
          onDisconnect={(t) => edit((d) => disconnect(d, t))}
          onDelete={(id) => {
            if (edit((d) => removeNode(d, id))) setSelected(null);
          }}
        />
      </div>
    </div>
  );
}

export default function FlowEditor(props: EditorProps) {
  return (
    <ReactFlowProvider>
      <Editor {...props} />
    </ReactFlowProvider>
  );
}
