// Create or edit a tag: fields from the schema's tag definition of the device's protocol; an OPC UA
// device can browse its server and pick a node.
import { useState } from "react";
import { api, ApiError } from "../../api/client";
import type { BrowsedOut, Device, Tag } from "../../api/types";
import Dialog from "../../components/Dialog";
import SchemaForm from "../../components/SchemaForm";
import { resolve, validateDef, type JsonSchema } from "../../components/schema";
import { formPath, PROTOCOLS, protocolOf } from "./defs";

interface Props {
  root: JsonSchema;
  flow: string;
  device: Device;
  tag: Tag | null;
  onClose: () => void;
  onSaved: () => void;
}

export default function TagDialog({ root, flow, device, tag, onClose, onSaved }: Props) {
  const protocol = protocolOf(device);
  const def = PROTOCOLS[protocol].tag;
  const [value, setValue] = useState<Record<string, unknown>>(tag ?? {});
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [general, setGeneral] = useState<string[]>([]);
  const [busy, setBusy] = useState(false);
  const [browsed, setBrowsed] = useState<BrowsedOut[] | string | null>(null);
  const [filter, setFilter] = useState("");
  const base = `/api/v1/flows/${encodeURIComponent(flow)}/devices/${encodeURIComponent(device.id)}/tags`;

  async function save() {
    setGeneral([]);
    const found = validateDef(root, def, value);
    setErrors(found);
    if (Object.keys(found).length) {
      setGeneral(["Fix the marked fields."]);
      return;
    }
    setBusy(true);
    try {
      if (tag) await api(`${base}/${encodeURIComponent(tag.name)}`, { method: "PUT", body: value });
      else await api(base, { method: "POST", body: value });
      onSaved();
    } catch (e) {
      if (e instanceof ApiError) {
        setErrors(Object.fromEntries((e.problem.problems ?? []).map((p) => [formPath(p.path, true), p.message])));
        setGeneral([e.message]);
      } else setGeneral([String(e)]);
    } finally {
      setBusy(false);
    }
  }

  async function browse() {
    setBrowsed(null);
    try {
      setBrowsed(await api<BrowsedOut[]>(`/api/v1/flows/${encodeURIComponent(flow)}/devices/${encodeURIComponent(device.id)}/browse?max_depth=6`));
    } catch (e) {
      setBrowsed(e instanceof Error ? e.message : String(e));
    }
  }

  function pick(node: BrowsedOut) {
    const name = node.browse_path.split("/").pop()?.replace(/[^A-Za-z0-9_.-]/g, "_") ?? "";
    setValue({ ...value, node_id: node.node_id, name: value.name ?? name, ...(node.writable ? {} : {}) });
    setBrowsed(null);
  }

  return (
    <Dialog title={tag ? `Edit tag ${device.id}/${tag.name}` : `New tag on ${device.id}`} onClose={onClose}>
      <form onSubmit={(e) => { e.preventDefault(); void save(); }} style={{ display: "flex", flexDirection: "column", gap: 10 }}>
        {protocol === "opcua" && (
          <div className="row">
            <button type="button" onClick={() => void browse()}>Browse the server…</button>
            <span className="muted">pick a variable to fill the node id</span>
          </div>
        )}
        {browsed !== null && (typeof browsed === "string" ? <p className="error">{browsed}</p> : (
          <div className="card" style={{ maxHeight: 240, overflow: "auto" }}>
            <input placeholder="filter" value={filter} onChange={(e) => setFilter(e.target.value)} />
            <table>
              <tbody>
                {browsed.filter((n) => !filter || n.browse_path.toLowerCase().includes(filter.toLowerCase())).slice(0, 300).map((n) => (
                  <tr key={n.node_id}>
                    <td className="mono">{n.browse_path}</td><td className="muted">{n.data_type}{n.writable ? ", writable" : ""}</td>
                    <td><button type="button" onClick={() => pick(n)}>Use</button></td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ))}
        <SchemaForm root={root} schema={resolve(root, { $ref: `#/$defs/${def}` })} value={value} onChange={setValue}
          errors={errors} readOnly={tag ? ["name"] : []} common={["data_type", "scale", "offset", "unit", "access"]} />
        {general.map((g) => <p key={g} className="error" role="alert">{g}</p>)}
        <div className="row">
          <button type="submit" className="primary" disabled={busy}>Save and apply</button>
          <button type="button" onClick={onClose}>Cancel</button>
        </div>
      </form>
    </Dialog>
  );
}
