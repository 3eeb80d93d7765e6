"""One long-lived OPC UA session per device, read by polling or by a subscription.

:class:`OpcUaDeviceClient` implements the :class:`connectors.polling.DeviceClient` protocol:

- **poll mode**: each :meth:`~OpcUaDeviceClient.poll` sends one Read request for every tag's Value
  (split only beyond ``max_nodes_per_read``) and returns one point per tag;
- **subscribe mode**: the tags are monitored items of one subscription (sampling interval, queue
  size, server-side absolute deadband); every data change is buffered (bounded: the oldest are
  dropped and counted) and :meth:`~OpcUaDeviceClient.poll` drains the buffer, one point per change.

Either way a point's timestamp is the value's SourceTimestamp (else ServerTimestamp, else the
time of the poll), UTC nanoseconds — replaced by the receive time (quality ``uncertain``, counted)
when it lies outside the plan's ``timestamps`` window (:mod:`core.timestamps`) — and its quality comes from the StatusCode: Good → ``GOOD``,
Uncertain → ``UNCERTAIN``, Bad → ``DEVICE_EXCEPTION``, except the codes that mean the tag is
misconfigured (``BadNodeIdUnknown``, ``BadNotReadable``, ...) → ``CONFIG_ERROR``. Strings go to
the batch's ``text`` side channel, booleans become 0/1.

Transport failures never escape :meth:`~OpcUaDeviceClient.poll`: the tags get NaN and
``COMM_ERROR``, the session is dropped and re-established later with exponential backoff and
jitter (subscriptions are created again on the new session). A circuit breaker per device stops
all I/O after ``breaker_failures`` consecutive failed attempts and lets one probe through after
``breaker_reset_s``. asyncua's own auto-reconnect is off: this client owns reconnection, so its
state (backoff, breaker, metrics) is the one that is reported.

Writes (:meth:`~OpcUaDeviceClient.write`) go through the same session. Use the client from one
event loop only (the one that runs :meth:`~OpcUaDeviceClient.poll`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent, Subscription
from asyncua.crypto import security_policies, uacrypto
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509
from prometheus_client import Counter

from connectors.client_base import DeviceClientBase, DeviceClientStats, same_link
from connectors.opcua.certs import ensure_application_certificate
from connectors.opcua.config import OpcUaConnection, OpcUaDevicePlan, parse_node_id
from connectors.opcua.pinning import CertificateChanged, PinnedCertificate
from connectors.polling import WriteFailed, WriteRejected, WriteValue
from connectors.resilience import Backoff, CircuitBreaker, DeviceMetrics, poll_result
from core.batch import PointBatch
from core.quality import QUALITY_DTYPE, Quality
from core.timestamps import TimestampWindow, count_replaced

__all__ = [
    "BrowsedVariable",
    "ClientStats",
    "OpcUaDeviceClient",
    "WriteFailed",
    "WriteRejected",
    "browse_server",
    "browse_variables",
    "open_session",
    "status_quality",
]

log = logging.getLogger(__name__)

PROTOCOL = "opcua"
_GUARD_S = 0.5
"""Extra time on top of asyncua's own request timeout before this client gives up on a call."""
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NULL_TS = dt.datetime(1601, 1, 2, tzinfo=dt.UTC)
"""OPC UA's zero DateTime is 1601-01-01: anything before this means "no timestamp"."""

DROPPED_CHANGES = Counter(
    "nexus_opcua_dropped_changes", "Subscription changes dropped because the buffer was full", ["device"]
)

_CONFIG_STATUS = frozenset(
    getattr(ua.StatusCodes, name)
    for name in (
        "BadNodeIdUnknown",
        "BadNodeIdInvalid",
        "BadAttributeIdInvalid",
        "BadNotReadable",
        "BadIndexRangeInvalid",
        "BadIndexRangeNoData",
        "BadDataEncodingInvalid",
        "BadDataEncodingUnsupported",
        "BadNotSupported",
        "BadUserAccessDenied",
        "BadMonitoredItemFilterUnsupported",
        "BadFilterNotAllowed",
    )
)
_SESSION_LOST_STATUS = frozenset(
    getattr(ua.StatusCodes, name)
    for name in (
        "BadSessionIdInvalid",
        "BadSessionClosed",
        "BadSessionNotActivated",
        "BadSecureChannelIdInvalid",
        "BadSecureChannelClosed",
        "BadConnectionClosed",
        "BadServerNotConnected",
        "BadCommunicationError",
        "BadTimeout",
        "BadShutdown",
        "BadServerHalted",
        "BadNoSubscription",
        "BadTooManySessions",
    )
)
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, EOFError, ConnectionError)


def status_quality(code: int) -> Quality:
    """The point quality of an OPC UA StatusCode value.

    >>> status_quality(0), status_quality(ua.StatusCodes.UncertainLastUsableValue)
    (<Quality.GOOD: 0>, <Quality.UNCERTAIN: 64>)
    >>> status_quality(ua.StatusCodes.BadSensorFailure), status_quality(ua.StatusCodes.BadNodeIdUnknown)
    (<Quality.DEVICE_EXCEPTION: 130>, <Quality.CONFIG_ERROR: 132>)
    """
    severity = (code >> 30) & 0b11
    if severity == 0:
        return Quality.GOOD
    if severity == 1:
        return Quality.UNCERTAIN
    if code & 0xFFFF0000 in _CONFIG_STATUS:
        return Quality.CONFIG_ERROR
    return Quality.DEVICE_EXCEPTION


def _status_name(code: int) -> str:
    try:
        return ua.StatusCode(ua.UInt32(code)).name
    except Exception:
        return hex(code)


