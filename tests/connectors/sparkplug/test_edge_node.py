"""The edge node's session against a real broker, checked by an independent host (pysparkplug).

Tests are named after the Sparkplug 3.0 assertions (``tck-id-...``) they check. Batches are fed by
hand here; ``test_flow.py`` runs the whole flow against the Modbus simulator.
"""

from __future__ import annotations

import dataclasses
import socket
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from connectors.sparkplug.config import DataType, DevicePlan, EdgeNodePlan, MetricDef
from connectors.sparkplug.edge_node import SparkplugEdgeNode
from core.batch import PointBatch
from core.quality import Quality
from tests.conftest import wait_for
from tests.connectors.sparkplug.host import Host, pysparkplug

pytestmark = pytest.mark.integration

DEV = "press-01"
METRICS = (
    MetricDef(tag_id=1, device_id=DEV, name="temp", datatype=DataType.Double, unit="degC"),
    MetricDef(tag_id=2, device_id=DEV, name="count", datatype=DataType.UInt32, unit="parts"),
    MetricDef(tag_id=3, device_id=DEV, name="run", datatype=DataType.Boolean),
)


def plan(url: str, group: str, **kw: object) -> EdgeNodePlan:
    device = DevicePlan(device_id=DEV, sparkplug_id="Press1", metrics=METRICS, death_after_failures=3)
    kw.setdefault("birth_wait_s", 1.0)
    return EdgeNodePlan(url=url, group_id=group, edge_node_id="edge-1", devices=(device,), **kw)  # type: ignore[arg-type]


def batch(temp: float, count: float, run: float, quality: int = Quality.GOOD) -> PointBatch:
    b = PointBatch.from_values(DEV, [1, 2, 3], [temp, count, run], ts_ns=time.time_ns())
    return b.replace(quality=np.full(3, quality, dtype=np.uint8)) if quality else b


@pytest.fixture
def group() -> str:
    return f"g{uuid.uuid4().hex[:8]}"


@pytest.fixture
def host(mqtt_url: str, group: str) -> Iterator[Host]:
    h = Host(mqtt_url, group)
    yield h
    h.close()


@pytest.fixture
def node(mqtt_url: str, group: str, host: Host) -> Iterator[SparkplugEdgeNode]:
    n = SparkplugEdgeNode(plan(mqtt_url, group)).start()
    yield n
    n.close()


def test_topics_nbirth_and_dbirth_contents(node: SparkplugEdgeNode, host: Host) -> None:
    """tck-id-topics-nbirth-mqtt, -seq-num, -bdseq-included, -rebirth-metric, -timestamp;
    tck-id-payloads-dbirth-seq-inc; tck-id-topics-dbirth-metrics; tck-id-payloads-alias-birth-requirement;
    tck-id-operational-behavior-data-commands-rebirth-name-aliases; tck-id-payloads-propertyset-quality-value-value."""
    node.publish_batch(batch(21.5, 70_000, 1))  # the device's first batch: births, with its values
    [nb] = host.wait("NBIRTH")
    assert (nb.qos, nb.retain, nb.raw.seq) == (0, False, 0)
    m = nb.metrics()
    assert (m["bdSeq"].datatype, m["bdSeq"].value) == (pysparkplug.DataType.INT64, 0)
    assert (m["Node Control/Rebirth"].datatype, m["Node Control/Rebirth"].value) == (
        pysparkplug.DataType.BOOLEAN,
        False,
    )
    assert m["Node Control/Rebirth"].alias is None
    assert nb.raw.timestamp > 0
    [db] = host.wait("DBIRTH", device="Press1")
    assert (db.qos, db.retain, db.raw.seq, db.edge_node) == (0, False, 1, "edge-1")
    dm = db.metrics()
    assert {k: (v.datatype, v.value) for k, v in dm.items()} == {
        "temp": (pysparkplug.DataType.DOUBLE, 21.5),
        "count": (pysparkplug.DataType.UINT32, 70_000),
        "run": (pysparkplug.DataType.BOOLEAN, True),
    }
    assert sorted(v.alias for v in dm.values()) == [1, 2, 3]
    assert all(v.timestamp for v in dm.values())
    assert db.properties("temp") == {"engUnit": "degC", "Quality": 192}
    assert not host.seq_errors


