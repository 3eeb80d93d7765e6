"""Examples in the OpenAPI document for every DTO.

The DTOs carry their examples in ``model_config["json_schema_extra"]["examples"]`` (where pydantic
puts them in a JSON Schema), but Litestar builds its component schemas itself and leaves them out;
this copies them onto the built document once, when the app is created.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from litestar import Litestar
from pydantic import BaseModel


def _api_models(cls: type[BaseModel] = BaseModel) -> Iterator[type[BaseModel]]:
    for sub in cls.__subclasses__():
        if sub.__module__.startswith("api."):
            yield sub
        yield from _api_models(sub)


def add_model_examples(app: Litestar) -> None:
    """Give each component schema of an ``api.*`` pydantic model the examples of its model config."""
    components = app.openapi_schema.components
    schemas: dict[str, Any] = dict(components.schemas or {})
    for model in set(_api_models()):
        extra = model.model_config.get("json_schema_extra")
        examples = extra.get("examples") if isinstance(extra, dict) else None
        schema = schemas.get(model.__name__)
        if (
            isinstance(examples, list)
            and examples
            and schema is not None
            and not getattr(schema, "examples", None)
        ):
            schema.examples = list(examples)
