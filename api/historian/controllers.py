"""Thin routes over :class:`control.historian.Historian` (``app.state.historian``, else one made from the
settings' database URL on first use).

Time parameters are ISO 8601 with an offset (``2026-11-30T12:00:00Z``); ranges are ``[start, end)``.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any

from litestar import Controller, MediaType, Request, Response, get, post
from litestar.datastructures import State
from litestar.openapi.spec import Example
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import Stream
from pydantic import BaseModel, ConfigDict, Field

from api.common import author_of
from api.errors import problems
from control.errors import InvalidError
from control.historian import MAX_BUCKETS, MAX_TAGS, Historian

_BUCKET = re.compile(r"^\s*([0-9]{1,7})\s*(s|m|h|d)?\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}

Tags = Annotated[
    list[int],
    QueryParameter(name="tag", description="tag id; repeat for several", examples=[Example(value=[4242])]),
]
Start = Annotated[
    datetime, QueryParameter(description="start of the range (inclusive), ISO 8601 with offset",
                        examples=[Example(value="2026-11-30T11:00:00Z")])
]  # fmt: skip
End = Annotated[
    datetime,
    QueryParameter(
        description="end of the range (exclusive)", examples=[Example(value="2026-11-30T12:00:00Z")]
    ),
]


def parse_bucket(text: str | None) -> timedelta | None:
    """``60``, ``60s``, ``1m``, ``1h``, ``1d`` → a timedelta; anything else is a 422 on ``query.bucket``."""
    if text is None or text == "":
        return None
    m = _BUCKET.match(text)
    if not m:
        raise InvalidError("bad bucket", [("query.bucket", f"{text!r} is not like 10s, 1m, 15m, 1h, 1d")])
    return timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])


async def historian_of(state: State) -> Historian:
    h = getattr(state, "historian", None)
    if h is None:
        h = Historian(state.settings.effective_database_url)
        state.historian = h
        state.historian_owned = True
    await h.open()
    return h  # type: ignore[no-any-return]


async def close_historian(app: Any) -> None:
    if getattr(app.state, "historian_owned", False):
        await app.state.historian.close()


class LatestQuery(BaseModel):
    """Body of ``POST /latest``: many tag ids (too many for a query string)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", json_schema_extra={"examples": [{"tags": [4242, 4243]}]}
    )

    tags: list[int] = Field(default_factory=list)


