// The flow spec's JSON Schema (GET /api/v1/flow-specs/schema) and validation of one part of a spec
// against it with Ajv: forms show the same rules the API enforces, before anything is sent.
import Ajv2020 from "ajv/dist/2020";
import type { ErrorObject, ValidateFunction } from "ajv";
import { useQuery } from "@tanstack/react-query";
import { api } from "../api/client";

export type JsonSchema = {
  type?: string | string[];
  $ref?: string;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  enum?: unknown[];
  const?: unknown;
  default?: unknown;
  title?: string;
  description?: string;
  items?: JsonSchema;
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  pattern?: string;
  $defs?: Record<string, JsonSchema>;
};

export function useSpecSchema() {
  return useQuery({
    queryKey: ["flow-spec-schema"],
    queryFn: () => api<JsonSchema>("/api/v1/flow-specs/schema"),
    staleTime: Infinity,
  });
}

/** `#/$defs/X` resolved against the root (one level; the spec's refs all point into $defs). */
export function resolve(root: JsonSchema, schema: JsonSchema): JsonSchema {
  if (schema.$ref?.startsWith("#/$defs/")) return root.$defs?.[schema.$ref.slice(8)] ?? {};
  return schema;
}

/** `anyOf: [X, null]` -> X (nullable); anything else unchanged. */
export function unNull(root: JsonSchema, schema: JsonSchema): { schema: JsonSchema; nullable: boolean } {
  const s = resolve(root, schema);
  if (s.anyOf) {
    const rest = s.anyOf.filter((x) => x.type !== "null");
    if (rest.length === 1 && rest.length < s.anyOf.length) {
      return { schema: { ...resolve(root, rest[0]), title: s.title ?? rest[0].title, default: s.default }, nullable: true };
    }
  }
  return { schema: s, nullable: false };
}

const validators = new WeakMap<JsonSchema, Map<string, ValidateFunction>>();

/** Validates `value` against `#/$defs/<def>` of the root schema; errors keyed by dotted path. */
export function validateDef(root: JsonSchema, def: string, value: unknown): Record<string, string> {
  let byDef = validators.get(root);
  if (!byDef) {
    byDef = new Map();
    validators.set(root, byDef);
  }
  let validate = byDef.get(def);
  if (!validate) {
    const ajv = new Ajv2020({ strict: false, allErrors: true });
    ajv.addSchema({ ...root, $id: "spec" } as object);
    validate = ajv.getSchema(`spec#/$defs/${def}`);
    if (!validate) throw new Error(`the flow spec schema has no definition ${def}`);
    byDef.set(def, validate);
  }
  if (validate(value)) return {};
  return errorsByPath(validate.errors ?? []);
}

function errorsByPath(errors: ErrorObject[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of errors) {
    if (e.keyword === "oneOf" || e.keyword === "anyOf" || e.keyword === "if") continue;
    let path = e.instancePath.replace(/^\//, "").replace(/\//g, ".");
    if (e.keyword === "required") path = [path, (e.params as { missingProperty: string }).missingProperty].filter(Boolean).join(".");
    if (e.keyword === "additionalProperties") path = [path, (e.params as { additionalProperty: string }).additionalProperty].filter(Boolean).join(".");
    if (e.keyword === "type" && e.message === "must be null") continue;
    out[path] ??= e.keyword === "required" ? "required" : e.message ?? "invalid";
  }
  return out;
}
