// Protocol -> the flow spec schema's definitions of its device and tag, and path helpers.
export const PROTOCOLS: Record<string, { device: string; tag: string; label: string }> = {
  modbus: { device: "ModbusDeviceSpec", tag: "ModbusTagSpec", label: "Modbus TCP" },
  opcua: { device: "OpcUaDeviceSpec", tag: "OpcUaTagSpec", label: "OPC UA" },
  s7: { device: "S7DeviceSpec", tag: "S7TagSpec", label: "Siemens S7" },
  mqtt: { device: "MqttDeviceSpec", tag: "MqttTagSpec", label: "MQTT" },
};

export function protocolOf(device: { protocol?: unknown }): string {
  const p = String(device.protocol ?? "modbus");
  return p === "modbus_tcp" ? "modbus" : p;
}

/** An API problem path (`devices[2].tags[0].scale`) as a form path (`tags.0.scale`, or `scale` in a tag form). */
export function formPath(path: string, tagForm = false): string {
  let p = path.replace(/^body\./, "").replace(/^devices\[\d+\]\.?/, "");
  if (tagForm) p = p.replace(/^tags\[\d+\]\.?/, "");
  return p.replace(/\[(\d+)\]/g, ".$1");
}

/** Where a tag lives on its device, for the table. */
export function addressOf(tag: Record<string, unknown>): string {
  if (tag.node_id) return String(tag.node_id);
  if (tag.topic) return String(tag.topic);
  if (tag.table !== undefined) return `${tag.table}:${tag.address}`;
  if (tag.address !== undefined) return String(tag.address);
  return "";
}
