// Devices and tags of one flow: devices with their live health, and one virtualized table of every tag
// (filter, sort, live value, quality, unit). Engineers edit devices and tags in schema-driven forms (saving
// deploys at once: hot where the planner can); operators write values to read_write tags.
import { useMemo, useRef, useState } from "react";
import { useSearchParams } from "react-router";
import { useQuery, useQueryClient } from "@tanstack/react-query";
import { useVirtualizer } from "@tanstack/react-virtual";
import { Can, useAuth } from "../api/auth";
import { api } from "../api/client";
import { useDeviceHealth, useFlows, useHistTags, useLiveValues, type Health } from "../api/hooks";
import type { Device, DeviceTestOut, Tag } from "../api/types";
import { fmtValue, qualityClass } from "../components/format";
import { useSpecSchema } from "../components/schema";
import { addressOf, PROTOCOLS, protocolOf } from "./devices/defs";
import DeviceDialog from "./devices/DeviceDialog";
import TagDialog from "./devices/TagDialog";
import TestResult from "./devices/TestResult";
import { useApply } from "./devices/useApply";
import WriteDialog from "./devices/WriteDialog";
import Dialog from "../components/Dialog";

interface Row {
  device: Device;
  tag: Tag;
  key: string;
  address: string;
  tagId?: string;
}

type SortKey = "device" | "name" | "address" | "data_type" | "unit";
const ROW_H = 32;

function healthBadge(h: Health | undefined) {
  if (!h) return <span className="badge muted">no status</span>;
  if (h.breaker === "open") return <span className="badge bad">breaker open</span>;
  if ((h.failures ?? 0) > 0 && !h.lastGood) return <span className="badge warn">failing</span>;
  return <span className="badge good">polling</span>;
}