def datetime_ns(value: dt.datetime | None) -> int | None:
    """Integer UTC nanoseconds of an OPC UA DateTime (naive means UTC); ``None`` for a null one.

    >>> datetime_ns(dt.datetime(2024, 1, 1, 0, 0, 0, 5, tzinfo=dt.UTC))
    1704067200000005000
    >>> datetime_ns(dt.datetime(1601, 1, 1, tzinfo=dt.UTC)) is None
    True
    """
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    if value < _NULL_TS:
        return None
    d = value - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000_000 + d.microseconds * 1000


def _convert(
    dv: ua.DataValue, fallback_ts: int, window: TimestampWindow, source: str = "opcua"
) -> tuple[float, int, int, str | None]:
    """(value, quality, ts_ns, text) of one DataValue.

    A Source/ServerTimestamp outside ``window`` of the receive time ``fallback_ts`` is replaced by
    it and the point is at best ``uncertain`` (:mod:`core.timestamps`): a server whose clock says
    1900 or 9999 would otherwise crash the batch (int64 overflow) or flood the historian.
    """
    status = dv.StatusCode.value if dv.StatusCode is not None else 0
    q = status_quality(status)
    stamp = datetime_ns(dv.SourceTimestamp) or datetime_ns(dv.ServerTimestamp)
    ts, reason = window.check(stamp, fallback_ts) if stamp is not None else (fallback_ts, None)
    if reason is not None:
        count_replaced(source, reason)
        q = max(q, Quality.UNCERTAIN)
    if q >= Quality.BAD:
        return math.nan, q, ts, None
    v = dv.Value.Value if dv.Value is not None else None
    if isinstance(v, bool):
        return (1.0 if v else 0.0), q, ts, None
    if isinstance(v, int | float):
        f = float(v)
        if not math.isfinite(f):
            return f, Quality.OUT_OF_RANGE, ts, None
        return f, q, ts, None
    if isinstance(v, str):
        return math.nan, q, ts, v
    if isinstance(v, ua.LocalizedText):
        return math.nan, q, ts, v.Text or ""
    if isinstance(v, dt.datetime):
        return math.nan, q, ts, v.isoformat()
    if v is None:
        return math.nan, Quality.BAD, ts, None
    return math.nan, Quality.CONFIG_ERROR, ts, None  # arrays, structures: not a scalar tag


# -- write support ---------------------------------------------------------------------------------

_INT_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1),
    ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: (0, 2**64 - 1),
}
_WRITABLE_TYPES = frozenset(
    [ua.VariantType.Boolean, ua.VariantType.Float, ua.VariantType.Double, ua.VariantType.String, *_INT_RANGES]
)
_FLOAT32_MAX = 3.4028234663852886e38


def to_variant(value: object, vtype: ua.VariantType) -> ua.Variant:
    """``value`` as a Variant of ``vtype``, or ``ValueError`` saying why it does not fit.

    >>> to_variant(3.0, ua.VariantType.Int16).Value, to_variant(1, ua.VariantType.Boolean).Value
    (3, True)
    >>> to_variant(70000, ua.VariantType.Int16)
    Traceback (most recent call last):
    ...
    ValueError: value 70000 is out of range for Int16 [-32768, 32767]
    """
    name = vtype.name
    if vtype == ua.VariantType.String:
        if not isinstance(value, str):
            raise ValueError(f"value {value!r} is not a string, the node's type is String")
        return ua.Variant(value, vtype)
    if isinstance(value, str) or not isinstance(value, bool | int | float):
        raise ValueError(f"value {value!r} is not a number, the node's type is {name}")
    if vtype == ua.VariantType.Boolean:
        if value in (0, 1):  # True/False, 0/1, 0.0/1.0
            return ua.Variant(bool(value), vtype)
        raise ValueError(f"value {value!r} is not a boolean (true/false, 0/1)")
    if isinstance(value, bool):
        raise ValueError(f"value {value!r} is a boolean, the node's type is {name}")
    if not math.isfinite(value):
        raise ValueError(f"value {value!r} is not finite")
    if vtype in _INT_RANGES:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"value {value!r} is not an integer, the node's type is {name}")
        lo, hi = _INT_RANGES[vtype]
        iv = int(value)
        if not lo <= iv <= hi:
            raise ValueError(f"value {value!r} is out of range for {name} [{lo}, {hi}]")
        return ua.Variant(iv, vtype)
    if vtype == ua.VariantType.Float and abs(value) > _FLOAT32_MAX:
        raise ValueError(f"value {value!r} is out of range for Float")
    if vtype in (ua.VariantType.Float, ua.VariantType.Double):
        return ua.Variant(float(value), vtype)
    raise ValueError(f"writing the node's type {name} is not supported")


@dataclass(frozen=True, slots=True)
class _NodeMeta:
    variant_type: ua.VariantType | None
    writable: bool
    reason: str = ""


# -- stats -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class ClientStats(DeviceClientStats):
    """Counters of one device client (a snapshot is returned by :attr:`OpcUaDeviceClient.stats`).

    ``comm_errors`` counts polls answered with COMM_ERROR for every tag (no session, transport
    error, breaker open). ``writes`` counts writes attempted, ``write_failures`` those that raised.
    """

    device_exceptions: int = 0
    """Points with a Bad status from the server."""
    config_errors: int = 0
    """Points whose node is misconfigured (unknown node id, not readable, ...)."""
    changes: int = 0
    """Subscribe mode: data changes received."""
    dropped_changes: int = 0
    """Subscribe mode: changes dropped because the buffer was full."""
    subscriptions_created: int = 0


