// Historian explorer: search tags by UNS path, pick some, a range (presets or custom), a chart that
// reads raw points for short ranges and aggregates (avg with min/max) for long ones; drag on the chart
// to zoom (the range follows); CSV export of the raw points.
import { useEffect, useMemo, useRef, useState } from "react";
import { useQuery } from "@tanstack/react-query";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { api, qs } from "../api/client";
import { useHistTags } from "../api/hooks";
import type { HistTag } from "../api/types";

const PRESETS: [string, number][] = [["5 min", 5 * 60e3], ["1 h", 3600e3], ["24 h", 86400e3], ["7 days", 7 * 86400e3]];
/** Ranges up to this many ms read raw points; longer ones read aggregates. */
const RAW_MAX_MS = 15 * 60e3;
const BUCKETS = 600;

interface Range { start: number; end: number }

type Series = { tag: string; times: number[]; values: (number | null)[] };

function toLocalInput(ms: number): string {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60e3);
  return d.toISOString().slice(0, 16);
}

function seconds(t: unknown): number {
  if (typeof t === "number") return t > 1e11 ? t / 1000 : t;
  return Date.parse(String(t)) / 1000;
}

/** The API's columnar answer (`series: [{tag_id, time|bucket: [...], value|avg: [...]}]`) as chart series. */
function seriesOf(body: unknown, field: "value" | "avg"): Series[] {
  const list = ((body as { series?: Record<string, unknown[]>[] }).series ?? []);
  return list.map((s) => ({
    tag: String(s.tag_id),
    times: ((s.time ?? s.bucket ?? []) as unknown[]).map(seconds),
    values: ((s[field] ?? []) as (number | null)[]),
  }));
}

function Chart({ series, names, onZoom }: { series: Series[]; names: Map<string, string>; onZoom: (r: Range) => void }) {
  const el = useRef<HTMLDivElement>(null);
  const zoom = useRef(onZoom);
  zoom.current = onZoom;
  useEffect(() => {
    if (!el.current || !series.length) return;
    const times = [...new Set(series.flatMap((s) => s.times))].sort((a, b) => a - b);
    const index = new Map(times.map((t, i) => [t, i]));
    const columns = series.map((s) => {
      const col: (number | null)[] = new Array(times.length).fill(null);
      s.times.forEach((t, i) => (col[index.get(t)!] = s.values[i]));
      return col;
    });
    const palette = ["#1f6feb", "#d29922", "#3fb950", "#f85149", "#a371f7", "#39c5cf"];
    const style = getComputedStyle(document.documentElement);
    const axis = { stroke: style.getPropertyValue("--muted").trim(), grid: { stroke: style.getPropertyValue("--border").trim() } };
    const plot = new uPlot(
      {
        width: el.current.clientWidth,
        height: 340,
        series: [{}, ...series.map((s, i) => ({ label: names.get(s.tag) ?? s.tag, stroke: palette[i % palette.length], spanGaps: false, points: { show: times.length < 200 } }))],
        axes: [axis, axis],
        cursor: { drag: { x: true, y: false } },
        hooks: {
          setSelect: [(u) => {
            if (u.select.width < 5) return;
            const start = u.posToVal(u.select.left, "x") * 1000;
            const end = u.posToVal(u.select.left + u.select.width, "x") * 1000;
            zoom.current({ start, end });
          }],
        },
      },
      [times, ...columns] as uPlot.AlignedData,
      el.current,
    );
    const resize = new ResizeObserver(() => el.current && plot.setSize({ width: el.current.clientWidth, height: 340 }));
    resize.observe(el.current);
    return () => {
      resize.disconnect();
      plot.destroy();
    };
  }, [series, names]);
  return <div ref={el} className="chart" data-testid="chart" />;
}

