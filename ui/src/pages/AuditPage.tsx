// The audit log (admins): who did what, when, from where, with what outcome; filter by actor, action, range.
import { useState } from "react";
import { useQuery } from "@tanstack/react-query";
import { api, qs } from "../api/client";
import { fmtTime } from "../components/format";

type Event = Record<string, unknown> & { action: string; actor: string };

export default function AuditPage() {
  const [actor, setActor] = useState("");
  const [action, setAction] = useState("");
  const [days, setDays] = useState(7);
  const events = useQuery({
    queryKey: ["audit", actor, action, days],
    queryFn: () => api<Event[] | { events?: Event[]; items?: Event[] }>(`/api/v1/audit${qs({ actor: actor.trim(), action: action.trim(), since: new Date(Date.now() - days * 86400e3).toISOString(), limit: 1000 })}`),
  });
  const list: Event[] = Array.isArray(events.data) ? events.data : events.data?.events ?? events.data?.items ?? [];
  return (
    <section className="page">
      <h1>Audit log</h1>
      <div className="row">
        <input name="actor" placeholder="actor" value={actor} onChange={(e) => setActor(e.target.value)} />
        <input name="action" placeholder="action (e.g. flow.deploy)" value={action} onChange={(e) => setAction(e.target.value)} />
        <select name="days" value={days} onChange={(e) => setDays(Number(e.target.value))} aria-label="range">
          <option value={1}>last 24 h</option><option value={7}>last 7 days</option><option value={30}>last 30 days</option>
        </select>
      </div>
      {events.error && <p className="error" role="alert">{events.error.message}</p>}
      <div className="table-wrap" style={{ marginTop: 10 }}>
        <table data-testid="audit-table">
          <thead><tr><th>Time</th><th>Actor</th><th>Action</th><th>Target</th><th>Outcome</th><th>Source</th><th>Detail</th></tr></thead>
          <tbody>
            {list.map((e, i) => (
              <tr key={String(e.id ?? i)}>
                <td>{fmtTime(String(e.time ?? e.at ?? ""))}</td><td>{e.actor}</td><td className="mono">{e.action}</td>
                <td style={{ maxWidth: 280, overflow: "hidden", textOverflow: "ellipsis" }} title={String(e.target ?? "")}>{String(e.target ?? "—")}</td>
                <td><span className={`badge ${e.outcome === "ok" ? "good" : "bad"}`}>{String(e.outcome ?? "")}</span></td>
                <td className="mono">{String(e.source ?? "")}</td>
                <td className="mono" style={{ maxWidth: 360, overflow: "hidden", textOverflow: "ellipsis" }} title={e.detail ? JSON.stringify(e.detail, null, 1) : ""}>{e.detail ? JSON.stringify(e.detail) : ""}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {events.data && list.length === 0 && <p className="muted">No events.</p>}
    </section>
  );
}
