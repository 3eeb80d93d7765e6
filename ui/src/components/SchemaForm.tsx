// A form generated from a JSON Schema object: inputs by type (enum -> select, boolean -> checkbox,
// number -> number input, nested object -> fieldset), required fields first, the optional ones under
// "More settings". An empty input removes the key, so the schema's default applies. Errors are keyed by
// dotted path ("connection.port") and shown under the field they concern.
import { resolve, unNull, type JsonSchema } from "./schema";

type Value = Record<string, unknown>;

/** Optional fields of nested objects (connections) shown up front: where the device is. */
const NESTED_COMMON = ["port", "unit_id", "endpoint", "rack", "slot", "transport"];

interface Props {
  root: JsonSchema;
  schema: JsonSchema;
  value: Value;
  onChange: (value: Value) => void;
  errors: Record<string, string>;
  /** Keys not shown (edited elsewhere, e.g. a device's tags). */
  omit?: string[];
  /** Keys shown read-only (a tag's name when editing). */
  readOnly?: string[];
  /** Optional keys shown with the required ones. */
  common?: string[];
  path?: string;
}

function label(key: string, s: JsonSchema): string {
  return s.title ?? key;
}

function setKey(value: Value, key: string, v: unknown): Value {
  const next = { ...value };
  if (v === undefined) delete next[key];
  else next[key] = v;
  return next;
}

function Field({ root, name, schema, required, value, onChange, errors, path, readOnly }: {
  root: JsonSchema; name: string; schema: JsonSchema; required: boolean; value: unknown;
  onChange: (v: unknown) => void; errors: Record<string, string>; path: string; readOnly: boolean;
}) {
  const { schema: s } = unNull(root, schema);
  const error = errors[path];
  const id = `f-${path}`;
  const common = { id, name: path, "aria-invalid": error ? true : undefined, disabled: readOnly } as const;
  const title = label(name, s) + (required ? " *" : "");
  const hint = s.default !== undefined && s.default !== null ? `default ${JSON.stringify(s.default)}` : undefined;
  const err = error ? <span className="error" role="alert" data-field-error={path}>{error}</span> : null;

  if (s.const !== undefined) return null;
  if (s.oneOf) {
    // a union of objects (a connection: TCP or serial): the first variant's fields, which is the common case
    const variant = resolve(root, s.oneOf[0]);
    return <Field root={root} name={name} schema={{ ...variant, title: s.title }} required={required} value={value} onChange={onChange} errors={errors} path={path} readOnly={readOnly} />;
  }
  if (s.type === "object" && s.properties) {
    const obj = (value && typeof value === "object" ? value : {}) as Value;
    return (
      <fieldset className="card" style={{ gridColumn: "1 / -1" }}>
        <legend>{title}</legend>
        <Fields root={root} schema={s} value={obj} onChange={(v) => onChange(Object.keys(v).length ? v : undefined)} errors={errors} path={path} readOnly={[]} common={NESTED_COMMON} />
        {err}
      </fieldset>
    );
  }
  if (s.enum) {
    return (
      <label htmlFor={id}>
        {title}
        <select {...common} value={value === undefined || value === null ? "" : String(value)} onChange={(e) => {
          const raw = e.target.value;
          const found = s.enum!.find((x) => String(x) === raw);
          onChange(raw === "" ? undefined : found);
        }}>
          <option value="">{hint ?? "—"}</option>
          {s.enum.map((x) => <option key={String(x)} value={String(x)}>{String(x)}</option>)}
        </select>
        {err}
      </label>
    );
  }
  if (s.type === "boolean") {
    return (
      <label htmlFor={id} style={{ flexDirection: "row", alignItems: "center" }}>
        <input type="checkbox" {...common} checked={Boolean(value ?? s.default)} onChange={(e) => onChange(e.target.checked)} />
        {title}
        {err}
      </label>
    );
  }
  if (s.type === "number" || s.type === "integer") {
    return (
      <label htmlFor={id}>
        {title}
        <input type="number" step={s.type === "integer" ? 1 : "any"} {...common} placeholder={hint}
          value={value === undefined || value === null ? "" : String(value)}
          onChange={(e) => onChange(e.target.value === "" ? undefined : Number(e.target.value))} />
        {err}
      </label>
    );
  }
  if (s.type === "string") {
    return (
      <label htmlFor={id}>
        {title}
        <input type={/password|secret/i.test(name) ? "password" : "text"} {...common} placeholder={hint}
          value={value === undefined || value === null ? "" : String(value)}
          onChange={(e) => onChange(e.target.value === "" ? undefined : e.target.value)} />
        {err}
      </label>
    );
  }
  if (s.type === "array" && s.items && ["string", "number", "integer"].includes(String(resolve(root, s.items).type))) {
    const numeric = resolve(root, s.items).type !== "string";
    const list = Array.isArray(value) ? value : [];
    return (
      <label htmlFor={id}>
        {title} <span className="muted">(comma separated)</span>
        <input type="text" {...common} value={list.join(", ")} onChange={(e) => {
          const items = e.target.value.split(",").map((x) => x.trim()).filter(Boolean);
          onChange(items.length ? items.map((x) => (numeric ? Number(x) : x)) : undefined);
        }} />
        {err}
      </label>
    );
  }
  // anything richer (lists of objects, unions): JSON text
  return (
    <label htmlFor={id} style={{ gridColumn: "1 / -1" }}>
      {title} <span className="muted">(JSON)</span>
      <textarea {...common} rows={3} defaultValue={value === undefined ? "" : JSON.stringify(value)} onBlur={(e) => {
        const text = e.target.value.trim();
        if (!text) return onChange(undefined);
        try {
          onChange(JSON.parse(text));
        } catch {
          /* kept as typed; validation names the field on save */
        }
      }} />
      {err}
    </label>
  );
}

function Fields({ root, schema, value, onChange, errors, omit = [], readOnly = [], common = [], path = "" }: Props) {
  const props = Object.entries(schema.properties ?? {}).filter(([k]) => !omit.includes(k));
  const required = new Set(schema.required ?? []);
  const first = props.filter(([k]) => required.has(k) || common.includes(k));
  const more = props.filter(([k]) => !required.has(k) && !common.includes(k));
  const render = ([key, s]: [string, JsonSchema]) => (
    <Field key={key} root={root} name={key} schema={s} required={required.has(key)} value={value[key]}
      onChange={(v) => onChange(setKey(value, key, v))} errors={errors} path={path ? `${path}.${key}` : key}
      readOnly={readOnly.includes(key)} />
  );
  const moreHasError = more.some(([k]) => Object.keys(errors).some((p) => p === (path ? `${path}.${k}` : k) || p.startsWith(`${path ? `${path}.${k}` : k}.`)));
  return (
    <>
      <div className="grid2">{first.map(render)}</div>
      {more.length > 0 && (
        <details open={moreHasError}>
          <summary className="muted">More settings ({more.length})</summary>
          <div className="grid2">{more.map(render)}</div>
        </details>
      )}
    </>
  );
}

export default function SchemaForm(props: Props) {
  return <Fields {...props} />;
}
