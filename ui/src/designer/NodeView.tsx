// One node on the canvas: what it is, a one-line summary, and the API's problems pinned on it.
import { Handle, type NodeProps, Position } from "@xyflow/react";

import type { DesignNode } from "./graph";

const KIND_LABEL = { source: "source", operator: "operator", sink: "sink" } as const;

export default function NodeView({ id, data, selected }: NodeProps<DesignNode>) {
  const bad = data.errors.length > 0;
  const classes = ["dnode", `dnode-${data.kind}`, bad ? "dnode-bad" : "", data.draft ? "dnode-draft" : "", selected ? "dnode-selected" : ""];
  return (
    <div className={classes.join(" ")} data-testid={`node-${id}`} data-kind={data.kind} data-type={data.type} aria-invalid={bad}>
      {data.kind !== "source" && <Handle type="target" position={Position.Left} aria-label={`input of ${data.label}`} />}
      <div className="dnode-head">
        <span className="dnode-kind">{KIND_LABEL[data.kind]}</span>
        <span className="dnode-type">{data.type}</span>
      </div>
      <div className="dnode-label">{data.label}</div>
      <div className="dnode-detail muted">{data.detail}</div>
      {bad && (
        <ul className="dnode-errors" data-testid="node-errors">
          {data.errors.slice(0, 4).map((e, i) => (
            <li key={i}>{e}</li>
          ))}
          {data.errors.length > 4 && <li>… {data.errors.length - 4} more</li>}
        </ul>
      )}
      {data.kind !== "sink" && <Handle type="source" position={Position.Right} aria-label={`output of ${data.label}`} />}
    </div>
  );
}