def test_payloads_alias_data_cmd_requirement_and_report_by_exception(
    node: SparkplugEdgeNode, host: Host
) -> None:
    """tck-id-payloads-alias-data-cmd-requirement, tck-id-payloads-metric-datatype-not-req,
    tck-id-topics-ddata-payload (only what changed), tck-id-topics-ddata-mqtt, tck-id-topics-ddata-seq-num."""
    node.publish_batch(batch(21.5, 70_000, 1))  # the first batch of the only device: births
    host.wait("NBIRTH")
    host.wait("DBIRTH")
    node.publish_batch(batch(21.5, 70_000, 1))  # nothing changed: no DDATA
    node.publish_batch(batch(22.0, 70_000, 1))
    node.publish_batch(batch(22.0, 70_001, 1, quality=Quality.CLAMPED))
    data = host.wait("DDATA", 2)
    assert [sorted(m.name for m in d.payload.metrics) for d in data] == [["temp"], ["count", "run", "temp"]]
    assert data[0].metrics()["temp"].value == 22.0
    for d in data:
        assert (d.qos, d.retain) == (0, False)
        for raw in d.raw.metrics:
            assert raw.HasField("alias") and not raw.HasField("name") and not raw.HasField("datatype")
            assert raw.timestamp > 0
    # quality went from good to uncertain_clamped: carried as properties (Sparkplug code, and ours)
    assert data[1].properties("temp") == {"Quality": 192, "nexusQuality": "uncertain_clamped"}
    assert data[0].properties("temp") == {}  # unchanged quality: no properties
    assert [d.raw.seq for d in data] == [2, 3]
    assert not host.seq_errors


def test_payloads_sequence_num_incrementing_wraps_past_255(node: SparkplugEdgeNode, host: Host) -> None:
    """tck-id-payloads-sequence-num-incrementing, tck-id-payloads-ddata-seq-inc: 0..255 then 0 again."""
    for i in range(300):
        node.publish_batch(batch(float(i), 1, 1))
    data = host.wait("DDATA", 299, timeout=30)
    seqs = [d.raw.seq for d in data]
    assert seqs[:3] == [2, 3, 4] and 255 in seqs and seqs[seqs.index(255) + 1] == 0
    assert max(seqs) == 255
    assert [d.metrics()["temp"].value for d in data] == [float(i) for i in range(1, 300)]
    assert not host.seq_errors


def test_payloads_ndeath_will_message_and_bdseq_increment(node: SparkplugEdgeNode, host: Host) -> None:
    """tck-id-payloads-ndeath-will-message, -qos, -retain, -bdseq; tck-id-topics-ndeath-payload, -seq;
    tck-id-topics-nbirth-bdseq-matching, tck-id-topics-nbirth-bdseq-increment."""
    host.wait("NBIRTH")
    sock = node._client.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)  # the link dies without DISCONNECT: the broker sends the will
    [death] = host.wait("NDEATH")
    assert (death.qos, death.retain) == (1, False)
    assert not death.raw.HasField("seq")
    assert len(death.raw.metrics) == 1
    m = death.payload.bd_seq_metric
    assert (m.name, m.datatype, m.value) == ("bdSeq", pysparkplug.DataType.INT64, 0)
    births = host.wait("NBIRTH", 2, timeout=30)  # paho reconnects: a new CONNECT, the next bdSeq
    assert births[1].metrics()["bdSeq"].value == 1
    assert node.bdseq == 1


def test_message_flow_edge_node_birth_publish_will_message_payload_bdseq_wraps(
    node: SparkplugEdgeNode, host: Host
) -> None:
    """tck-id-message-flow-edge-node-birth-publish-will-message-payload-bdSeq: after 255 comes 0."""
    host.wait("NBIRTH")
    node._next_bdseq = 255  # skip 254 reconnects
    for count, expected in ((2, 255), (3, 0)):
        sock = node._client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)
        births = host.wait("NBIRTH", count, timeout=30)
        assert births[-1].metrics()["bdSeq"].value == expected
    deaths = host.of("NDEATH")
    assert [d.payload.bd_seq_metric.value for d in deaths] == [0, 255]


