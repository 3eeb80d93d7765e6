/**
 * The form generator's validator: only "does this value fit this schema option?".
 *
 * The API is the one validator of a spec (it runs every check the runtime runs, with field
 * paths), so the form does not validate on its own; it only has to pick which `anyOf`/`oneOf`
 * option a value is (a clamp or `null`, a TCP or serial Modbus connection, a state's category or
 * object). A structural check does that without a JSON Schema compiler, which would add ~120 kB
 * and need `eval` (`new Function`) at run time.
 */
import type { RJSFSchema, ValidatorType } from "@rjsf/utils";

type Schema = RJSFSchema;

function resolve(schema: Schema, root: Schema): Schema {
  let s = schema;
  for (let i = 0; i < 32 && typeof s.$ref === "string"; i++) {
    const parts = s.$ref.replace(/^#\//, "").split("/");
    let target: unknown = root;
    for (const p of parts) target = (target as Record<string, unknown> | undefined)?.[p];
    const { $ref: _ref, ...rest } = s;
    s = { ...(target as Schema), ...rest };
  }
  return s;
}

function typeMatches(type: string, value: unknown): boolean {
  switch (type) {
    case "null":
      return value === null;
    case "object":
      return typeof value === "object" && value !== null && !Array.isArray(value);
    case "array":
      return Array.isArray(value);
    case "integer":
      return Number.isInteger(value);
    case "number":
      return typeof value === "number";
    case "string":
      return typeof value === "string";
    case "boolean":
      return typeof value === "boolean";
    default:
      return true;
  }
}

/** Whether `value` fits `schema`: types, consts, enums, required and known properties, patterns. */
export function matches(schema: Schema | boolean, value: unknown, root: Schema, depth = 0): boolean {
  if (typeof schema === "boolean") return schema;
  if (depth > 16) return true;
  const s = resolve(schema, root);
  if (value === undefined) return true;
  if (s.const !== undefined && s.const !== value) return false;
  if (Array.isArray(s.enum) && !s.enum.includes(value as never)) return false;
  if (s.type !== undefined) {
    const types = Array.isArray(s.type) ? s.type : [s.type];
    if (!types.some((t) => typeMatches(t, value))) return false;
  }
  if (typeof value === "string" && typeof s.pattern === "string" && !new RegExp(s.pattern).test(value)) return false;
  const options = (s.anyOf ?? s.oneOf) as (Schema | boolean)[] | undefined;
  if (options && !options.some((o) => matches(o, value, root, depth + 1))) return false;
  if (typeof value === "object" && value !== null && !Array.isArray(value)) {
    const obj = value as Record<string, unknown>;
    for (const key of s.required ?? []) if (!(key in obj)) return false;
    const props = (s.properties ?? {}) as Record<string, Schema | boolean>;
    for (const [key, v] of Object.entries(obj)) {
      const sub = props[key];
      if (sub === undefined) {
        if (s.additionalProperties === false) return false;
        continue;
      }
      if (!matches(sub, v, root, depth + 1)) return false;
    }
  }
  return true;
}

export const validator: ValidatorType = {
  validateFormData: () => ({ errors: [], errorSchema: {} }),
  isValid: (schema, formData, rootSchema) => matches(schema, formData, rootSchema),
  rawValidation: () => ({ errors: [] }),
};