class HistorianController(Controller):
    path = "/api/v1/historian"
    tags = ["historian"]
    opt = {"permission": "historian:read"}

    @get("/tags", opt={"permission": "historian:read"}, responses=problems(404, 413, 503))
    async def list_tags(
        self,
        *,
        state: State,
        device: FromQuery[str | None] = None,
        search: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_TAGS)] = 1000,
        offset: Annotated[int, QueryParameter(ge=0)] = 0,
    ) -> list[dict[str, Any]]:
        """Tags with metadata: device, name, unit, UNS path."""
        h = await historian_of(state)
        return await h.tags(device=device, search=search, limit=limit, offset=offset)

    @get("/tags/{tag_id:int}", opt={"permission": "historian:read"}, responses=problems(404, 413, 503))
    async def get_tag(self, state: State, tag_id: FromPath[int]) -> dict[str, Any]:
        """One tag's metadata; 404 when unknown."""
        return await (await historian_of(state)).tag(tag_id)

    @get("/points", opt={"permission": "historian:read"}, responses=problems(404, 413, 503))
    async def points(
        self,
        *,
        state: State,
        tag: Tags,
        start: Start,
        end: End,
        limit: Annotated[int, QueryParameter(description="points per page (≤ 100000)")] = 10_000,
    ) -> dict[str, Any]:
        """Raw points of one or more tags over ``[start, end)``; ``next`` pages through long ranges."""
        return await (await historian_of(state)).raw(tag, start, end, limit=limit)

    @get("/aggregates", opt={"permission": "historian:read"}, responses=problems(404, 413, 503))
    async def aggregates(
        self,
        *,
        state: State,
        tag: Tags,
        start: Start,
        end: End,
        bucket: Annotated[
            str | None, QueryParameter(description="bucket: 10s, 1m, 1h, 1d; default from max_points")
        ] = None,
        max_points: Annotated[int, QueryParameter(description=f"buckets per tag, ≤ {MAX_BUCKETS}")] = 1000,
        fields: Annotated[
            str | None,
            QueryParameter(description="comma list of min,max,avg,count,sum,first,last,twa (default: all)"),
        ] = None,
    ) -> Response[bytes]:
        """Bucketed min/max/avg/count/sum/first/last/twa per tag; reads nexus_agg_1m / nexus_agg_10s when
        the bucket allows, raw points otherwise (``source`` says which)."""
        body = await (await historian_of(state)).aggregates_json(
            tag,
            start,
            end,
            bucket=parse_bucket(bucket),
            max_points=max_points,
            fields=[f.strip() for f in fields.split(",") if f.strip()] if fields else None,
        )
        return Response(body, media_type=MediaType.JSON)

    @get("/latest", opt={"permission": "historian:read"}, responses=problems(404, 413, 503))
    async def latest(
        self, state: State, tag: Annotated[list[int] | None, QueryParameter(name="tag")] = None
    ) -> list[dict[str, Any]]:
        """Newest stored value of the given tags (of every tag without ``tag``)."""
        return await (await historian_of(state)).latest(tag or None)

    @post("/latest", status_code=200, opt={"permission": "historian:read"}, responses=problems(404, 413, 503))
    async def latest_many(self, state: State, data: JSONBody[LatestQuery]) -> list[dict[str, Any]]:
        """Newest stored value of many tags (the ids in the body, up to 10,000)."""
        return await (await historian_of(state)).latest(data.tags)

    @get("/alerts", opt={"permission": "historian:read"}, responses=problems(404, 413, 503))
    async def alerts(
        self,
        *,
        state: State,
        start: Start,
        end: End,
        device: FromQuery[str | None] = None,
        tag: Annotated[int | None, QueryParameter(name="tag")] = None,
        alert_state: Annotated[
            str | None, QueryParameter(name="state", description="raised or cleared")
        ] = None,
        limit: FromQuery[int] = 1000,
    ) -> list[dict[str, Any]]:
        """Alerts raised and cleared in the range, newest first."""
        return await (await historian_of(state)).alerts(
            start, end, device=device, tag_id=tag, state=alert_state, limit=limit
        )

    @post(
        "/alerts/{alert_id:str}/ack",
        status_code=200,
        opt={"permission": "alerts:ack"},
        responses=problems(404, 422, 503),
    )
    async def ack_alert(
        self, request: Request[Any, Any, Any], state: State, alert_id: FromPath[str]
    ) -> dict[str, Any]:
        """Acknowledge a raised alert (its `id` from `GET /alerts`); the first acknowledgement stands."""
        return await (await historian_of(state)).ack_alert(alert_id[:200], actor=author_of(request))

    @get("/oee", opt={"permission": "historian:read"}, responses=problems(404, 413, 503))
    async def oee(
        self,
        state: State,
        start: Start,
        end: End,
        machine: FromQuery[str | None] = None,
        limit: FromQuery[int] = 1000,
    ) -> list[dict[str, Any]]:
        """OEE periods (availability, performance, quality, downtime) overlapping the range."""
        return await (await historian_of(state)).oee(start, end, machine=machine, limit=limit)

    @get(
        "/export.csv",
        opt={"permission": "historian:read"},
        responses=problems(404, 413, 503),
        media_type="text/csv",
    )
    async def export_csv(self, state: State, tag: Tags, start: Start, end: End) -> Stream:
        """Raw points as CSV, streamed from a server-side cursor (any size)."""
        rows = await (await historian_of(state)).export_csv(tag, start, end)
        return Stream(
            rows,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="nexus-points.csv"'},
        )