def test_operational_behavior_edge_node_intentional_disconnect_ndeath(
    mqtt_url: str, group: str, host: Host
) -> None:
    """tck-id-operational-behavior-edge-node-intentional-disconnect-ndeath,
    tck-id-payloads-ndeath-will-message-publisher-disconnect-mqtt311."""
    n = SparkplugEdgeNode(plan(mqtt_url, group)).start()
    host.wait("NBIRTH")
    n.close()
    [death] = host.wait("NDEATH")
    assert (death.qos, death.payload.bd_seq_metric.value) == (1, 0)


def test_operational_behavior_device_ddeath_and_dbirth_on_return(node: SparkplugEdgeNode, host: Host) -> None:
    """tck-id-operational-behavior-device-ddeath, tck-id-payloads-ddeath-seq-inc, tck-id-topics-ddeath-mqtt:
    DDEATH when the device's breaker opens (3 failed polls here), DBIRTH with fresh values when it answers."""
    node.publish_batch(batch(20.0, 5, 0))  # the first batch of the only device: births
    host.wait("NBIRTH")
    host.wait("DBIRTH")
    nan = float("nan")
    node.publish_batch(batch(nan, nan, nan, Quality.COMM_ERROR))
    node.publish_batch(batch(nan, nan, nan, Quality.COMM_ERROR))
    assert not host.of("DDEATH")
    node.publish_batch(batch(nan, nan, nan, Quality.COMM_ERROR))
    [dd] = host.wait("DDEATH", device="Press1")
    assert (dd.qos, dd.retain) == (0, False) and dd.raw.HasField("seq")
    node.publish_batch(batch(nan, nan, nan, Quality.COMM_ERROR))  # dead: nothing is published
    node.publish_batch(batch(23.0, 6, 1))
    births = host.wait("DBIRTH", 2, device="Press1")
    assert {k: v.value for k, v in births[1].metrics().items()} == {"temp": 23.0, "count": 6, "run": True}
    kinds = [m.kind for m in host.messages]
    assert kinds[kinds.index("DDEATH") :] == ["DDEATH", "DBIRTH"]
    # the failed polls before the breaker opened went out as bad-quality nulls
    bad = [d for d in host.of("DDATA") if d.metrics()["temp"].is_null]
    assert len(bad) == 1
    assert bad[0].properties("temp") == {"Quality": 0, "nexusQuality": "bad_comm_error"}
    assert not host.seq_errors


def test_operational_behavior_data_commands_rebirth_action(node: SparkplugEdgeNode, host: Host) -> None:
    """tck-id-operational-behavior-data-commands-rebirth-action-1, -2, -3; tck-id-message-flow-edge-node-ncmd-subscribe."""
    node.publish_batch(batch(20.0, 5, 0))  # the first batch of the only device: births
    host.wait("NBIRTH")
    host.wait("DBIRTH")
    host.ncmd("edge-1", "Node Control/Rebirth", True, pysparkplug.DataType.BOOLEAN)
    births = host.wait("NBIRTH", 2)
    assert births[1].raw.seq == 0 and births[1].metrics()["bdSeq"].value == 0
    dbirths = host.wait("DBIRTH", 2)
    assert dbirths[1].raw.seq == 1 and dbirths[1].metrics()["temp"].value == 20.0
    node.publish_batch(batch(21.0, 5, 0))
    [d] = host.wait("DDATA")
    assert d.raw.seq == 2 and d.metrics()["temp"].value == 21.0
    assert not host.seq_errors


