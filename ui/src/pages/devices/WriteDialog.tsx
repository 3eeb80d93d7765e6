// Write a value to a read_write tag: type it, confirm (what, where, which value), then the device's ack.
import { useState } from "react";
import { api } from "../../api/client";
import type { AckOut, Device, Tag } from "../../api/types";
import Dialog from "../../components/Dialog";

export default function WriteDialog({ flow, device, tag, onClose }: { flow: string; device: Device; tag: Tag; onClose: () => void }) {
  const [text, setText] = useState("");
  const [confirming, setConfirming] = useState(false);
  const [busy, setBusy] = useState(false);
  const [answer, setAnswer] = useState<AckOut | string | null>(null);
  const numeric = text.trim() !== "" && !Number.isNaN(Number(text));
  const value: number | boolean | string = numeric ? Number(text) : text === "true" ? true : text === "false" ? false : text;

  async function write() {
    setBusy(true);
    try {
      setAnswer(await api<AckOut>(`/api/v1/flows/${encodeURIComponent(flow)}/devices/${encodeURIComponent(device.id)}/tags/${encodeURIComponent(tag.name)}/value`, { method: "POST", body: { value } }));
    } catch (e) {
      setAnswer(e instanceof Error ? e.message : String(e));
    } finally {
      setBusy(false);
      setConfirming(false);
    }
  }

  return (
    <Dialog title={`Write ${device.id}/${tag.name}`} onClose={onClose}>
      {!confirming ? (
        <form onSubmit={(e) => { e.preventDefault(); if (text.trim()) setConfirming(true); }} style={{ display: "flex", flexDirection: "column", gap: 10 }}>
          <label>
            Value {tag.unit ? `(${tag.unit})` : ""}
            <input name="value" value={text} onChange={(e) => setText(e.target.value)} autoFocus required />
          </label>
          <div className="row"><button type="submit" className="primary">Write…</button><button type="button" onClick={onClose}>Cancel</button></div>
        </form>
      ) : (
        <div style={{ display: "flex", flexDirection: "column", gap: 10 }}>
          <p role="alert">Write <b className="mono">{JSON.stringify(value)}</b>{tag.unit ? ` ${tag.unit}` : ""} to <b>{device.id}/{tag.name}</b> on the running device?</p>
          <div className="row">
            <button className="danger" onClick={() => void write()} disabled={busy}>Yes, write it</button>
            <button onClick={() => setConfirming(false)}>Back</button>
          </div>
        </div>
      )}
      {answer !== null && (typeof answer === "string"
        ? <p className="error" role="alert">{answer}</p>
        : <p className={answer.ok ? "" : "error"} role="status">{answer.ok ? "The device acknowledged the write." : `Refused: ${answer.error}`}</p>)}
    </Dialog>
  );
}