export default function HistorianPage() {
  const tags = useHistTags();
  const [search, setSearch] = useState("");
  const [picked, setPicked] = useState<HistTag[]>([]);
  const [range, setRange] = useState<Range>(() => ({ start: Date.now() - PRESETS[0][1], end: Date.now() }));
  const span = range.end - range.start;
  const raw = span <= RAW_MAX_MS;
  const ids = picked.map((t) => t.tag_id);
  const names = useMemo(() => new Map(picked.map((t) => [t.tag_id, `${t.device_id}/${t.name}`])), [picked]);

  const query = useQuery({
    queryKey: ["hist", ids, range.start, range.end, raw],
    enabled: ids.length > 0,
    queryFn: async () => {
      const params = { tag: ids, start: new Date(range.start).toISOString(), end: new Date(range.end).toISOString() };
      if (raw) return seriesOf(await api(`/api/v1/historian/points${qs({ ...params, limit: 100000 })}`), "value");
      return seriesOf(await api(`/api/v1/historian/aggregates${qs({ ...params, max_points: BUCKETS, fields: "avg,min,max" })}`), "avg");
    },
  });

  const found = (tags.data ?? []).filter((t) => {
    const q = search.trim().toLowerCase();
    return q && (t.uns_path.toLowerCase().includes(q) || `${t.device_id}/${t.name}`.toLowerCase().includes(q));
  }).slice(0, 50);
  const preset = (ms: number) => setRange({ start: Date.now() - ms, end: Date.now() });
  const csv = `/api/v1/historian/export.csv${qs({ tag: ids, start: new Date(range.start).toISOString(), end: new Date(range.end).toISOString() })}`;
  const points = (query.data ?? []).reduce((n, s) => n + s.times.length, 0);

  return (
    <section className="page">
      <h1>Historian</h1>
      <div className="cards">
        <div className="card">
          <label>
            Find tags by UNS path
            <input type="search" name="tag-search" placeholder="e.g. plant1/line1/press" value={search} onChange={(e) => setSearch(e.target.value)} />
          </label>
          <ul style={{ listStyle: "none", padding: 0, margin: "8px 0", maxHeight: 180, overflow: "auto" }}>
            {found.map((t) => (
              <li key={t.tag_id} className="row">
                <button onClick={() => !ids.includes(t.tag_id) && setPicked([...picked, t])} disabled={ids.includes(t.tag_id)} aria-label={`add ${t.uns_path}`}>+</button>
                <span className="mono" style={{ overflowWrap: "anywhere" }}>{t.uns_path}</span>
              </li>
            ))}
          </ul>
          <div className="row">
            {picked.map((t) => (
              <span key={t.tag_id} className="badge muted">
                {t.device_id}/{t.name}{t.unit ? ` (${t.unit})` : ""}{" "}
                <button style={{ padding: "0 4px" }} onClick={() => setPicked(picked.filter((p) => p !== t))} aria-label={`remove ${t.name}`}>✕</button>
              </span>
            ))}
          </div>
        </div>
        <div className="card">
          <div className="row">
            {PRESETS.map(([label, ms]) => <button key={label} onClick={() => preset(ms)}>Last {label}</button>)}
          </div>
          <div className="row" style={{ marginTop: 8 }}>
            <label>From<input type="datetime-local" name="start" value={toLocalInput(range.start)} onChange={(e) => e.target.value && setRange({ ...range, start: new Date(e.target.value).getTime() })} /></label>
            <label>To<input type="datetime-local" name="end" value={toLocalInput(range.end)} onChange={(e) => e.target.value && setRange({ ...range, end: new Date(e.target.value).getTime() })} /></label>
          </div>
          <p className="muted">{raw ? "raw points" : `aggregated (avg of ~${BUCKETS} buckets)`} · drag on the chart to zoom</p>
          <div className="row">
            <button onClick={() => void query.refetch()} disabled={!ids.length}>Refresh</button>
            {ids.length ? <a className="button" href={csv} download="nexus-points.csv">Export CSV</a> : <button disabled>Export CSV</button>}
          </div>
        </div>
      </div>
      <div className="card" style={{ marginTop: 14 }}>
        {!ids.length && <p className="muted">Pick a tag to plot it.</p>}
        {query.error && <p className="error" role="alert">{String(query.error.message)}</p>}
        {query.data && <p className="muted" data-testid="point-count">{points} points</p>}
        {query.data && <Chart series={query.data} names={names} onZoom={setRange} />}
      </div>
    </section>
  );
}