def test_message_flow_edge_node_birth_publish_phid_wait_and_offline(
    mqtt_url: str, group: str, host: Host
) -> None:
    """tck-id-message-flow-edge-node-birth-publish-phid-wait, -phid-wait-online, -phid-wait-timestamp,
    -phid-offline; tck-id-operational-behavior-edge-node-termination-host-offline,
    -host-offline-timestamp, -host-offline-reconnect; tck-id-operational-behavior-edge-node-birth-sequence-wait;
    store-and-forward: what was buffered while the host was away goes out with is_historical."""
    hid = f"scada-{group}"
    n = SparkplugEdgeNode(plan(mqtt_url, group, primary_host_id=hid)).start()
    try:
        assert n.wait_connected(10)
        n.publish_batch(batch(20.0, 5, 0))  # no host yet: buffered
        assert not n.wait_online(0.5)
        assert not host.of("NBIRTH")
        t0 = int(time.time() * 1000)
        host.state(hid, True, t0)
        [nb] = host.wait("NBIRTH")
        host.wait("DBIRTH")
        [hist] = host.wait("DDATA")
        assert all(m.is_historical for m in hist.payload.metrics) and hist.metrics()["temp"].value == 20.0
        host.state(hid, False, t0 - 1)  # older than the online: ignored
        n.publish_batch(batch(21.0, 5, 0))
        host.wait("DDATA", 2)
        assert not host.of("NDEATH")
        host.state(hid, False, t0 + 1)
        [death] = host.wait("NDEATH")
        assert death.payload.bd_seq_metric.value == 0
        wait_for(lambda: n.bdseq == 1, what="a new session after the host went offline")
        assert len(host.of("NDEATH")) == 1, "NDEATH once: acknowledged before the disconnect"
        n.publish_batch(batch(22.0, 5, 0))  # host offline: buffered, no births
        assert len(host.of("NBIRTH")) == 1
        host.state(hid, True, t0 + 2)
        births = host.wait("NBIRTH", 2)
        assert births[1].metrics()["bdSeq"].value == 1
        data = host.wait("DDATA", 3)
        assert data[-1].metrics()["temp"].is_historical and data[-1].metrics()["temp"].value == 22.0
        assert nb.metrics()["bdSeq"].value == 0
    finally:
        n.close()
        host.state(hid, False, int(time.time() * 1000))


def test_config_change_rebirths(node: SparkplugEdgeNode, host: Host, mqtt_url: str, group: str) -> None:
    """A hot configuration change re-births with the new metric set (NBIRTH seq 0, same bdSeq, DBIRTH)."""
    node.publish_batch(batch(20.0, 5, 0))  # the first batch of the only device: births
    host.wait("NBIRTH")
    host.wait("DBIRTH")
    extra = MetricDef(tag_id=4, device_id=DEV, name="speed", datatype=DataType.Double, unit="rpm")
    device = DevicePlan(device_id=DEV, sparkplug_id="Press1", metrics=(*METRICS, extra))
    new = EdgeNodePlan(url=mqtt_url, group_id=group, edge_node_id="edge-1", devices=(device,))
    node.reconfigure(new)
    host.wait("NBIRTH", 2)
    dbirths = host.wait("DBIRTH", 2)
    m = dbirths[1].metrics()
    assert m["temp"].value == 20.0 and m["speed"].is_null and m["speed"].alias == 4
    assert not host.seq_errors


def test_store_and_forward_through_the_disk_spool_survives_a_restart(
    mqtt_url: str, group: str, host: Host, tmp_path: object
) -> None:
    """Deliverable 4: batches kept in the disk spool while the primary host was away are sent, after a
    restart of the node, as DDATA with is_historical = true (after an NBIRTH and the device's DBIRTH)."""
    hid = f"scada-{group}"
    first = SparkplugEdgeNode(plan(mqtt_url, group, primary_host_id=hid, spool_dir=str(tmp_path))).start()
    assert first.wait_connected(10)
    for v in (20.0, 21.0, 22.0):
        first.publish_batch(batch(v, 5, 0))
    assert first.stats()["backlog_batches"] == 3
    first.close()
    second = SparkplugEdgeNode(plan(mqtt_url, group, primary_host_id=hid, spool_dir=str(tmp_path))).start()
    try:
        host.state(hid, True, int(time.time() * 1000))
        host.wait("NBIRTH")
        [db] = host.wait("DBIRTH")
        data = host.wait("DDATA", 3)
        assert [d.metrics()["temp"].value for d in data] == [20.0, 21.0, 22.0]
        assert all(m.is_historical for d in data for m in d.payload.metrics)
        assert second.stats()["backlog_batches"] == 0
        assert db.metrics()["temp"].is_null  # nothing current known after the restart
        assert not host.seq_errors
    finally:
        second.close()
        host.state(hid, False, int(time.time() * 1000))


