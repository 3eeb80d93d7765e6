"""Configuration of OPC UA devices: the connection (security, session, mode), tag addresses, the plan.

Models are frozen pydantic models that refuse unknown fields; a bad value fails at construction
with the field's name:

>>> OpcUaConnection(endpoint="opc.tcp://plc:4840").security_mode
'None'
>>> try:
...     OpcUaConnection(endpoint="opc.tcp://plc:4840", security_mode="SignAndEncrypt")
... except ValueError as e:
...     print(e.errors()[0]["msg"])
Value error, security_mode 'SignAndEncrypt' needs a security_policy (Basic256Sha256, Aes128Sha256RsaOaep or Aes256Sha256RsaPss)
>>> OpcUaTagAddress(node_id="ns=2;s=Line1.Temp").node_id
'ns=2;s=Line1.Temp'
>>> try:
...     OpcUaTagAddress(node_id="Line1.Temp")
... except ValueError as e:
...     print(e.errors()[0]["msg"])
Value error, node_id 'Line1.Temp' is not an OPC UA node id (e.g. 'ns=2;s=Line1.Temp' or 'i=2258')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from asyncua import ua
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from connectors.client_base import check_plan
from core.timestamps import DEFAULT_WINDOW, TimestampWindow

SecurityMode = Literal["None", "Sign", "SignAndEncrypt"]
SecurityPolicyName = Literal["Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"]
Mode = Literal["poll", "subscribe"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def parse_node_id(node_id: str) -> ua.NodeId:
    """The :class:`asyncua.ua.NodeId` of a node id string, or ``ValueError`` naming the bad value.

    >>> parse_node_id("ns=2;i=7").Identifier
    7
    """
    try:
        return ua.NodeId.from_string(node_id)
    except Exception:
        raise ValueError(
            f"node_id {node_id!r} is not an OPC UA node id (e.g. 'ns=2;s=Line1.Temp' or 'i=2258')"
        ) from None


class OpcUaTagAddress(_Frozen):
    """One OPC UA variable read as a tag.

    ``sampling_interval_ms``, ``queue_size`` and ``deadband_abs`` apply in subscribe mode: the
    server samples the variable at that interval (``None``: as fast as the publishing interval),
    queues up to ``queue_size`` changes between publishes, and reports a numeric change only when
    it exceeds ``deadband_abs`` (a server-side ``DataChangeFilter`` with an absolute deadband).
    """

    node_id: str = Field(min_length=1)
    sampling_interval_ms: float | None = Field(default=None, ge=0)
    queue_size: int = Field(default=1, ge=1, le=10_000)
    deadband_abs: float | None = Field(default=None, gt=0)

    @field_validator("node_id")
    @classmethod
    def _valid_node_id(cls, v: str) -> str:
        parse_node_id(v)
        return v


class OpcUaConnection(_Frozen):
    """How to reach one OPC UA server, authenticate, and whether to poll or subscribe.

    Security: with ``security_mode`` ``Sign`` or ``SignAndEncrypt`` the client uses an application
    instance certificate and key kept in ``certificate_dir`` (generated on first use, with
    ``application_uri`` as the SubjectAltName URI, reused afterwards). ``trusted_server_certs``
    lists server certificates (files, PEM or DER, or folders of them) to trust; a server whose
    certificate is not trusted is refused. A secure mode needs that list, or
    ``trust_on_first_use: true``: the first certificate seen is pinned in
    ``certificate_dir/pinned`` and a changed one is refused (:mod:`connectors.opcua.pinning`).
    """

    endpoint: str = Field(min_length=1)
    security_mode: SecurityMode = "None"
    security_policy: SecurityPolicyName | None = None
    username: str | None = Field(default=None, min_length=1)
    password: SecretStr | None = None
    certificate_dir: str = ".nexus/opcua/pki"
    application_uri: str = Field(default="urn:nexus-edge:client", min_length=1)
    trusted_server_certs: tuple[str, ...] = ()
    trust_on_first_use: bool = False
    timeout_s: float = Field(default=4.0, gt=0, le=120)
    """Timeout of one request (and of the connect sequence)."""
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    breaker_failures: int = Field(default=3, ge=1)
    """Consecutive failed polls that open the circuit breaker."""
    breaker_reset_s: float = Field(default=10.0, gt=0)
    """How long the breaker stays open before one probe is let through."""
    watchdog_interval_s: float = Field(default=1.0, gt=0)
    """How often asyncua probes the session (a read of ServerStatus/State) to detect a dead link."""
    mode: Mode = "poll"
    publishing_interval_ms: float = Field(default=500.0, gt=0)
    """Subscribe mode: how often the server publishes the queued changes."""
    max_nodes_per_read: int = Field(default=1000, ge=1)
    """Poll mode: nodes per Read request (servers limit it; larger tag lists are split)."""
    max_buffered_changes: int = Field(default=100_000, ge=1)
    """Subscribe mode: changes kept between two polls; beyond it the oldest are dropped (and counted)."""

    @field_validator("endpoint")
    @classmethod
    def _opc_tcp(cls, v: str) -> str:
        if not v.startswith("opc.tcp://") or len(v) <= len("opc.tcp://"):
            raise ValueError(f"endpoint must be an opc.tcp:// URL, got {v!r}")
        return v

    @field_validator("trusted_server_certs", mode="before")
    @classmethod
    def _paths(cls, v: object) -> object:
        if isinstance(v, str | Path):
            v = [v]
        if isinstance(v, list | tuple):
            return tuple(str(p) for p in v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaConnection:
        if self.security_mode == "None" and self.security_policy is not None:
            raise ValueError(
                f"security_policy {self.security_policy!r} needs security_mode 'Sign' or 'SignAndEncrypt', "
                "got security_mode 'None'"
            )
        if self.security_mode != "None" and self.security_policy is None:
            raise ValueError(
                f"security_mode {self.security_mode!r} needs a security_policy "
                "(Basic256Sha256, Aes128Sha256RsaOaep or Aes256Sha256RsaPss)"
            )
        if self.password is not None and self.username is None:
            raise ValueError("password is set but username is not: set both or neither")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(
                f"reconnect_max_s ({self.reconnect_max_s}) must be >= reconnect_min_s ({self.reconnect_min_s})"
            )
        if self.trusted_server_certs and self.security_mode == "None":
            raise ValueError("trusted_server_certs needs security_mode 'Sign' or 'SignAndEncrypt'")
        if self.trust_on_first_use and self.security_mode == "None":
            raise ValueError("trust_on_first_use needs security_mode 'Sign' or 'SignAndEncrypt'")
        if self.trust_on_first_use and self.trusted_server_certs:
            raise ValueError("set trusted_server_certs or trust_on_first_use, not both")
        if self.security_mode != "None" and not self.trusted_server_certs and not self.trust_on_first_use:
            raise ValueError(
                f"security_mode {self.security_mode!r} without trusted_server_certs would accept any server"
                " certificate: list the server's certificate in trusted_server_certs, or set"
                " trust_on_first_use: true to pin the first one seen"
            )
        return self


@dataclass(frozen=True, slots=True)
class OpcUaDevicePlan:
    """Everything a source partition needs to read one OPC UA server.

    ``tags`` pairs each tag id (see :func:`core.batch.tag_id_for`) with its address; in poll mode
    the points of every poll come out in this order. ``writable`` lists the tag ids that
    :meth:`~connectors.opcua.client.OpcUaDeviceClient.write` may change (anything else is refused
    before any I/O).
    """

    device_id: str
    connection: OpcUaConnection
    poll_interval_s: float
    tags: tuple[tuple[int, OpcUaTagAddress], ...]
    writable: frozenset[int] = frozenset()
    timestamps: TimestampWindow = DEFAULT_WINDOW
    """Source/server timestamps outside this window of the receive time are replaced by it
    (quality ``uncertain``, counted): the rule of every source, :mod:`core.timestamps`."""

    def __post_init__(self) -> None:
        seen = check_plan(self.device_id, self.poll_interval_s, (tag_id for tag_id, _ in self.tags))
        unknown = set(self.writable) - seen
        if unknown:
            raise ValueError(
                f"device {self.device_id!r}: `writable` names tag ids not in `tags`: {sorted(unknown)}"
            )
