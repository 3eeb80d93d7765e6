// The right-hand panel: the selected node's form and its connections (the keyboard way to connect),
// a selected edge, or the flow-wide settings when nothing is selected.
import type { RJSFSchema } from "@rjsf/utils";
import { useState } from "react";

import type { DesignEdge, DesignNode } from "./graph";
import { type DesignState, type Json, type JsonObject, type Protocol } from "./model";
import type { Pinned } from "./problems";
import { NODE_UI, SETTINGS_UI, groupSchema, nodeSchema, settingsSchema } from "./schemas";
import SpecForm from "./SpecForm";
import { flowSettings, nodeDocument } from "./edits";

interface Props {
  design: DesignState;
  schema: RJSFSchema;
  nodes: DesignNode[];
  edges: DesignEdge[];
  selected: string | null;
  selectedEdge: string | null;
  problems: Pinned;
  readOnly: boolean;
  onNodeChange: (id: string, doc: Json) => void;
  onSettingsChange: (doc: JsonObject) => void;
  onConnect: (source: string, target: string) => void;
  onDisconnect: (target: string) => void;
  onDelete: (id: string) => void;
}

function ConnectMenu({ node, nodes, readOnly, onConnect }: { node: DesignNode; nodes: DesignNode[]; readOnly: boolean; onConnect: Props["onConnect"] }) {
  const targets = nodes.filter((n) => n.id !== node.id && n.data.kind !== "source");
  const [target, setTarget] = useState("");
  if (node.data.kind === "sink" || targets.length === 0) return null;
  return (
    <div className="row">
      <label className="inline">
        Connect to
        <select value={target} onChange={(e) => setTarget(e.target.value)} disabled={readOnly} aria-label="connect to node">
          <option value="">choose a node…</option>
          {targets.map((t) => (
            <option key={t.id} value={t.id}>
              {t.data.label} ({t.data.type})
            </option>
          ))}
        </select>
      </label>
      <button type="button" disabled={readOnly || !target} onClick={() => onConnect(node.id, target)}>
        Connect
      </button>
    </div>
  );
}

export default function Inspector(props: Props) {
  const { design, schema, nodes, edges, selected, selectedEdge, problems, readOnly } = props;
  const node = nodes.find((n) => n.id === selected);
  if (node) {
    const kind = node.data.kind;
    const formSchema =
      kind === "source" ? groupSchema(schema, node.data.protocol as Protocol) : nodeSchema(schema, kind, node.data.type);
    const incoming = edges.filter((e) => e.target === node.id);
    return (
      <aside className="inspector" aria-label="node settings">
        <h2>
          {node.data.label} <span className="muted">({node.data.type})</span>
        </h2>
        {node.data.draft && <p className="muted">Not connected yet: connect it into the flow to make it part of the spec.</p>}
        {node.data.errors.length > 0 && (
          <ul className="error inspector-errors" data-testid="inspector-errors">
            {node.data.errors.map((e, i) => (
              <li key={i}>{e}</li>
            ))}
          </ul>
        )}
        <ConnectMenu node={node} nodes={nodes} readOnly={readOnly} onConnect={props.onConnect} />
        <div className="row">
          {kind !== "source" && !node.data.draft && (
            <button type="button" disabled={readOnly || incoming.length === 0} onClick={() => props.onDisconnect(node.id)}>
              Disconnect
            </button>
          )}
          <button type="button" className="danger" disabled={readOnly} onClick={() => props.onDelete(node.id)}>
            Delete node
          </button>
        </div>
        {formSchema ? (
          <SpecForm
            key={node.id}
            idPrefix={`f-${node.id.replace(/[^A-Za-z0-9_-]/g, "_")}`}
            schema={formSchema}
            uiSchema={kind === "source" ? {} : NODE_UI}
            value={nodeDocument(design, node.id) as Json}
            errors={problems.fields[node.id]}
            readOnly={readOnly}
            onChange={(doc) => props.onNodeChange(node.id, doc)}
          />
        ) : (
          <p className="error">The spec schema has no {node.data.type} node.</p>
        )}
      </aside>
    );
  }
  const edge = edges.find((e) => e.id === selectedEdge);
  if (edge) {
    return (
      <aside className="inspector" aria-label="connection">
        <h2>
          {edge.source} → {edge.target}
        </h2>
        {edge.data?.implicit && <p className="muted">A sink without `input` takes the points of the last operator.</p>}
        <button type="button" disabled={readOnly} onClick={() => props.onDisconnect(edge.target)}>
          Remove connection
        </button>
      </aside>
    );
  }
  return (
    <aside className="inspector" aria-label="flow settings">
      <h2>Flow settings</h2>
      {problems.flow.length > 0 && (
        <ul className="error inspector-errors" data-testid="flow-errors">
          {problems.flow.map((e, i) => (
            <li key={i}>{e}</li>
          ))}
        </ul>
      )}
      <SpecForm
        idPrefix="f-flow"
        schema={settingsSchema(schema)}
        uiSchema={SETTINGS_UI}
        value={flowSettings(design.spec)}
        errors={problems.flowFields}
        readOnly={readOnly}
        onChange={(doc) => props.onSettingsChange(doc as JsonObject)}
      />
    </aside>
  );
}
