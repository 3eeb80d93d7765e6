// A flow's versions: who changed what and when, two of them side by side, and roll back.
import { useQuery } from "@tanstack/react-query";
import { useState } from "react";

import { ApiError } from "../api/client";
import { type DeployOut, flowsApi } from "./flowsApi";
import { specToYaml } from "./yaml";

interface Props {
  flowId: string;
  canDeploy: boolean;
  onRolledBack: (result: DeployOut) => void;
}

/** Lines of `text`, each marked when the other side does not have it. */
function marked(text: string, other: string) {
  const theirs = new Set(other.split("\n"));
  return text.split("\n").map((line, i) => ({ key: i, line, changed: !theirs.has(line) }));
}

function SideBySide({ flowId, from, to }: { flowId: string; from: number; to: number }) {
  const left = useQuery({ queryKey: ["flow-version", flowId, from], queryFn: () => flowsApi.version(flowId, from) });
  const right = useQuery({ queryKey: ["flow-version", flowId, to], queryFn: () => flowsApi.version(flowId, to) });
  const diff = useQuery({ queryKey: ["flow-diff", flowId, from, to], queryFn: () => flowsApi.diff(flowId, from, to) });
  if (!left.data || !right.data) return <p className="muted">Loading…</p>;
  const a = specToYaml(left.data.spec);
  const b = specToYaml(right.data.spec);
  return (
    <div data-testid="diff">
      {diff.data && (
        <p>
          Deploying {to} over {from} would be <strong>{diff.data.plan.path}</strong>
          {diff.data.plan.reasons.length ? `: ${diff.data.plan.reasons.join("; ")}` : ""}. {diff.data.changes.length} change
          {diff.data.changes.length === 1 ? "" : "s"}.
        </p>
      )}
      <div className="diff">
        {[
          [from, a, b, "del"],
          [to, b, a, "add"],
        ].map(([n, text, other, cls]) => (
          <div key={String(n)} className="diff-side">
            <h3>version {n}</h3>
            <pre>
              {marked(String(text), String(other)).map((l) => (
                <div key={l.key} className={l.changed ? `diff-${cls}` : undefined}>
                  {l.line || " "}
                </div>
              ))}
            </pre>
          </div>
        ))}
      </div>
    </div>
  );
}

export default function Versions({ flowId, canDeploy, onRolledBack }: Props) {
  const versions = useQuery({ queryKey: ["flow-versions", flowId], queryFn: () => flowsApi.versions(flowId) });
  const [pair, setPair] = useState<[number, number] | null>(null);
  const [picked, setPicked] = useState<number[]>([]);
  const [error, setError] = useState<string | null>(null);
  const list = versions.data ?? [];

  async function rollback(n: number) {
    if (!window.confirm(`Write version ${n} again as the newest version and deploy it?`)) return;
    try {
      onRolledBack(await flowsApi.rollback(flowId, n));
      await versions.refetch();
    } catch (e) {
      setError(e instanceof ApiError ? e.message : String(e));
    }
  }

  function toggle(n: number) {
    const next = picked.includes(n) ? picked.filter((x) => x !== n) : [...picked, n].slice(-2);
    setPicked(next);
    if (next.length === 2) setPair([Math.min(...next), Math.max(...next)] as [number, number]);
  }

  return (
    <section className="versions card" aria-label="versions" data-testid="versions">
      <h2>Versions</h2>
      {error && <p className="error">{error}</p>}
      <p className="muted">Tick two versions to compare them.</p>
      <div className="table-wrap">
        <table>
          <thead>
            <tr>
              <th>compare</th>
              <th>version</th>
              <th>author</th>
              <th>when</th>
              <th>message</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {list.map((v) => (
              <tr key={v.number}>
                <td>
                  <input
                    type="checkbox"
                    aria-label={`compare version ${v.number}`}
                    checked={picked.includes(v.number)}
                    onChange={() => toggle(v.number)}
                  />
                </td>
                <td>{v.number}</td>
                <td>{v.author}</td>
                <td>{new Date(v.created_at).toLocaleString()}</td>
                <td>{v.message}</td>
                <td>
                  <button type="button" disabled={!canDeploy || v.number === list[0]?.number} onClick={() => void rollback(v.number)}>
                    Roll back to {v.number}
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {pair && <SideBySide flowId={flowId} from={pair[0]} to={pair[1]} />}
    </section>
  );
}
