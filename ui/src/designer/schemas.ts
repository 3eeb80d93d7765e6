/**
 * The parts of the flow spec's JSON Schema (GET /api/v1/flow-specs/schema) each form edits:
 * an operator or sink by its `type` (from the schema's discriminator mapping), a protocol's
 * devices as a list, and the flow-wide settings (the root without the node lists).
 */
import type { RJSFSchema, UiSchema } from "@rjsf/utils";

import type { Protocol } from "./model";

type Defs = Record<string, RJSFSchema>;

function defsOf(root: RJSFSchema): Defs {
  return (root.$defs ?? {}) as Defs;
}

function mappingOf(root: RJSFSchema, list: "operators" | "sinks"): Record<string, string> {
  const items = (root.properties?.[list] as RJSFSchema | undefined)?.items as RJSFSchema | undefined;
  const mapping = (items?.discriminator as { mapping?: Record<string, string> } | undefined)?.mapping;
  return mapping ?? {};
}

/** The schema of an operator or sink of `type`, or null when the spec knows no such type. */
export function nodeSchema(root: RJSFSchema, kind: "operator" | "sink", type: string): RJSFSchema | null {
  const ref = mappingOf(root, kind === "operator" ? "operators" : "sinks")[type];
  if (!ref) return null;
  const name = ref.split("/").pop() as string;
  const def = defsOf(root)[name];
  return def ? { ...def, $defs: root.$defs } : null;
}

const DEVICE_DEF: Record<Protocol, string> = {
  modbus: "ModbusDeviceSpec",
  opcua: "OpcUaDeviceSpec",
  s7: "S7DeviceSpec",
  mqtt: "MqttDeviceSpec",
};

export function groupSchema(root: RJSFSchema, protocol: Protocol): RJSFSchema {
  return {
    type: "array",
    title: "Devices",
    items: { $ref: `#/$defs/${DEVICE_DEF[protocol]}` },
    $defs: root.$defs,
  };
}

export function settingsSchema(root: RJSFSchema): RJSFSchema {
  const { devices: _d, operators: _o, sinks: _s, ...properties } = (root.properties ?? {}) as Record<string, RJSFSchema>;
  const required = (root.required ?? []).filter((r) => !["devices", "operators", "sinks"].includes(r));
  return { type: "object", properties, required, additionalProperties: true, $defs: root.$defs };
}

/** The node's `type` is what the node is: shown on the node, not edited in the form. */
export const NODE_UI: UiSchema = { type: { "ui:widget": "hidden" } };
export const SETTINGS_UI: UiSchema = { version: { "ui:widget": "hidden" } };
