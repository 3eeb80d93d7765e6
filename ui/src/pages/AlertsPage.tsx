// Alerts raised and cleared over a range, filtered by state, device and text; operators acknowledge a
// raised alert (POST /api/v1/historian/alerts/{id}/ack).
import { useState } from "react";
import { useQuery, useQueryClient } from "@tanstack/react-query";
import { Can } from "../api/auth";
import { api, qs } from "../api/client";
import type { Alert } from "../api/types";
import { fmtTime, fmtValue } from "../components/format";

const RANGES: [string, number][] = [["1 h", 3600e3], ["24 h", 86400e3], ["7 days", 7 * 86400e3]];

export default function AlertsPage() {
  const [span, setSpan] = useState(RANGES[1][1]);
  const [state, setState] = useState("");
  const [device, setDevice] = useState("");
  const [text, setText] = useState("");
  const [error, setError] = useState<string | null>(null);
  const client = useQueryClient();
  const alerts = useQuery({
    queryKey: ["alerts", span, state, device],
    queryFn: () => api<Alert[]>(`/api/v1/historian/alerts${qs({ start: new Date(Date.now() - span).toISOString(), end: new Date(Date.now() + 60e3).toISOString(), state, device: device.trim(), limit: 5000 })}`),
    refetchInterval: 15_000,
  });
  const t = text.trim().toLowerCase();
  const rows = (alerts.data ?? []).filter((a) => !t || `${a.device_id} ${a.tag} ${a.kind} ${a.message}`.toLowerCase().includes(t));

  async function ack(a: Alert) {
    setError(null);
    try {
      await api(`/api/v1/historian/alerts/${encodeURIComponent(a.id!)}/ack`, { method: "POST", body: {} });
      await client.invalidateQueries({ queryKey: ["alerts"] });
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    }
  }

  return (
    <section className="page">
      <h1>Alerts</h1>
      <div className="row">
        {RANGES.map(([label, ms]) => <button key={label} className={span === ms ? "primary" : ""} onClick={() => setSpan(ms)}>Last {label}</button>)}
        <select name="state" value={state} onChange={(e) => setState(e.target.value)} aria-label="state">
          <option value="">raised and cleared</option><option value="raised">raised</option><option value="cleared">cleared</option>
        </select>
        <input name="device" placeholder="device" value={device} onChange={(e) => setDevice(e.target.value)} />
        <input type="search" name="text" placeholder="filter text" value={text} onChange={(e) => setText(e.target.value)} />
      </div>
      {error && <p className="error" role="alert">{error}</p>}
      {alerts.error && <p className="error" role="alert">{alerts.error.message}</p>}
      <div className="table-wrap" style={{ marginTop: 10 }}>
        <table data-testid="alerts-table">
          <thead><tr><th>Time</th><th>State</th><th>Device</th><th>Tag</th><th>Kind</th><th>Severity</th><th>Value</th><th>Limit</th><th>Message</th><th>Acknowledged</th></tr></thead>
          <tbody>
            {rows.map((a) => (
              <tr key={`${a.tag_id}/${a.kind}/${a.state}/${a.time}`}>
                <td>{fmtTime(a.time)}</td>
                <td><span className={`badge ${a.state === "raised" ? "bad" : "good"}`}>{a.state}</span></td>
                <td>{a.device_id}</td><td>{a.tag ?? a.tag_id}</td><td>{a.kind}</td><td>{a.severity}</td>
                <td>{fmtValue(a.value)}</td><td>{fmtValue(a.limit)}</td>
                <td style={{ whiteSpace: "normal" }}>{a.message}</td>
                <td>
                  {a.acked_by ? `${a.acked_by}, ${fmtTime(a.acked_at)}` : a.state === "raised" && a.id ? (
                    <Can permission="alerts:ack"><button onClick={() => void ack(a)}>Acknowledge</button></Can>
                  ) : "—"}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {alerts.data && rows.length === 0 && <p className="muted">No alerts in this range.</p>}
    </section>
  );
}