@dataclass(frozen=True, slots=True)
class BrowsedVariable:
    """A variable found by :func:`browse_variables`: enough to configure it as a tag."""

    node_id: str
    browse_path: str
    """Browse names from the root, joined by ``/`` (e.g. ``Line1/Temperature``)."""
    data_type: str
    """The built-in type name (``Double``, ``Int32``, ``Boolean``, ``String``, ...) or the DataType node id."""
    writable: bool
    """The session's user may write the Value (UserAccessLevel has CurrentWrite)."""


# -- session set-up --------------------------------------------------------------------------------

_MODES = {"Sign": ua.MessageSecurityMode.Sign, "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt}


class SessionError(Exception):
    """A session could not be established; the message is safe to log (it never holds a password)."""


def _explain(exc: BaseException, c: OpcUaConnection) -> str:
    if isinstance(exc, ua.UaStatusCodeError):
        code = exc.code
        name = _status_name(code)
        if code in (
            ua.StatusCodes.BadUserAccessDenied,
            ua.StatusCodes.BadIdentityTokenInvalid,
            ua.StatusCodes.BadIdentityTokenRejected,
        ):
            who = f"user {c.username!r}" if c.username else "anonymous user"
            return f"authentication refused for {who} ({name})"
        if name.startswith("BadCertificate") or name.startswith("BadSecurity"):
            return (
                f"security handshake refused ({name}): check trusted_server_certs and the server's trust list"
            )
        return f"server answered {name}"
    if isinstance(exc, ua.UaError) and "No matching endpoints" in str(exc):
        return f"server offers no endpoint with security_mode={c.security_mode} security_policy={c.security_policy}"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return f"timed out after {c.timeout_s:g} s"
    return f"{type(exc).__name__}: {exc}"


async def open_session(
    c: OpcUaConnection, *, name: str = "NEXUS Edge", trust_store: TrustStore | None = None
) -> Client:
    """A connected asyncua :class:`~asyncua.Client` for ``c`` (security, certificate, user) or :class:`SessionError`.

    asyncua's auto-reconnect is off: the caller owns reconnection. The application certificate is
    generated into ``certificate_dir`` on first use (in a worker thread: RSA key generation is slow).
    """
    client = Client(c.endpoint, timeout=c.timeout_s, watchdog_intervall=c.watchdog_interval_s)
    client.application_uri = c.application_uri
    client.name = client.description = name
    client.product_uri = "urn:nexus-edge"
    if c.username is not None:
        client.set_user(c.username)
    if c.password is not None:
        client.set_password(c.password.get_secret_value())
    try:
        if c.security_mode != "None":
            cert, key = await asyncio.to_thread(
                ensure_application_certificate, c.certificate_dir, c.application_uri
            )
            policy = getattr(security_policies, f"SecurityPolicy{c.security_policy}")
            await asyncio.wait_for(
                client.set_security(policy, str(cert), str(key), mode=_MODES[c.security_mode]),
                c.timeout_s * 2 + _GUARD_S,
            )
            if c.trusted_server_certs:
                if trust_store is None:
                    trust_store = await load_trust_store(c.trusted_server_certs)
                client.certificate_validator = CertificateValidator(
                    CertificateValidatorOptions.TIME_RANGE | CertificateValidatorOptions.TRUSTED, trust_store
                )
            elif c.trust_on_first_use:
                client.certificate_validator = PinnedCertificate(c.certificate_dir, c.endpoint)
        await asyncio.wait_for(client.connect(auto_reconnect=False), c.timeout_s * 3 + _GUARD_S)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            client.disconnect_socket()
        if isinstance(exc, SessionError):
            raise
        if isinstance(exc, CertificateChanged):
            raise SessionError(str(exc)) from None
        if isinstance(exc, Exception):
            raise SessionError(_explain(exc, c)) from exc
        raise
    return client


class _TrustList(TrustStore):
    """asyncua's TrustStore, also accepting single certificate files (asyncua scans folders only)."""

    async def _load_trust_location(self, location: Path) -> list[x509.Certificate]:
        if location.is_file():
            return [await uacrypto.load_certificate(location)]
        if not location.is_dir():
            raise FileNotFoundError(f"trusted server certificate {str(location)!r} does not exist")
        return await super()._load_trust_location(location)


async def load_trust_store(paths: Sequence[str]) -> TrustStore:
    """A loaded TrustStore of certificate files or folders (PEM or DER); ``SessionError`` if unusable."""
    store = _TrustList([Path(p).expanduser() for p in paths], [])
    try:
        await store.load_trust()
    except Exception as exc:
        raise SessionError(f"cannot load trusted_server_certs: {exc}") from exc
    return store


async def close_session(client: Client, timeout_s: float) -> None:
    """Disconnect, best effort and bounded in time (the server may be gone)."""
    try:
        await asyncio.wait_for(client.disconnect(), timeout_s)
    except (Exception, asyncio.CancelledError):
        with contextlib.suppress(Exception):
            client.disconnect_socket()


# -- browse ----------------------------------------------------------------------------------------

_HAS_PROPERTY = ua.NodeId(ua.Int32(ua.ObjectIds.HasProperty))
_SERVER_NODE = ua.NodeId(ua.Int32(ua.ObjectIds.Server))


async def _browse_children(client: Client, nodes: list[ua.NodeId]) -> list[list[ua.ReferenceDescription]]:
    out: list[list[ua.ReferenceDescription]] = []
    for start in range(0, len(nodes), 500):
        chunk = nodes[start : start + 500]
        params = ua.BrowseParameters()
        params.View = ua.ViewDescription()
        params.RequestedMaxReferencesPerNode = 1000
        for nid in chunk:
            desc = ua.BrowseDescription()
            desc.NodeId = nid
            desc.BrowseDirection = ua.BrowseDirection.Forward
            desc.ReferenceTypeId = ua.NodeId(ua.Int32(ua.ObjectIds.HierarchicalReferences))
            desc.IncludeSubtypes = True
            desc.NodeClassMask = int(ua.NodeClass.Object) | int(ua.NodeClass.Variable)
            desc.ResultMask = int(ua.BrowseResultMask.All)
            params.NodesToBrowse.append(desc)
        results = await client.uaclient.browse(params)
        for res in results:
            refs = list(res.References or [])
            cp = res.ContinuationPoint
            while cp:
                nxt = ua.BrowseNextParameters()
                nxt.ContinuationPoints = [cp]
                more = (await client.uaclient.browse_next(nxt))[0]
                refs.extend(more.References or [])
                cp = more.ContinuationPoint
            out.append(refs)
    return out


def _data_type_name(nid: ua.NodeId | None) -> str:
    if nid is not None and nid.NamespaceIndex == 0 and isinstance(nid.Identifier, int):
        with contextlib.suppress(ValueError):
            vt = ua.VariantType(nid.Identifier)
            if vt != ua.VariantType.Null:
                return vt.name
    return nid.to_string() if nid is not None else "Unknown"


async def browse_variables(
    client: Client,
    root: str = "i=85",
    *,
    max_depth: int = 8,
    max_variables: int = 10_000,
    include_server_node: bool = False,
    include_properties: bool = False,
) -> list[BrowsedVariable]:
    """The variables under ``root`` (default: the Objects folder), breadth first, one Browse request per level.

    Follows forward hierarchical references to Objects and Variables. The standard ``Server``
    object (diagnostics) and properties (``HasProperty``) are skipped unless asked for.
    """
    if max_depth < 1:
        raise ValueError(f"`max_depth` must be >= 1, got {max_depth}")
    start = parse_node_id(root)
    seen = {start}
    level: list[tuple[ua.NodeId, str]] = [(start, "")]
    found: list[tuple[ua.NodeId, str]] = []
    for _depth in range(max_depth):
        if not level or len(found) >= max_variables:
            break
        children = await _browse_children(client, [nid for nid, _ in level])
        nxt: list[tuple[ua.NodeId, str]] = []
        for (_parent, path), refs in zip(level, children, strict=True):
            for ref in refs:
                if not include_properties and ref.ReferenceTypeId == _HAS_PROPERTY:
                    continue
                child = ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType)
                if child in seen or (not include_server_node and child == _SERVER_NODE):
                    continue
                seen.add(child)
                name = ref.BrowseName.Name if ref.BrowseName is not None else str(child.Identifier)
                child_path = f"{path}/{name}" if path else name
                if ref.NodeClass == ua.NodeClass.Variable and len(found) < max_variables:
                    found.append((child, child_path))
                nxt.append((child, child_path))
        level = nxt
    out: list[BrowsedVariable] = []
    for start_i in range(0, len(found), 500):
        chunk = found[start_i : start_i + 500]
        ids = [nid for nid, _ in chunk]
        types = await client.uaclient.read_attributes(ids, ua.AttributeIds.DataType)
        access = await client.uaclient.read_attributes(ids, ua.AttributeIds.UserAccessLevel)
        for (nid, path), t, a in zip(chunk, types, access, strict=True):
            type_id = t.Value.Value if t.Value is not None else None
            level_bits = a.Value.Value if a.Value is not None and isinstance(a.Value.Value, int) else 0
            out.append(
                BrowsedVariable(
                    node_id=nid.to_string(),
                    browse_path=path,
                    data_type=_data_type_name(type_id if isinstance(type_id, ua.NodeId) else None),
                    writable=bool(level_bits & ua.AccessLevel.CurrentWrite.mask),
                )
            )
    return out


