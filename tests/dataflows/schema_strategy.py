"""Hypothesis strategies for documents described by a JSON Schema (the subset pydantic emits).

hypothesis-jsonschema 0.23 would be the library for this, but it drives private Hypothesis
internals (``conjecture.utils.many.more``) that Hypothesis 6.170 no longer has: it fails with
``AttributeError: 'many' object has no attribute 'more'`` on the first draw. The flow spec's
schema uses only ``$ref``, ``anyOf``/``oneOf``, ``const``, ``enum``, ``type``, ``properties``/
``required``/``additionalProperties``, numeric bounds, ``pattern``, ``minLength`` and
``minItems``, which this covers in a few lines.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st

MAX_ITEMS = 2
"""Lists get at most ``minItems + MAX_ITEMS`` elements: small documents, more of them."""


def from_schema(
    schema: dict[str, Any], strings: st.SearchStrategy[str] | None = None
) -> st.SearchStrategy[Any]:
    """Documents valid against ``schema`` (its ``$defs`` resolve ``$ref``); ``strings`` replaces
    arbitrary text for string fields without a ``pattern`` (to bias towards plausible values)."""
    defs = schema.get("$defs", {})
    cache: dict[str, st.SearchStrategy[Any]] = {}

    def ref(name: str) -> st.SearchStrategy[Any]:
        if name not in cache:
            cache[name] = st.deferred(lambda: node(defs[name]))
        return cache[name]

    def node(s: dict[str, Any]) -> st.SearchStrategy[Any]:
        if "$ref" in s:
            return ref(s["$ref"].rsplit("/", 1)[-1])
        if "const" in s:
            return st.just(s["const"])
        if "enum" in s:
            return st.sampled_from(s["enum"])
        for key in ("anyOf", "oneOf"):
            if key in s:
                return st.one_of([node(o) for o in s[key]])
        kind = s.get("type")
        if isinstance(kind, list):
            return st.one_of([node({**s, "type": k}) for k in kind])
        if kind == "null":
            return st.none()
        if kind == "boolean":
            return st.booleans()
        if kind == "integer":
            lo = s.get("minimum", s["exclusiveMinimum"] + 1 if "exclusiveMinimum" in s else None)
            hi = s.get("maximum", s["exclusiveMaximum"] - 1 if "exclusiveMaximum" in s else None)
            return st.integers(
                min_value=None if lo is None else math.ceil(lo),
                max_value=None if hi is None else math.floor(hi),
            )
        if kind == "number":
            return st.floats(
                min_value=s.get("minimum", s.get("exclusiveMinimum")),
                max_value=s.get("maximum", s.get("exclusiveMaximum")),
                exclude_min="exclusiveMinimum" in s,
                exclude_max="exclusiveMaximum" in s,
                allow_nan=False,
                allow_infinity=False,
            )
        if kind == "string":
            lo, hi = s.get("minLength", 0), s.get("maxLength")
            if "pattern" in s:
                text = st.from_regex(s["pattern"], fullmatch=True)
                return text.filter(lambda t: len(t) >= lo and (hi is None or len(t) <= hi))
            text = strings if strings is not None else st.text(max_size=(hi if hi is not None else lo + 12))
            return text.filter(lambda t: len(t) >= lo and (hi is None or len(t) <= hi))
        if kind == "array":
            lo = s.get("minItems", 0)
            hi = min(s.get("maxItems", lo + MAX_ITEMS), lo + MAX_ITEMS)
            return st.lists(node(s.get("items", {})), min_size=lo, max_size=hi)
        if kind == "object" or "properties" in s:
            return obj(s)
        return st.none()

    def obj(s: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
        props: dict[str, Any] = s.get("properties", {})
        required = set(s.get("required", ()))
        extra = s.get("additionalProperties", True)
        if not props and isinstance(extra, dict):  # a mapping, e.g. dict[int, ...]: keys are numbers
            keys = st.integers(-3, 9).map(str)
            return st.dictionaries(keys, node(extra), min_size=s.get("minProperties", 0), max_size=3)
        fixed = st.fixed_dictionaries(
            {k: node(v) for k, v in props.items() if k in required},
            optional={k: node(v) for k, v in props.items() if k not in required},
        )
        return fixed

    return node(schema)
