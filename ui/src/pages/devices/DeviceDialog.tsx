// Create or edit a device: fields from the flow spec schema's device definition, checked with it before
// sending; a new device also gets its first tag here (a device needs one). "Test connection" reads the
// device once with the connection in the form, before anything is saved.
import { useState } from "react";
import { api, ApiError } from "../../api/client";
import type { Device, DeviceTestOut } from "../../api/types";
import Dialog from "../../components/Dialog";
import SchemaForm from "../../components/SchemaForm";
import { resolve, validateDef, type JsonSchema } from "../../components/schema";
import { formPath, PROTOCOLS, protocolOf } from "./defs";
import TestResult from "./TestResult";

interface Props {
  root: JsonSchema;
  flow: string;
  device: Device | null;
  /** Location and connection of an existing device, to start a new one from. */
  template?: Device;
  onClose: () => void;
  onSaved: () => void;
}

export default function DeviceDialog({ root, flow, device, template, onClose, onSaved }: Props) {
  const editing = device !== null;
  const [protocol, setProtocol] = useState(device ? protocolOf(device) : "modbus");
  const defs = PROTOCOLS[protocol];
  const [value, setValue] = useState<Record<string, unknown>>(() => {
    if (device) {
      const { tags: _tags, ...rest } = device;
      return rest;
    }
    return { location: template?.location ?? {}, ...(protocol === "modbus" ? {} : { protocol }) };
  });
  const [tag, setTag] = useState<Record<string, unknown>>({});
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [general, setGeneral] = useState<string[]>([]);
  const [busy, setBusy] = useState(false);
  const [tested, setTested] = useState<DeviceTestOut | string | null>(null);

  const deviceSchema = resolve(root, { $ref: `#/$defs/${defs.device}` });
  const tagSchema = resolve(root, { $ref: `#/$defs/${defs.tag}` });
  const body = (): Record<string, unknown> => ({ ...value, ...(protocol !== "modbus" ? { protocol } : {}), tags: device ? device.tags : [tag] });
  const base = `/api/v1/flows/${encodeURIComponent(flow)}/devices`;

  function check(): boolean {
    const found = validateDef(root, defs.device, body());
    setErrors(found);
    if (Object.keys(found).length) setGeneral(["Fix the marked fields."]);
    return Object.keys(found).length === 0;
  }

  function showProblem(e: unknown) {
    if (e instanceof ApiError) {
      const mapped: Record<string, string> = {};
      const rest: string[] = [];
      for (const p of e.problem.problems ?? []) {
        const path = formPath(p.path);
        if (path) mapped[path] = p.message;
        else rest.push(p.message);
      }
      setErrors(mapped);
      setGeneral([e.message, ...rest]);
    } else setGeneral([String(e)]);
  }

  async function save() {
    setGeneral([]);
    if (!check()) return;
    setBusy(true);
    try {
      if (editing) await api(`${base}/${encodeURIComponent(device.id)}`, { method: "PUT", body: body() });
      else await api(base, { method: "POST", body: body() });
      onSaved();
    } catch (e) {
      showProblem(e);
    } finally {
      setBusy(false);
    }
  }

  async function test() {
    if (!device) return;
    setTested(null);
    setBusy(true);
    try {
      setTested(await api<DeviceTestOut>(`${base}/${encodeURIComponent(device.id)}/test`, { method: "POST", body: { connection: value.connection, timeout_s: 10 } }));
    } catch (e) {
      setTested(e instanceof Error ? e.message : String(e));
    } finally {
      setBusy(false);
    }
  }

  const tagErrors = Object.fromEntries(Object.entries(errors).filter(([k]) => k.startsWith("tags.0.")).map(([k, v]) => [`tag.${k.slice(7)}`, v]));
  return (
    <Dialog title={editing ? `Edit device ${device.id}` : "New device"} onClose={onClose}>
      <form onSubmit={(e) => { e.preventDefault(); void save(); }} style={{ display: "flex", flexDirection: "column", gap: 10 }}>
        {!editing && (
          <label>
            Protocol
            <select name="protocol" value={protocol} onChange={(e) => setProtocol(e.target.value)}>
              {Object.entries(PROTOCOLS).map(([k, p]) => <option key={k} value={k}>{p.label}</option>)}
            </select>
          </label>
        )}
        <SchemaForm root={root} schema={deviceSchema} value={value} onChange={setValue} errors={errors}
          omit={["tags", "protocol"]} readOnly={editing ? ["id"] : []} common={["poll_interval_s"]} />
        {!editing && (
          <fieldset className="card">
            <legend>First tag</legend>
            <SchemaForm root={root} schema={tagSchema} value={tag} onChange={setTag} errors={tagErrors} path="tag" common={["data_type", "scale", "unit"]} />
          </fieldset>
        )}
        {general.map((g) => <p key={g} className="error" role="alert">{g}</p>)}
        {tested !== null && <TestResult result={tested} />}
        <div className="row">
          <button type="submit" className="primary" disabled={busy}>{editing ? "Save and apply" : "Create and apply"}</button>
          {editing && <button type="button" onClick={() => void test()} disabled={busy}>Test connection</button>}
          <button type="button" onClick={onClose}>Cancel</button>
        </div>
      </form>
    </Dialog>
  );
}
