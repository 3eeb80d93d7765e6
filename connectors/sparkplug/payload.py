"""Sparkplug B payloads (protobuf, from the spec's schema in ``sparkplug_b.proto``).

Values travel as float64 in a :class:`~core.batch.PointBatch`; each metric's datatype decides the
protobuf field: ``int_value`` for 8- to 32-bit integers (signed ones in two's complement of their width),
``long_value`` for 64-bit ones, ``float_value``/``double_value``, ``boolean_value``, ``string_value``.
NaN (a bad reading) becomes ``is_null``. Quality and engineering unit are metric properties:
``Quality`` (Int32: 192 good, 500 stale, 0 bad — tck-id-payloads-propertyset-quality-value-value)
and ``engUnit``; a quality other than good also carries ``nexusQuality`` (the platform's name).

>>> p = Payload()
>>> m = p.metrics.add()
>>> set_value(m, DataType.Int16, -2.0, None); m.int_value
65534
>>> set_value(m, DataType.Boolean, 1.0, None); m.boolean_value
True
>>> m2 = p.metrics.add(); set_value(m2, DataType.Double, float("nan"), None); m2.is_null, m2.HasField("double_value")
(True, False)
"""

from __future__ import annotations

import math

import numpy as np

from connectors.sparkplug.config import DataType, DevicePlan
from connectors.sparkplug.sparkplug_b_pb2 import Payload
from core.quality import QUALITY_NAMES, Quality

__all__ = [
    "BDSEQ",
    "NEXT_SERVER",
    "REBIRTH",
    "Payload",
    "nbirth_payload",
    "ndeath_payload",
    "quality_code",
    "set_value",
]

BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
NEXT_SERVER = "Node Control/Next Server"

_INT_BITS = {DataType.Int8: 8, DataType.Int16: 16, DataType.Int32: 32, DataType.Int64: 64}
_UINT_BITS = {DataType.UInt8: 8, DataType.UInt16: 16, DataType.UInt32: 32, DataType.UInt64: 64}

_FLOATS = (DataType.Float, DataType.Double)

QUALITY_GOOD, QUALITY_STALE, QUALITY_BAD = 192, 500, 0


def quality_code(q: int) -> int:
    """The Sparkplug ``Quality`` property for a platform quality code.

    >>> quality_code(Quality.GOOD), quality_code(Quality.CLAMPED), quality_code(Quality.STALE), quality_code(Quality.COMM_ERROR)
    (192, 192, 500, 0)
    """
    if q >= 128:
        return QUALITY_BAD
    return QUALITY_STALE if q == Quality.STALE else QUALITY_GOOD


def set_value(metric: Payload.Metric, datatype: DataType, value: float, text: str | None) -> None:
    """Put ``value`` (or ``text`` for a String metric) into the field ``datatype`` uses; NaN → ``is_null``."""
    if datatype == DataType.String:
        if text is None and (value is None or math.isnan(value)):
            metric.is_null = True
        else:
            metric.string_value = text if text is not None else repr(value)
        return
    if value is None or math.isnan(value) or (math.isinf(value) and datatype not in _FLOATS):
        metric.is_null = True  # a bad reading; +-inf is a value only for Float and Double
        return
    if datatype == DataType.Double:
        metric.double_value = value
    elif datatype == DataType.Float:
        metric.float_value = value
    elif datatype == DataType.Boolean:
        metric.boolean_value = value != 0
    elif datatype in _INT_BITS:
        bits = _INT_BITS[datatype]
        n = max(-(2 ** (bits - 1)), min(2 ** (bits - 1) - 1, round(value)))
        raw = n + 2**bits if n < 0 else n
        if bits == 64:
            metric.long_value = raw
        else:
            metric.int_value = raw
    else:
        bits = _UINT_BITS[datatype]
        n = max(0, min(2**bits - 1, round(value)))
        if bits == 64:
            metric.long_value = n
        else:
            metric.int_value = n


def get_value(metric: Payload.Metric, datatype: DataType) -> object:
    """The value of a received metric (a DCMD's), decoded by ``datatype``; ``None`` when null or absent.

    >>> m = Payload.Metric(int_value=65534); get_value(m, DataType.Int16), get_value(m, DataType.UInt16)
    (-2, 65534)
    """
    if metric.is_null:
        return None
    which = metric.WhichOneof("value")
    if which is None:
        return None
    raw = getattr(metric, which)
    if which in ("int_value", "long_value") and datatype in _INT_BITS:
        bits = _INT_BITS[datatype] if which == "int_value" or datatype == DataType.Int64 else 64
        return raw - 2**bits if raw >= 2 ** (bits - 1) else raw
    if which in ("int_value", "long_value") and datatype == DataType.Boolean:
        return bool(raw)
    return raw


def _property(props: Payload.PropertySet, key: str, datatype: DataType, value: object) -> None:
    props.keys.append(key)
    pv = props.values.add()
    pv.type = int(datatype)
    if datatype == DataType.String:
        pv.string_value = str(value)
    else:
        pv.int_value = int(value)  # type: ignore[call-overload]


def _node_metric(payload: Payload, name: str, datatype: DataType, ts_ms: int, value: float) -> None:
    m = payload.metrics.add()
    m.name = name
    m.timestamp = ts_ms
    m.datatype = int(datatype)
    set_value(m, datatype, value, None)


