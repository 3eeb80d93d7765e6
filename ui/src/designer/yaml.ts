/**
 * Import and export of spec documents as YAML (or JSON), read the way the API reads them.
 *
 * The API parses YAML with PyYAML, which follows YAML 1.1: `06:00` unquoted is a number there and
 * `yes` a boolean. So both directions use YAML 1.1 here, and the export quotes what 1.1 would
 * misread. PyYAML reads `y` and `n` as strings (the `yaml` package's 1.1 schema reads booleans),
 * so its boolean words are used. JSON has no integer keys, so a machine's `states` keys are written
 * back as numbers.
 */
import { Document, type Tags, isPair, isScalar, parse, visit } from "yaml";

import { type SpecDoc, isObject } from "./model";

const PY_TRUE = /^(?:[Yy]es|YES|[Tt]rue|TRUE|[Oo]n|ON)$/;
const PY_FALSE = /^(?:[Nn]o|NO|[Ff]alse|FALSE|[Oo]ff|OFF)$/;

/** YAML 1.1 booleans as PyYAML reads them. */
function pyyamlBooleans(tags: Tags): Tags {
  return tags.map((t) =>
    typeof t === "object" && t.tag === "tag:yaml.org,2002:bool" && "test" in t && t.test
      ? { ...t, test: t.test.test("true") ? PY_TRUE : PY_FALSE }
      : t,
  ) as Tags;
}

export class ImportError extends Error {}

/** Parse a spec file's text (YAML 1.1 or JSON) into a document; refuses anything but a mapping. */
export function parseSpecText(text: string): SpecDoc {
  let value: unknown;
  try {
    value = text.trimStart().startsWith("{")
      ? JSON.parse(text)
      : parse(text, { version: "1.1", customTags: pyyamlBooleans, uniqueKeys: true, maxAliasCount: 1000 });
  } catch (exc) {
    throw new ImportError(`not valid YAML or JSON: ${(exc as Error).message.split("\n")[0]}`);
  }
  if (!isObject(value)) throw new ImportError("a spec is a mapping (version, id, devices, ...)");
  return JSON.parse(JSON.stringify(value)) as SpecDoc; // plain JSON data, as the API stores it
}

/** The document as YAML 1.1 text. */
export function specToYaml(spec: SpecDoc): string {
  const doc = new Document(spec, { version: "1.1", aliasDuplicateObjects: false });
  visit(doc, {
    Pair(_, pair, path) {
      const owner = path[path.length - 2];
      if (!isPair(owner) || !isScalar(owner.key) || owner.key.value !== "states") return;
      if (isScalar(pair.key) && typeof pair.key.value === "string" && /^-?\d+$/.test(pair.key.value)) {
        pair.key = doc.createNode(Number(pair.key.value));
      }
    },
  });
  return doc.toString({ lineWidth: 0 });
}
