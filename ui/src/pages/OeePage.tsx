// OEE per machine and shift: availability × performance × quality of each period the OEE operator wrote.
import { useState } from "react";
import { useQuery } from "@tanstack/react-query";
import { api, qs } from "../api/client";
import { fmtTime } from "../components/format";

type Row = Record<string, unknown> & { machine: string; period: string };
const pct = (v: unknown) => (typeof v === "number" ? `${(v * 100).toFixed(1)} %` : "—");

export default function OeePage() {
  const [days, setDays] = useState(1);
  const [machine, setMachine] = useState("");
  const rows = useQuery({
    queryKey: ["oee", days, machine],
    queryFn: () => api<Row[]>(`/api/v1/historian/oee${qs({ start: new Date(Date.now() - days * 86400e3).toISOString(), end: new Date(Date.now() + 60e3).toISOString(), machine: machine.trim() })}`),
    refetchInterval: 30_000,
  });
  const byMachine = new Map<string, Row[]>();
  for (const r of rows.data ?? []) byMachine.set(r.machine, [...(byMachine.get(r.machine) ?? []), r]);
  return (
    <section className="page">
      <h1>OEE</h1>
      <div className="row">
        {[1, 7, 30].map((d) => <button key={d} className={days === d ? "primary" : ""} onClick={() => setDays(d)}>Last {d === 1 ? "24 h" : `${d} days`}</button>)}
        <input name="machine" placeholder="machine" value={machine} onChange={(e) => setMachine(e.target.value)} />
      </div>
      {rows.error && <p className="error" role="alert">{rows.error.message}</p>}
      {rows.data && rows.data.length === 0 && <p className="muted">No OEE periods in this range (a flow needs an OEE operator and machines).</p>}
      {[...byMachine.entries()].map(([m, list]) => (
        <div key={m} className="card" style={{ marginTop: 12 }}>
          <h2 style={{ marginTop: 0 }}>{m}</h2>
          <div className="table-wrap">
            <table>
              <thead><tr><th>Period</th><th>Shift</th><th>Start</th><th>End</th><th>OEE</th><th>Availability</th><th>Performance</th><th>Quality</th><th>Downtime</th></tr></thead>
              <tbody>
                {list.map((r) => (
                  <tr key={`${r.period}/${String(r.start)}`}>
                    <td>{r.period}</td><td>{String(r.shift ?? "—")}</td><td>{fmtTime(String(r.start ?? ""))}</td><td>{fmtTime(String(r.end ?? ""))}</td>
                    <td><b>{pct(r.oee)}</b></td><td>{pct(r.availability)}</td><td>{pct(r.performance)}</td><td>{pct(r.quality)}</td>
                    <td>{typeof r.downtime_s === "number" ? `${Math.round(r.downtime_s / 60)} min` : "—"}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </div>
      ))}
    </section>
  );
}