def nbirth_payload(ts_ms: int, bdseq: int) -> Payload:
    """NBIRTH: seq 0, ``bdSeq`` (Int64, the will's), ``Node Control/Rebirth`` and ``Next Server`` (false,
    no alias — tck-id-operational-behavior-data-commands-rebirth-name-aliases)."""
    p = Payload(timestamp=ts_ms, seq=0)
    _node_metric(p, BDSEQ, DataType.Int64, ts_ms, bdseq)
    _node_metric(p, REBIRTH, DataType.Boolean, ts_ms, 0.0)
    _node_metric(p, NEXT_SERVER, DataType.Boolean, ts_ms, 0.0)
    return p


def ndeath_payload(ts_ms: int, bdseq: int) -> Payload:
    """NDEATH: only the ``bdSeq`` metric, no seq (tck-id-topics-ndeath-payload, -seq)."""
    p = Payload(timestamp=ts_ms)
    _node_metric(p, BDSEQ, DataType.Int64, ts_ms, bdseq)
    return p


def add_birth_metric(  # noqa: PLR0917
    payload: Payload,
    name: str,
    alias: int,
    datatype: DataType,
    unit: str,
    ts_ms: int,
    value: float,
    quality: int,
    text: str | None,
) -> None:
    """A DBIRTH metric: name, alias, datatype, timestamp, current value (or null), unit and quality."""
    m = payload.metrics.add()
    m.name = name
    m.alias = alias
    m.datatype = int(datatype)
    m.timestamp = ts_ms
    set_value(m, datatype, value, text)
    _property(m.properties, "engUnit", DataType.String, unit)
    _property(m.properties, "Quality", DataType.Int32, quality_code(quality))
    if quality != Quality.GOOD:
        _property(m.properties, "nexusQuality", DataType.String, QUALITY_NAMES[quality])


def add_data_metric(  # noqa: PLR0917
    payload: Payload,
    alias: int,
    datatype: DataType,
    ts_ms: int,
    value: float,
    quality: int | None,
    text: str | None,
    historical: bool,
) -> None:
    """A DDATA metric: alias only (no name, no datatype), timestamp, value; ``quality`` when it changed."""
    m = payload.metrics.add()
    m.alias = alias
    m.timestamp = ts_ms
    if historical:
        m.is_historical = True
    set_value(m, datatype, value, text)
    if quality is not None:
        _property(m.properties, "Quality", DataType.Int32, quality_code(quality))
        if quality != Quality.GOOD:
            _property(m.properties, "nexusQuality", DataType.String, QUALITY_NAMES[quality])


class DeviceState:
    """What the edge node knows of one device: current values (for births) and what the host has seen
    (for report by exception). Arrays are indexed by the metric's position in the device plan."""

    __slots__ = (
        "aliases",
        "alive",
        "born",
        "failing_since",
        "failures",
        "keys",
        "order",
        "plan",
        "quality",
        "sent_quality",
        "sent_text",
        "sent_values",
        "text",
        "ts_ms",
        "values",
    )

    def __init__(self, plan: DevicePlan, first_alias: int) -> None:
        self.plan = plan
        n = len(plan.metrics)
        self.aliases = list(range(first_alias, first_alias + n))
        ids = np.array([m.tag_id for m in plan.metrics], dtype=np.int64)
        self.order = np.argsort(ids, kind="stable")
        self.keys = ids[self.order]
        self.values = np.full(n, np.nan)
        self.quality = np.full(n, Quality.BAD, dtype=np.uint8)
        self.ts_ms = np.zeros(n, dtype=np.int64)
        self.text: dict[int, str] = {}
        self.sent_values = np.full(n, np.nan)
        self.sent_quality = np.full(n, 255, dtype=np.uint8)
        self.sent_text: dict[int, str] = {}
        self.born = False
        """A DBIRTH went out in the current session and no DDEATH since."""
        self.alive = True
        self.failures = 0
        self.failing_since = 0
        """Run number of the current streak of failed polls (a death timer fires only for its own run)."""

    @property
    def seen(self) -> bool:
        """Some batch of the device has arrived (its current values are known)."""
        return bool(self.ts_ms.max(initial=0) > 0)

    def positions(self, tag_ids: np.ndarray) -> np.ndarray:
        """Metric position of each tag id, ``-1`` for tags the device's plan does not have."""
        if not len(self.keys):
            return np.full(len(tag_ids), -1, dtype=np.int64)
        at = np.searchsorted(self.keys, tag_ids)
        at = np.minimum(at, len(self.keys) - 1)
        found = self.keys[at] == tag_ids
        return np.where(found, self.order[at], -1)

    def birth(self, ts_ms: int, seq: int) -> Payload:
        """DBIRTH with every metric's name, alias, type and current value; marks them as seen by the host."""
        p = Payload(timestamp=ts_ms, seq=seq)
        for i, m in enumerate(self.plan.metrics):
            has = int(self.ts_ms[i]) > 0
            add_birth_metric(
                p,
                m.name,
                self.aliases[i],
                m.datatype,
                m.unit,
                int(self.ts_ms[i]) if has else ts_ms,
                float(self.values[i]),
                int(self.quality[i]) if has else Quality.BAD,
                self.text.get(i),
            )
        self.sent_values[:] = self.values
        self.sent_quality[:] = self.quality
        self.sent_text = dict(self.text)
        return p