def test_hot_device_change_rebirths_with_the_new_tags(node: SparkplugEdgeNode, host: Host) -> None:
    """A hot change of a device's tags (an in-band config item): NBIRTH and DBIRTH again, with the
    new tag as a metric and the removed one gone; known metrics keep name, alias order and value."""
    from core.tags import TagInfo

    node.publish_batch(batch(20.0, 5, 0))  # the first batch of the only device: births
    host.wait("NBIRTH")
    host.wait("DBIRTH")
    tags = {
        1: TagInfo(1, DEV, "temp", "degF", "t"),
        3: TagInfo(3, DEV, "run", "", "t"),
        9: TagInfo(9, DEV, "pressure", "bar", "t"),
    }
    node.device_changed(DEV, tags)
    host.wait("NBIRTH", 2)
    db = host.wait("DBIRTH", 2)[1]
    m = db.metrics()
    assert sorted(m) == ["pressure", "run", "temp"]
    assert (m["temp"].value, m["run"].value, m["pressure"].is_null) == (20.0, False, True)
    assert db.properties("temp")["engUnit"] == "degF"
    node.device_changed(DEV, {**tags, 10: TagInfo(10, DEV, "TEMP", "", "t")})  # clashes: refused, kept
    assert [x.name for x in node.plan.devices[0].metrics] == ["temp", "run", "pressure"]
    assert not host.seq_errors


def test_payloads_dbirth_order_births_wait_for_every_device(mqtt_url: str, group: str, host: Host) -> None:
    """tck-id-payloads-dbirth-order, tck-id-operational-behavior-data-publish-dbirth-values: the births wait
    for each device's first batch (up to birth_wait_s), so every DBIRTH follows the NBIRTH before any
    DDATA; a device not heard from by then is born with null values."""
    other = DevicePlan(
        device_id="press-02",
        sparkplug_id="Press2",
        metrics=(MetricDef(tag_id=21, device_id="press-02", name="temp", datatype=DataType.Double),),
    )
    base = plan(mqtt_url, group, birth_wait_s=2.0)
    n = SparkplugEdgeNode(dataclasses.replace(base, devices=(*base.devices, other))).start()
    try:
        n.publish_batch(batch(20.0, 5, 0))  # press-01 reports; press-02 stays silent
        assert not n.online, "still waiting for press-02"
        host.wait("NBIRTH")
        dbirths = host.wait("DBIRTH", 2)
        by_device = {d.device: d.metrics() for d in dbirths}
        assert by_device["Press1"]["temp"].value == 20.0
        assert by_device["Press2"]["temp"].is_null
        n.publish_batch(PointBatch.from_values("press-02", [21], [7.0], ts_ns=time.time_ns()))
        [d] = host.wait("DDATA", device="Press2")
        assert d.metrics()["temp"].value == 7.0
        assert [m.kind for m in host.messages] == ["NBIRTH", "DBIRTH", "DBIRTH", "DDATA"]
        assert not host.seq_errors
    finally:
        n.close()


def test_broker_away_at_start_data_is_kept_and_sent_as_historical(group: str) -> None:
    """No broker when the flow starts: the node does not fail, keeps the batches, and once the broker is
    up births (with the latest values) and sends what it kept with is_historical = true."""
    from nexus.embedded import EmbeddedBroker, MosquittoBroker, free_port

    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    n = SparkplugEdgeNode(plan(url, group)).start(timeout=0.2)
    broker: MosquittoBroker | EmbeddedBroker | None = None
    h: Host | None = None
    try:
        assert not n.wait_connected(0.1)
        for v in (1.0, 2.0):
            n.publish_batch(batch(v, 5, 0))
        assert n.stats()["backlog_batches"] == 2
        broker = MosquittoBroker(port) if MosquittoBroker.available() else EmbeddedBroker(port=port)
        broker.start()
        h = Host(url, group)
        [db] = h.wait("DBIRTH", timeout=60)  # paho retries with backoff (1 s, 2 s, ...)
        assert db.metrics()["temp"].value == 2.0
        data = h.wait("DDATA", 2)
        assert [(d.metrics()["temp"].value, d.metrics()["temp"].is_historical) for d in data] == [
            (1.0, True),
            (2.0, True),
        ]
    finally:
        n.close()
        if h is not None:
            h.close()
        if broker is not None:
            broker.stop()


