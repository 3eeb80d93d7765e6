// Flows: state, versions, start/stop (operators), open one in the designer.
import { useState } from "react";
import { Link } from "react-router";
import { useQueryClient } from "@tanstack/react-query";
import { Can } from "../api/auth";
import { api } from "../api/client";
import { useFlows } from "../api/hooks";
import { fmtTime } from "../components/format";

export default function FlowsPage() {
  const flows = useFlows();
  const client = useQueryClient();
  const [error, setError] = useState<string | null>(null);
  async function act(id: string, what: "start" | "stop") {
    setError(null);
    try {
      await api(`/api/v1/flows/${encodeURIComponent(id)}/${what}`, { method: "POST", body: {} });
      await client.invalidateQueries({ queryKey: ["flows"] });
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    }
  }
  return (
    <section className="page">
      <h1>Flows</h1>
      {error && <p className="error" role="alert">{error}</p>}
      <div className="table-wrap">
        <table data-testid="flows-list">
          <thead><tr><th>Flow</th><th>Description</th><th>Wanted</th><th>Deployed</th><th>Newest</th><th>Updated</th><th /></tr></thead>
          <tbody>
            {(flows.data ?? []).map((f) => (
              <tr key={f.id}>
                <td><Link to={`/flows/${encodeURIComponent(f.id)}`}>{f.name || f.id}</Link></td>
                <td className="muted" style={{ whiteSpace: "normal" }}>{f.description}</td>
                <td>{f.desired_state}</td><td>{f.deployed_version ?? "—"}</td><td>{f.latest_version}</td><td>{fmtTime(f.updated_at)}</td>
                <td className="row" style={{ flexWrap: "nowrap" }}>
                  <Link className="button" to={`/devices?flow=${encodeURIComponent(f.id)}`}>Devices</Link>
                  <Can permission="flows:operate">
                    {f.desired_state === "running"
                      ? <button onClick={() => void act(f.id, "stop")}>Stop</button>
                      : <button onClick={() => void act(f.id, "start")}>Start</button>}
                  </Can>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </section>
  );
}
