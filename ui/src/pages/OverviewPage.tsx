// The overview: every flow (state, version, points/s, errors), each flow's devices with their health,
// and the open alerts; kept live by the WebSocket's `flows`, `devices:{flow}` and `alerts` channels.
import { useState } from "react";
import { Link } from "react-router";
import { useQueries, useQuery } from "@tanstack/react-query";
import { api, qs } from "../api/client";
import { useDeviceHealth, useFlows } from "../api/hooks";
import { useChannel } from "../api/live";
import type { Alert, FlowOut, StatusOut } from "../api/types";
import { fmtTime, fmtValue, stateClass } from "../components/format";

interface LiveFlow { flow: string; state: string; points_per_s: number | null }

/** Raised alerts not cleared since (the newest event per device, tag and kind decides). */
export function openAlerts(events: Alert[]): Alert[] {
  const newest = new Map<string, Alert>();
  for (const a of [...events].sort((x, y) => Date.parse(y.time) - Date.parse(x.time))) {
    const key = `${a.device_id}/${a.tag_id}/${a.kind}`;
    if (!newest.has(key)) newest.set(key, a);
  }
  return [...newest.values()].filter((a) => a.state === "raised");
}

function FlowDevices({ flow }: { flow: string }) {
  const health = useDeviceHealth(flow);
  const entries = Object.entries(health);
  if (!entries.length) return <p className="muted">No device status yet.</p>;
  const bad = entries.filter(([, h]) => h.breaker === "open").length;
  return (
    <details open={entries.length <= 20}>
      <summary>{entries.length} devices{bad ? `, ${bad} with the breaker open` : ""}</summary>
      <div className="table-wrap">
        <table>
          <thead><tr><th>Device</th><th>Breaker</th><th>Polls</th><th>Skipped</th><th>Failures</th><th>Latency</th><th>Last good poll</th></tr></thead>
          <tbody>
            {entries.slice(0, 200).map(([id, h]) => (
              <tr key={id}>
                <td>{id}</td>
                <td><span className={`badge ${h.breaker === "open" ? "bad" : h.breaker === "half_open" ? "warn" : "good"}`}>{h.breaker ?? "closed"}</span></td>
                <td>{h.polls ?? "—"}</td><td>{h.skipped_polls ?? "—"}</td><td>{h.failures ?? "—"}</td>
                <td>{h.latency_ms != null ? `${h.latency_ms.toFixed(1)} ms` : "—"}</td>
                <td>{h.lastGood ? new Date(h.lastGood).toLocaleTimeString() : "—"}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </details>
  );
}

export default function OverviewPage() {
  const flows = useFlows();
  const statuses = useQueries({
    queries: (flows.data ?? []).map((f: FlowOut) => ({
      queryKey: ["status", f.id],
      queryFn: () => api<StatusOut>(`/api/v1/flows/${encodeURIComponent(f.id)}/status`),
      refetchInterval: 15_000,
    })),
  });
  const [liveFlows, setLiveFlows] = useState<Record<string, LiveFlow>>({});
  useChannel<LiveFlow>("flows", (d) => setLiveFlows((s) => ({ ...s, [d.flow]: d })));
  const since = new Date(Date.now() - 24 * 3600e3).toISOString();
  const alerts = useQuery({
    queryKey: ["alerts-24h"],
    queryFn: () => api<Alert[]>(`/api/v1/historian/alerts${qs({ start: since, end: new Date(Date.now() + 60e3).toISOString(), limit: 5000 })}`),
    refetchInterval: 60_000,
  });
  const [liveAlerts, setLiveAlerts] = useState<Alert[]>([]);
  useChannel<Alert & { timestamp?: string }>("alerts", (a) => setLiveAlerts((s) => [{ ...a, time: a.time ?? a.timestamp ?? new Date().toISOString() }, ...s].slice(0, 500)));
  const open = openAlerts([...liveAlerts, ...(alerts.data ?? [])]);

  return (
    <section className="page">
      <h1>Overview</h1>
      <h2>Flows</h2>
      <div className="table-wrap">
        <table data-testid="flows-table">
          <thead><tr><th>Flow</th><th>State</th><th>Version</th><th>Points/s</th><th>Restarts</th><th>Errors</th></tr></thead>
          <tbody>
            {(flows.data ?? []).map((f, i) => {
              const s = statuses[i]?.data;
              const l = liveFlows[f.id];
              const state = l?.state ?? s?.state ?? "unknown";
              const pps = l?.points_per_s ?? s?.points_per_s;
              return (
                <tr key={f.id} data-flow={f.id}>
                  <td><Link to={`/flows/${encodeURIComponent(f.id)}`}>{f.name || f.id}</Link></td>
                  <td><span className={`badge ${stateClass(state)}`}>{state}</span>{f.desired_state === "stopped" && <span className="muted"> (stopped)</span>}</td>
                  <td>{s?.version ?? f.deployed_version ?? "—"}{f.latest_version !== f.deployed_version ? <span className="muted"> (newest {f.latest_version})</span> : null}</td>
                  <td data-testid="pps">{pps != null ? fmtValue(pps) : "—"}</td>
                  <td>{s?.restarts ?? "—"}</td>
                  <td className={s?.last_error.length ? "error" : "muted"} style={{ whiteSpace: "normal", maxWidth: 360 }}>{s?.last_error.at(-1) ?? "none"}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
      {flows.data?.length === 0 && <p className="muted">No flows yet.</p>}
      <div className="cards" style={{ marginTop: 14 }}>
        <div className="card">
          <h2 style={{ marginTop: 0 }}>Devices</h2>
          {(flows.data ?? []).map((f) => (
            <div key={f.id}>
              <h3 style={{ fontSize: "1rem", margin: "8px 0 4px" }}>{f.id}</h3>
              <FlowDevices flow={f.id} />
            </div>
          ))}
        </div>
        <div className="card">
          <h2 style={{ marginTop: 0 }}>Open alerts ({open.length})</h2>
          {open.length === 0 ? <p className="muted">No open alerts.</p> : (
            <div className="table-wrap">
              <table>
                <thead><tr><th>Since</th><th>Device</th><th>Tag</th><th>Kind</th><th>Severity</th><th>Message</th></tr></thead>
                <tbody>
                  {open.slice(0, 100).map((a) => (
                    <tr key={`${a.device_id}/${a.tag_id}/${a.kind}`}>
                      <td>{fmtTime(a.time)}</td><td>{a.device_id}</td><td>{a.tag ?? a.tag_id}</td><td>{a.kind}</td>
                      <td><span className={`badge ${a.severity === "critical" ? "bad" : "warn"}`}>{a.severity}</span></td>
                      <td style={{ whiteSpace: "normal" }}>{a.message}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
          <Link to="/alerts">All alerts</Link>
        </div>
      </div>
    </section>
  );
}