export default function DevicesPage() {
  const [params, setParams] = useSearchParams();
  const flows = useFlows();
  const flow = params.get("flow") ?? flows.data?.[0]?.id ?? null;
  const schema = useSpecSchema();
  const client = useQueryClient();
  const devices = useQuery({
    queryKey: ["devices", flow],
    queryFn: () => api<Device[]>(`/api/v1/flows/${encodeURIComponent(flow!)}/devices`),
    enabled: flow !== null,
  });
  const health = useDeviceHealth(flow);
  const [filter, setFilter] = useState("");
  const [sort, setSort] = useState<{ key: SortKey; desc: boolean }>({ key: "device", desc: false });
  const [dialog, setDialog] = useState<null | { kind: "device"; device: Device | null } | { kind: "tag"; device: Device; tag: Tag | null } | { kind: "write"; device: Device; tag: Tag } | { kind: "test"; device: Device; result: DeviceTestOut | string | null }>(null);
  const apply = useApply(flow ?? "");
  const { can } = useAuth();

  const allRows = useMemo<Row[]>(() => (devices.data ?? []).flatMap((d) => d.tags.map((t) => ({ device: d, tag: t, key: `${d.id}/${t.name}`, address: addressOf(t) }))), [devices.data]);
  const missingIds = useRef(false);
  const hist = useHistTags(missingIds.current);
  const idOf = useMemo(() => new Map((hist.data ?? []).map((t) => [`${t.device_id}/${t.name}`, t.tag_id])), [hist.data]);
  missingIds.current = allRows.some((r) => !idOf.has(r.key));

  const rows = useMemo(() => {
    const f = filter.trim().toLowerCase();
    const out = allRows
      .map((r) => ({ ...r, tagId: idOf.get(r.key) }))
      .filter((r) => !f || r.key.toLowerCase().includes(f) || r.address.toLowerCase().includes(f) || String(r.tag.unit ?? "").toLowerCase().includes(f));
    const get = (r: Row): string | number => (sort.key === "device" ? r.device.id : sort.key === "name" ? r.tag.name : sort.key === "address" ? r.address : String(r.tag[sort.key] ?? ""));
    out.sort((a, b) => {
      const x = get(a), y = get(b);
      const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true });
      return sort.desc ? -c : c || a.key.localeCompare(b.key);
    });
    return out;
  }, [allRows, idOf, filter, sort]);

  const scroller = useRef<HTMLDivElement>(null);
  const virtual = useVirtualizer({ count: rows.length, getScrollElement: () => scroller.current, estimateSize: () => ROW_H, overscan: 10 });
  const items = virtual.getVirtualItems();
  const visibleIds = items.map((i) => rows[i.index]?.tagId).filter((x): x is string => x !== undefined);
  const values = useLiveValues(visibleIds);

  async function testDevice(device: Device) {
    setDialog({ kind: "test", device, result: null });
    try {
      const result = await api<DeviceTestOut>(`/api/v1/flows/${encodeURIComponent(flow!)}/devices/${encodeURIComponent(device.id)}/test`, { method: "POST", body: {} });
      setDialog({ kind: "test", device, result });
    } catch (e) {
      setDialog({ kind: "test", device, result: e instanceof Error ? e.message : String(e) });
    }
  }

  async function removeDevice(device: Device) {
    if (!window.confirm(`Remove device ${device.id} and its ${device.tags.length} tags from flow ${flow}?`)) return;
    try {
      await api(`/api/v1/flows/${encodeURIComponent(flow!)}/devices/${encodeURIComponent(device.id)}`, { method: "DELETE" });
      await apply.afterSave();
    } catch (e) {
      window.alert(e instanceof Error ? e.message : String(e));
    }
  }

  const saved = async () => {
    setDialog(null);
    await apply.afterSave();
    await client.invalidateQueries({ queryKey: ["devices", flow] });
  };
  const sortBy = (key: SortKey) => setSort((s) => ({ key, desc: s.key === key ? !s.desc : false }));
  const head = (key: SortKey, label: string) => (
    <span role="columnheader" aria-sort={sort.key === key ? (sort.desc ? "descending" : "ascending") : "none"}>
      <button className="sort" style={{ background: "none", border: 0, padding: 0, color: "inherit", fontWeight: 600 }} onClick={() => sortBy(key)}>
        {label}{sort.key === key ? (sort.desc ? " ▼" : " ▲") : ""}
      </button>
    </span>
  );

  return (
    <section className="page">
      <div className="row">
        <h1 style={{ margin: 0 }}>Devices &amp; tags</h1>
        <span className="spacer" />
        <label style={{ flexDirection: "row", alignItems: "center", gap: 6 }}>
          Flow
          <select name="flow" value={flow ?? ""} onChange={(e) => setParams({ flow: e.target.value })}>
            {(flows.data ?? []).map((f) => <option key={f.id} value={f.id}>{f.name || f.id}</option>)}
          </select>
        </label>
        <Can permission="flows:write">
          <button className="primary" onClick={() => setDialog({ kind: "device", device: null })} disabled={!schema.data || !flow || !devices.data}>Add device</button>
        </Can>
      </div>
      {flows.data?.length === 0 && <p className="muted">No flows yet: create one in Flows.</p>}
      {apply.result && (
        <p role="status" className="card" data-testid="apply-result">
          Applied version {apply.result.version}: <b>{apply.result.path}</b>{apply.result.reasons.length ? ` (${apply.result.reasons.slice(0, 3).join("; ")})` : ""}
          <button style={{ marginLeft: 8 }} onClick={apply.clear}>OK</button>
        </p>
      )}
      {apply.error && <p className="error" role="alert">Deploy failed: {apply.error}</p>}
      {!can("flows:deploy") && can("flows:write") && <p className="muted">Changes are saved as new versions; an engineer deploys them.</p>}

      <h2>Devices ({devices.data?.length ?? 0})</h2>
      <div className="table-wrap">
        <table data-testid="devices-table">
          <thead><tr><th>Device</th><th>Protocol</th><th>Endpoint</th><th>Poll</th><th>Health</th><th>Polls / skipped / failures</th><th>Last good poll</th><th /></tr></thead>
          <tbody>
            {(devices.data ?? []).map((d) => {
              const h = health[d.id];
              const c = d.connection ?? {};
              return (
                <tr key={d.id} data-device={d.id}>
                  <td>{d.id}</td>
                  <td>{PROTOCOLS[protocolOf(d)]?.label ?? protocolOf(d)}</td>
                  <td className="mono">{String(c.endpoint ?? (c.host ? `${c.host}:${c.port ?? ""}` : "—"))}</td>
                  <td>{d.poll_interval_s ?? 1} s</td>
                  <td>{healthBadge(h)}</td>
                  <td>{h ? `${h.polls ?? 0} / ${h.skipped_polls ?? 0} / ${h.failures ?? 0}` : "—"}</td>
                  <td>{h?.lastGood ? new Date(h.lastGood).toLocaleTimeString() : "—"}</td>
                  <td className="row" style={{ flexWrap: "nowrap" }}>
                    <Can permission="flows:operate"><button onClick={() => void testDevice(d)}>Test</button></Can>
                    <Can permission="flows:write">
                      <button onClick={() => setDialog({ kind: "device", device: d })}>Edit</button>
                      <button onClick={() => setDialog({ kind: "tag", device: d, tag: null })}>Add tag</button>
                      <button className="danger" onClick={() => void removeDevice(d)} aria-label={`remove ${d.id}`}>✕</button>
                    </Can>
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>

      <div className="row" style={{ marginTop: 16 }}>
        <h2 style={{ margin: 0 }}>Tags ({rows.length}{rows.length !== allRows.length ? ` of ${allRows.length}` : ""})</h2>
        <input type="search" name="filter" placeholder="filter by device, tag, address or unit" value={filter} onChange={(e) => setFilter(e.target.value)} style={{ minWidth: 260 }} />
      </div>
      <div className="vtable" ref={scroller} style={{ height: "min(60vh, 640px)", marginTop: 8 }} role="table" aria-label="tags" data-testid="tags-table">
        <div className="vrow vhead" role="row">
          {head("device", "Device")}{head("name", "Tag")}{head("address", "Address")}<span>Value</span>{head("unit", "Unit")}
          <span>Quality</span>{head("data_type", "Type")}<span />
        </div>
        <div style={{ height: virtual.getTotalSize(), position: "relative" }}>
          {items.map((item) => {
            const r = rows[item.index];
            const v = r.tagId !== undefined ? values.get(r.tagId) : undefined;
            return (
              <div key={r.key} className="vrow" role="row" data-tag={r.key} style={{ position: "absolute", top: 0, left: 0, right: 0, transform: `translateY(${item.start}px)` }}>
                <span>{r.device.id}</span>
                <span title={r.tag.name}>{r.tag.name}</span>
                <span className="mono" title={r.address}>{r.address}</span>
                <span className="mono" data-testid="value">{fmtValue(v?.value)}</span>
                <span>{v?.unit ?? r.tag.unit ?? ""}</span>
                <span>{v?.quality ? <span className={`badge ${qualityClass(v.quality)}`}>{v.quality}</span> : <span className="muted">—</span>}</span>
                <span className="muted">{String(r.tag.data_type ?? "")}</span>
                <span className="row" style={{ flexWrap: "nowrap", gap: 4 }}>
                  <Can permission="flows:write"><button onClick={() => setDialog({ kind: "tag", device: r.device, tag: r.tag })} aria-label={`edit ${r.key}`}>Edit</button></Can>
                  {r.tag.access === "read_write" && <Can permission="tags:write_value"><button onClick={() => setDialog({ kind: "write", device: r.device, tag: r.tag })}>Write</button></Can>}
                </span>
              </div>
            );
          })}
        </div>
      </div>

      {dialog?.kind === "device" && schema.data && flow && (
        <DeviceDialog root={schema.data} flow={flow} device={dialog.device} template={devices.data?.[0]} onClose={() => setDialog(null)} onSaved={() => void saved()} />
      )}
      {dialog?.kind === "tag" && schema.data && flow && (
        <TagDialog root={schema.data} flow={flow} device={dialog.device} tag={dialog.tag} onClose={() => setDialog(null)} onSaved={() => void saved()} />
      )}
      {dialog?.kind === "write" && flow && <WriteDialog flow={flow} device={dialog.device} tag={dialog.tag} onClose={() => setDialog(null)} />}
      {dialog?.kind === "test" && (
        <Dialog title={`Test ${dialog.device.id}`} onClose={() => setDialog(null)}>
          {dialog.result === null ? <p className="muted">Reading the device once…</p> : <TestResult result={dialog.result} />}
        </Dialog>
      )}
    </section>
  );
}