async def browse_server(
    connection: OpcUaConnection, root: str = "i=85", *, max_depth: int = 8, max_variables: int = 10_000
) -> list[BrowsedVariable]:
    """Connect with ``connection``, list the variables under ``root`` (see :func:`browse_variables`), disconnect.

    For tag discovery from the CLI or the API: ``asyncio.run(browse_server(conn))``.
    """
    client = await open_session(connection, name="NEXUS Edge browse")
    try:
        return await asyncio.wait_for(
            browse_variables(client, root, max_depth=max_depth, max_variables=max_variables),
            connection.timeout_s * (max_depth + 2),
        )
    finally:
        await close_session(client, connection.timeout_s)


# -- the device client -----------------------------------------------------------------------------


class OpcUaDeviceClient(DeviceClientBase[ClientStats]):
    """Reads one OPC UA server for a :class:`~connectors.opcua.config.OpcUaDevicePlan`; see the module docstring.

    ``clock`` (monotonic seconds) and ``rng`` are injectable for tests; ``metrics=False`` keeps
    this client out of the process's Prometheus registry.
    """

    protocol = PROTOCOL
    _log = log
    plan: OpcUaDevicePlan

    def __init__(
        self,
        plan: OpcUaDevicePlan,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        metrics: bool = True,
    ) -> None:
        self.plan = plan
        self._ts_source = f"opcua:{plan.device_id}"
        c = plan.connection
        self._clock = clock
        self._stats = ClientStats()
        self._tag_ids = np.array([t for t, _ in plan.tags], dtype=np.int64)
        self._index = {t: i for i, (t, _) in enumerate(plan.tags)}
        self._node_ids = [parse_node_id(a.node_id) for _, a in plan.tags]
        self._read_chunks = self._build_reads(c.max_nodes_per_read)
        self._backoff = Backoff(c.reconnect_min_s, c.reconnect_max_s, jitter=0.5, rng=rng)
        self._breaker = CircuitBreaker(c.breaker_failures, c.breaker_reset_s, clock=clock)
        self._client: Client | None = None
        self._subscription: Subscription | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._session_lost = False
        self._retry_at = -math.inf
        self._healthy = True
        self._connect_lock: asyncio.Lock | None = None
        self._trust_store: TrustStore | None = None
        self._meta: dict[int, _NodeMeta] = {}
        self._changes: deque[tuple[int, float, int, int, str | None]] = deque()
        self._m = DeviceMetrics(PROTOCOL, plan.device_id) if metrics else None
        self._m_dropped = DROPPED_CHANGES.labels(plan.device_id) if metrics else None

    # -- public ------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.uaclient.state is UaClientState.CONNECTED

    @property
    def session(self) -> Client | None:
        """The live asyncua client, if any (for diagnostics; do not disconnect it)."""
        return self._client

    async def poll(self) -> PointBatch:
        """Read every tag once (poll mode) or drain the buffered changes (subscribe mode). Never raises."""
        started = self._clock()
        now_ns = time.time_ns()
        outcome = "ok"  # "ok" | "io_failed" (counts for the breaker) | "no_io" (backoff, breaker open)
        breaker_open = False
        try:
            if not self._breaker.allow():
                self._stats.breaker_open_polls += 1
                batch, outcome, breaker_open = self._drain_then_error(now_ns), "no_io", True
            else:
                state = await self._ensure_connected()
                if state != "connected":
                    batch = self._drain_then_error(now_ns)
                    outcome = "no_io" if state == "backoff" else "io_failed"
                elif self.plan.connection.mode == "poll":
                    batch, link_failed = await self._read_all(now_ns)
                    outcome = "io_failed" if link_failed else "ok"
                else:
                    batch, link_failed = await self._drain_subscription(now_ns)
                    outcome = "io_failed" if link_failed else "ok"
        except Exception:  # a bug or an unexpected library error must not kill the source
            log.exception("opcua poll failed unexpectedly device=%s", self.device_id)
            await self._drop_session()
            batch, outcome = self._drain_then_error(now_ns), "io_failed"
        if outcome == "ok":
            self._breaker.record_success()
        elif outcome == "io_failed":
            self._breaker.record_failure()
        self._account(batch, outcome != "ok", self._clock() - started, breaker_open)
        return batch

    async def write(self, tag_id: int, value: WriteValue) -> None:
        """Write ``value`` to the tag's node, as the node's data type (read once per session).

        Raises :class:`~connectors.polling.WriteRejected` (nothing written) for an unknown tag, a
        tag not in the plan's ``writable``, a node the server marks read-only for this user, or a
        value that does not fit the node's type; raises :class:`~connectors.polling.WriteFailed`
        when no session can be had (backoff, open breaker, transport error) or the server answers
        a Bad status (``code`` is the StatusCode).
        """
        dev = self.device_id
        with self._counted_write():
            i = self._index.get(tag_id)
            if i is None:
                raise WriteRejected(dev, tag_id, "the device has no such tag")
            if tag_id not in self.plan.writable:
                raise WriteRejected(dev, tag_id, "the tag is not writable")
            if not isinstance(value, bool | int | float | str):
                raise WriteRejected(
                    dev, tag_id, f"value {value!r} is neither a number, a boolean nor a string"
                )
            self._stats.writes += 1
            try:
                await self._write(i, tag_id, value)
            except (WriteRejected, WriteFailed):
                self._stats.write_failures += 1
                raise
        log.info("opcua write device=%s tag=%d node=%s", dev, tag_id, self.plan.tags[i][1].node_id)

    async def _write(self, i: int, tag_id: int, value: WriteValue) -> None:
        dev = self.device_id
        if not self._breaker.allow() or await self._ensure_connected() != "connected":
            raise WriteFailed(dev, tag_id, "the device is unreachable")
        client = self._client
        assert client is not None
        meta = await self._node_meta(client, i, tag_id)
        if meta.variant_type is None or not meta.writable:
            raise WriteRejected(dev, tag_id, meta.reason)
        try:
            variant = to_variant(value, meta.variant_type)
        except ValueError as exc:
            raise WriteRejected(dev, tag_id, str(exc)) from None
        params = ua.WriteParameters()
        wv = ua.WriteValue()
        wv.NodeId = self._node_ids[i]
        wv.AttributeId = ua.AttributeIds.Value
        wv.Value = ua.DataValue(variant)
        params.NodesToWrite = [wv]
        try:
            results = await asyncio.wait_for(client.uaclient.write(params), self._guard())
        except _TRANSPORT_ERRORS as exc:
            await self._lost(f"write failed: {exc!r}")
            raise WriteFailed(dev, tag_id, f"transport error: {exc!r}") from exc
        except ua.UaStatusCodeError as exc:
            raise WriteFailed(dev, tag_id, f"server answered {_status_name(exc.code)}", exc.code) from exc
        status = results[0]
        if not status.is_good():
            raise WriteFailed(dev, tag_id, f"server answered {status.name}", status.value)

    async def browse(
        self, root: str = "i=85", *, max_depth: int = 8, max_variables: int = 10_000
    ) -> list[BrowsedVariable]:
        """The server's variables under ``root`` through this device's session (see :func:`browse_variables`)."""
        if await self._ensure_connected() != "connected":
            raise ConnectionError(f"device {self.device_id!r} is unreachable")
        assert self._client is not None
        return await browse_variables(self._client, root, max_depth=max_depth, max_variables=max_variables)

    async def reconfigure(self, plan: OpcUaDevicePlan) -> None:
        """Take over a changed plan (a hot config change) between polls, on the open session.

        Poll mode: the next Read asks for the new nodes. Subscribe mode: the subscription is
        replaced on the same session (changes already buffered for tags that stay are kept). A
        changed endpoint, security or mode closes the session; the next poll opens a new one.
        """
        if plan.device_id != self.plan.device_id:
            raise ValueError(f"plan of device {plan.device_id!r} given to client of {self.device_id!r}")
        old = self.plan
        old_ids = self._tag_ids
        self.plan = plan
        c = plan.connection
        self._tag_ids = np.array([t for t, _ in plan.tags], dtype=np.int64)
        self._index = {t: i for i, (t, _) in enumerate(plan.tags)}
        self._node_ids = [parse_node_id(a.node_id) for _, a in plan.tags]
        self._read_chunks = self._build_reads(c.max_nodes_per_read)
        self._meta.clear()
        moved = deque(
            (self._index[tag], v, q, t, s_)
            for i, v, q, t, s_ in self._changes
            if 0 <= i < len(old_ids) and (tag := int(old_ids[i])) in self._index
        )
        self._changes = moved
        if not same_link(old.connection, c):
            await self._drop_session(schedule_retry=False)
            self._retry_at = -math.inf
        elif c.mode == "subscribe" and self._client is not None and old.tags != plan.tags:
            await self._resubscribe(self._client)
        log.info("opcua plan changed device=%s tags=%d", self.device_id, len(self._tag_ids))

    async def _resubscribe(self, client: Client) -> None:
        consumer, self._consumer = self._consumer, None
        sub, self._subscription = self._subscription, None
        if consumer is not None:
            consumer.cancel()
            with contextlib.suppress(BaseException):
                await consumer
        try:
            if sub is not None:
                await asyncio.wait_for(sub.delete(), self._guard())
            await self._subscribe(client)
        except Exception as exc:
            self._report_unhealthy(f"cannot replace the subscription: {_explain(exc, self.plan.connection)}")
            await self._drop_session()

    async def close(self) -> None:
        """Close the session (a later poll would open a new one)."""
        await self._drop_session(schedule_retry=False)

    def error_batch(self, quality: Quality, ts_ns: int) -> PointBatch:
        """Every tag with NaN and ``quality`` (a poll that could not complete)."""
        return self._nan_batch(ts_ns, quality)

    # -- connection ----------------------------------------------------------------------------------

    def _guard(self) -> float:
        return self.plan.connection.timeout_s + _GUARD_S

    async def _ensure_connected(self) -> str:
        """``"connected"``, ``"backoff"`` (no attempt: a reconnect is not due) or ``"failed"``."""
        if self._client is not None:
            if self._client.uaclient.state is UaClientState.CONNECTED and not self._session_lost:
                return "connected"
            await self._lost("session lost (keepalive or subscription status)")
        if self._breaker.state != "half_open" and self._clock() < self._retry_at:
            self._stats.backoff_polls += 1
            return "backoff"
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._client is not None:  # another task (a write) connected meanwhile
                return "connected"
            return "connected" if await self._connect() else "failed"

    async def _connect(self) -> bool:
        c = self.plan.connection
        try:
            if c.trusted_server_certs and self._trust_store is None:
                self._trust_store = await load_trust_store(c.trusted_server_certs)
            client = await open_session(c, name=f"NEXUS Edge {self.device_id}", trust_store=self._trust_store)
        except SessionError as exc:
            self._stats.connect_failures += 1
            self._report_unhealthy(f"cannot open a session to {c.endpoint}: {exc}")
            self._schedule_retry()
            return False
        self._client = client
        self._session_lost = False
        try:
            if c.mode == "subscribe":
                await self._subscribe(client)
        except Exception as exc:
            self._stats.connect_failures += 1
            self._report_unhealthy(f"cannot create the subscription: {_explain(exc, c)}")
            await self._drop_session()
            return False
        if self._count_connect() and self._m is not None:
            self._m.reconnect()
        self._backoff.reset()
        self._retry_at = -math.inf
        self._meta.clear()  # the server may have changed while we were away
        if not self._healthy:
            self._healthy = True
            log.info("opcua device reachable again device=%s endpoint=%s", self.device_id, c.endpoint)
        else:
            log.debug("opcua session open device=%s endpoint=%s", self.device_id, c.endpoint)
        return True

    def _schedule_retry(self) -> None:
        self._retry_at = self._clock() + self._backoff.next_delay()

    async def _lost(self, reason: str) -> None:
        self._report_unhealthy(reason)
        await self._drop_session()

    async def _drop_session(self, *, schedule_retry: bool = True) -> None:
        client, self._client = self._client, None
        consumer, self._consumer = self._consumer, None
        self._subscription = None
        self._session_lost = False
        if consumer is not None:
            consumer.cancel()
            with contextlib.suppress(BaseException):
                await consumer
        if client is not None:
            await close_session(client, min(1.0, self.plan.connection.timeout_s))
            if schedule_retry:
                self._schedule_retry()

    # -- poll mode -----------------------------------------------------------------------------------

    def _build_reads(self, per_request: int) -> list[tuple[int, ua.ReadParameters]]:
        chunks = []
        for start in range(0, len(self._node_ids), per_request):
            params = ua.ReadParameters()
            params.MaxAge = 0
            params.TimestampsToReturn = ua.TimestampsToReturn.Both
            for nid in self._node_ids[start : start + per_request]:
                rv = ua.ReadValueId()
                rv.NodeId = nid
                rv.AttributeId = ua.AttributeIds.Value
                params.NodesToRead.append(rv)
            chunks.append((start, params))
        return chunks

    async def _read_all(self, now_ns: int) -> tuple[PointBatch, bool]:
        client = self._client
        assert client is not None
        n = len(self._tag_ids)
        values = np.full(n, np.nan)
        quality = np.full(n, Quality.COMM_ERROR, dtype=QUALITY_DTYPE)
        ts = np.full(n, now_ns, dtype=np.int64)
        text: dict[int, str] = {}
        for start, params in self._read_chunks:
            try:
                results = await asyncio.wait_for(client.uaclient.read(params), self._guard())
            except _TRANSPORT_ERRORS as exc:
                await self._lost(f"read failed: {exc!r}")
                return self._with_text(ts, values, quality, text), True
            except ua.UaStatusCodeError as exc:
                if exc.code in _SESSION_LOST_STATUS:
                    await self._lost(f"read failed: {_status_name(exc.code)}")
                    return self._with_text(ts, values, quality, text), True
                stop = start + len(params.NodesToRead)
                quality[start:stop] = status_quality(exc.code)
                log.warning(
                    "opcua read refused device=%s nodes=%d status=%s",
                    self.device_id,
                    stop - start,
                    _status_name(exc.code),
                )
                continue
            for k, dv in enumerate(results):
                i = start + k
                v, q, t, s = _convert(dv, now_ns, self.plan.timestamps, self._ts_source)
                values[i], quality[i], ts[i] = v, q, t
                if s is not None:
                    text[i] = s
        return self._with_text(ts, values, quality, text), False

    def _with_text(
        self, ts: np.ndarray, values: np.ndarray, quality: np.ndarray, text: dict[int, str]
    ) -> PointBatch:
        return PointBatch(
            device_id=self.device_id,
            ts_ns=ts,
            tag_ids=self._tag_ids,
            values=values,
            quality=quality,
            text=text or None,
        )

    # -- subscribe mode ------------------------------------------------------------------------------

    async def _subscribe(self, client: Client) -> None:
        c = self.plan.connection
        sub = await asyncio.wait_for(
            client.create_subscription(c.publishing_interval_ms, None, queue_maxsize=c.max_buffered_changes),
            self._guard(),
        )
        requests = []
        for i, (nid, (_tag, a)) in enumerate(zip(self._node_ids, self.plan.tags, strict=True)):
            rv = ua.ReadValueId()
            rv.NodeId = nid
            rv.AttributeId = ua.AttributeIds.Value
            mp = ua.MonitoringParameters()
            mp.ClientHandle = i + 1
            mp.SamplingInterval = a.sampling_interval_ms if a.sampling_interval_ms is not None else -1.0
            mp.QueueSize = a.queue_size
            mp.DiscardOldest = True
            if a.deadband_abs is not None:
                mp.Filter = ua.DataChangeFilter(
                    Trigger=ua.DataChangeTrigger.StatusValue,
                    DeadbandType=int(ua.DeadbandType.Absolute),
                    DeadbandValue=a.deadband_abs,
                )
            mir = ua.MonitoredItemCreateRequest()
            mir.ItemToMonitor = rv
            mir.MonitoringMode = ua.MonitoringMode.Reporting
            mir.RequestedParameters = mp
            requests.append(mir)
        self._subscription = sub
        self._consumer = asyncio.create_task(self._consume(sub), name=f"opcua-changes:{self.device_id}")
        results = await asyncio.wait_for(sub.create_monitored_items(requests), self._guard() * 2)
        now_ns = time.time_ns()
        for i, r in enumerate(results):
            if isinstance(r, ua.StatusCode):  # this node could not be monitored
                q = status_quality(r.value)
                self._push(i, math.nan, Quality.CONFIG_ERROR if q < Quality.BAD else q, now_ns, None)
                log.warning(
                    "opcua monitored item refused device=%s node=%s status=%s",
                    self.device_id,
                    self.plan.tags[i][1].node_id,
                    r.name,
                )
        self._stats.subscriptions_created += 1

    async def _consume(self, sub: Subscription) -> None:
        async for ev in sub:
            if isinstance(ev, DataChangeEvent):
                item = ev.data.monitored_item
                i = item.ClientHandle - 1
                if 0 <= i < len(self._tag_ids) and item.Value is not None:
                    v, q, t, s = _convert(item.Value, time.time_ns(), self.plan.timestamps, self._ts_source)
                    self._push(i, v, q, t, s)
            elif isinstance(ev, StatusChangeEvent):
                status = ev.notification.Status
                if status is not None and status.is_bad():
                    log.warning("opcua subscription status device=%s status=%s", self.device_id, status.name)
                    self._session_lost = True

    def _push(self, i: int, v: float, q: int, t: int, s: str | None) -> None:
        buf = self._changes
        if len(buf) >= self.plan.connection.max_buffered_changes:
            buf.popleft()
            self._stats.dropped_changes += 1
            if self._m_dropped is not None:
                self._m_dropped.inc()
        buf.append((i, v, q, t, s))
        self._stats.changes += 1

    def _drain(self) -> tuple[list[int], list[float], list[int], list[int], dict[int, str]]:
        buf = self._changes
        idx: list[int] = []
        vals: list[float] = []
        qs: list[int] = []
        tss: list[int] = []
        text: dict[int, str] = {}
        while buf:
            i, v, q, t, s = buf.popleft()
            if s is not None:
                text[len(idx)] = s
            idx.append(i)
            vals.append(v)
            qs.append(q)
            tss.append(t)
        return idx, vals, qs, tss, text

    def _changes_batch(
        self, idx: list[int], vals: list[float], qs: list[int], tss: list[int], text: dict[int, str]
    ) -> PointBatch:
        return PointBatch(
            device_id=self.device_id,
            ts_ns=np.array(tss, dtype=np.int64),
            tag_ids=self._tag_ids[np.array(idx, dtype=np.intp)] if idx else np.empty(0, np.int64),
            values=np.array(vals, dtype=np.float64),
            quality=np.array(qs, dtype=QUALITY_DTYPE),
            text=text or None,
        )

    async def _drain_subscription(self, now_ns: int) -> tuple[PointBatch, bool]:
        if (
            self._client is None
            or self._client.uaclient.state is not UaClientState.CONNECTED
            or self._session_lost
        ):
            await self._lost("session lost (keepalive or subscription status)")
            return self._drain_then_error(now_ns), True
        return self._changes_batch(*self._drain()), False

    def _drain_then_error(self, now_ns: int) -> PointBatch:
        """Buffered changes (subscribe mode) followed by a COMM_ERROR point for every tag."""
        err = self.error_batch(Quality.COMM_ERROR, now_ns)
        if not self._changes:
            return err
        idx, vals, qs, tss, text = self._drain()
        n = len(idx)
        return PointBatch(
            device_id=self.device_id,
            ts_ns=np.concatenate([np.array(tss, dtype=np.int64), err.ts_ns]),
            tag_ids=np.concatenate([self._tag_ids[np.array(idx, dtype=np.intp)], err.tag_ids]),
            values=np.concatenate([np.array(vals, dtype=np.float64), err.values]),
            quality=np.concatenate([np.array(qs, dtype=QUALITY_DTYPE), err.quality]),
            text=text or None if n else None,
        )

    # -- write support -------------------------------------------------------------------------------

    async def _node_meta(self, client: Client, i: int, tag_id: int) -> _NodeMeta:
        meta = self._meta.get(tag_id)
        if meta is not None:
            return meta
        nid = self._node_ids[i]
        params = ua.ReadParameters()
        for attr in (ua.AttributeIds.DataType, ua.AttributeIds.UserAccessLevel, ua.AttributeIds.Value):
            rv = ua.ReadValueId()
            rv.NodeId = nid
            rv.AttributeId = attr
            params.NodesToRead.append(rv)
        try:
            dtype_dv, access_dv, value_dv = await asyncio.wait_for(
                client.uaclient.read(params), self._guard()
            )
        except _TRANSPORT_ERRORS as exc:
            await self._lost(f"read failed: {exc!r}")
            raise WriteFailed(self.device_id, tag_id, f"transport error: {exc!r}") from exc
        except ua.UaStatusCodeError as exc:
            raise WriteFailed(
                self.device_id, tag_id, f"server answered {_status_name(exc.code)}", exc.code
            ) from exc
        status = dtype_dv.StatusCode.value if dtype_dv.StatusCode is not None else 0
        if status_quality(status) >= Quality.BAD:
            meta = _NodeMeta(None, False, f"node {nid.to_string()} is not usable ({_status_name(status)})")
            self._meta[tag_id] = meta
            return meta
        vtype: ua.VariantType | None = None
        type_id = dtype_dv.Value.Value if dtype_dv.Value is not None else None
        type_nid = type_id if isinstance(type_id, ua.NodeId) else None
        if type_nid is not None and type_nid.NamespaceIndex == 0 and isinstance(type_nid.Identifier, int):
            with contextlib.suppress(ValueError):
                vtype = ua.VariantType(type_nid.Identifier)
        if vtype not in _WRITABLE_TYPES and value_dv.Value is not None:
            vtype = value_dv.Value.VariantType  # a subtype (an enumeration, ...): the value's own type
        access = access_dv.Value.Value if access_dv.Value is not None else 0
        if vtype not in _WRITABLE_TYPES:
            meta = _NodeMeta(None, False, f"writing data type {_data_type_name(type_nid)} is not supported")
        elif not (isinstance(access, int) and access & ua.AccessLevel.CurrentWrite.mask):
            meta = _NodeMeta(vtype, False, f"node {nid.to_string()} is read-only for this user")
        else:
            meta = _NodeMeta(vtype, True)
        self._meta[tag_id] = meta
        return meta

    # -- accounting ----------------------------------------------------------------------------------

    def _account(self, batch: PointBatch, link_failed: bool, latency: float, breaker_open: bool) -> None:
        q = batch.quality
        failed = bool(np.any(q >= Quality.BAD))
        self._count_poll(latency, failed)
        s = self._stats
        if link_failed:
            s.comm_errors += 1
        else:
            s.device_exceptions += int(np.count_nonzero(q == Quality.DEVICE_EXCEPTION))
            s.config_errors += int(np.count_nonzero(q == Quality.CONFIG_ERROR))
        if self._m is not None:
            result = poll_result(bad_points=failed, comm_error=link_failed, breaker_open=breaker_open)
            self._m.poll(result, latency, self._breaker.state)
            if link_failed:
                self._m.request_errors("comm")
            else:
                self._m.request_errors("device", int(np.count_nonzero(q == Quality.DEVICE_EXCEPTION)))