def test_malformed_commands_are_ignored_and_the_session_goes_on(node: SparkplugEdgeNode, host: Host) -> None:
    """Garbage NCMD/DCMD payloads, unknown devices and metrics: logged and ignored (paho's network thread
    survives: a rebirth request afterwards is still obeyed); a DCMD without a command router is refused."""
    node.publish_batch(batch(20.0, 5, 0))
    host.wait("DBIRTH")
    topic = f"spBv1.0/{host.group}"
    host.client.publish(f"{topic}/NCMD/edge-1", b"\xff\x00not protobuf", qos=0)
    host.client.publish(f"{topic}/DCMD/edge-1/Press1", b"\xff\x00not protobuf", qos=0)
    host.dcmd("edge-1", "Nobody", 1, name="temp", datatype=pysparkplug.DataType.DOUBLE)
    host.dcmd("edge-1", "Press1", 1, alias=999, datatype=pysparkplug.DataType.DOUBLE)
    host.dcmd("edge-1", "Press1", 1.0, name="temp", datatype=pysparkplug.DataType.DOUBLE)
    host.ncmd("edge-1", "Node Control/Rebirth", True, pysparkplug.DataType.BOOLEAN)
    host.wait("NBIRTH", 2)
    assert node.stats()["dcmd_refused"] == 2  # the unknown alias, and temp (no command router here)
    assert not host.seq_errors


def test_string_metrics_report_by_exception(mqtt_url: str, group: str, host: Host) -> None:
    """A String metric (a text point) goes out when its text changes, not at every batch."""
    device = DevicePlan(
        device_id=DEV,
        sparkplug_id="Press1",
        metrics=(
            MetricDef(tag_id=1, device_id=DEV, name="temp", datatype=DataType.Double),
            MetricDef(tag_id=5, device_id=DEV, name="recipe", datatype=DataType.String),
        ),
    )
    n = SparkplugEdgeNode(
        EdgeNodePlan(url=mqtt_url, group_id=group, edge_node_id="edge-1", devices=(device,))
    ).start()

    def text_batch(temp: float, recipe: str) -> PointBatch:
        b = PointBatch.from_values(DEV, [1, 5], [temp, float("nan")], ts_ns=time.time_ns())
        return PointBatch(b.device_id, b.ts_ns, b.tag_ids, b.values, b.quality, {1: recipe})

    try:
        n.publish_batch(text_batch(1.0, "A-100"))
        [db] = host.wait("DBIRTH")
        assert (db.metrics()["recipe"].datatype, db.metrics()["recipe"].value) == (
            pysparkplug.DataType.STRING,
            "A-100",
        )
        n.publish_batch(text_batch(2.0, "A-100"))  # only temp changed
        n.publish_batch(text_batch(2.0, "B-200"))  # only the recipe changed
        data = host.wait("DDATA", 2)
        assert [{m.name: m.value for m in d.payload.metrics} for d in data] == [
            {"temp": 2.0},
            {"recipe": "B-200"},
        ]
    finally:
        n.close()


def test_operational_behavior_device_ddeath_after_a_deadband(mqtt_url: str, group: str, host: Host) -> None:
    """A deadband upstream passes only the first of a run of failed polls: the device still gets its
    DDEATH, death_after_s after that first failure (the breaker's threshold times the poll interval)."""
    device = DevicePlan(
        device_id=DEV, sparkplug_id="Press1", metrics=METRICS, death_after_failures=100, death_after_s=0.3
    )
    n = SparkplugEdgeNode(
        EdgeNodePlan(url=mqtt_url, group_id=group, edge_node_id="edge-1", devices=(device,))
    ).start()
    try:
        n.publish_batch(batch(20.0, 5, 0))
        host.wait("DBIRTH")
        nan = float("nan")
        n.publish_batch(batch(nan, nan, nan, Quality.COMM_ERROR))  # the only failed batch that gets through
        host.wait("DDEATH", device="Press1")
        n.publish_batch(batch(21.0, 5, 0))
        births = host.wait("DBIRTH", 2)
        assert births[1].metrics()["temp"].value == 21.0
        assert [m.kind for m in host.messages] == ["NBIRTH", "DBIRTH", "DDATA", "DDEATH", "DBIRTH"]
        assert not host.seq_errors
    finally:
        n.close()
