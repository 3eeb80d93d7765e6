// A form generated from the flow spec's JSON Schema (react-jsonschema-form) for one part of the
// document. It never validates on its own (the API does, see matcher.ts) and never fills in
// defaults, so a form that is opened and closed leaves the document exactly as it was.
import Form from "@rjsf/core/lib/components/Form.js";
import type { ErrorSchema, RJSFSchema, UiSchema } from "@rjsf/utils";

import { validator } from "./matcher";
import type { Json } from "./model";
import type { ErrorTree } from "./problems";

const BEHAVIOR = {
  emptyObjectFields: "skipDefaults",
  arrayMinItems: { populate: "never" },
  constAsDefaults: "never",
  mergeDefaultsIntoFormData: "useFormDataIfPresent",
} as const;

interface Props {
  schema: RJSFSchema;
  value: Json;
  errors?: ErrorTree;
  uiSchema?: UiSchema;
  readOnly?: boolean;
  idPrefix: string;
  onChange: (value: Json) => void;
}

export default function SpecForm({ schema, value, errors, uiSchema, readOnly, idPrefix, onChange }: Props) {
  return (
    <Form
      schema={schema}
      uiSchema={{ "ui:submitButtonOptions": { norender: true }, ...uiSchema }}
      formData={value}
      validator={validator}
      extraErrors={errors as ErrorSchema | undefined}
      showErrorList={false}
      noHtml5Validate
      readonly={readOnly}
      idPrefix={idPrefix}
      experimental_defaultFormStateBehavior={BEHAVIOR}
      onChange={(e) => {
        const next = (e.formData ?? null) as Json;
        if (JSON.stringify(next) !== JSON.stringify(value)) onChange(next);
      }}
    />
  );
}
