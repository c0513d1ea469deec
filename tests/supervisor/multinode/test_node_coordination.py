"""Agreeing on an ending through node 0's TCPStore (supervisor.multinode.node_coordination), without
supervisors: the address and node count, the store itself in-process (host and client on
loopback), and the cycle's use of it (one "announce" and one "has another node ended?" check,
over give_up.json and the store). The two-supervisor runs are in test_multi_node_e2e.py."""
from __future__ import annotations

import json
import socket
import time

import pytest

from shared.exit_codes import SupervisorExit
from shared.vocabulary import OutcomeKind
from supervisor.multinode.node_coordination import (
    NodeCoordination,
    coordination_address,
    for_node,
    max_nodes,
)
from supervisor.policy import RestartLimits
from supervisor.run_config import MultiNode
from tests.supervisor.test_run_loop import ends, events, make


def test_the_store_sits_on_the_rendezvous_host_one_port_above_unless_told():
    assert coordination_address("10.0.0.1:29500", None) == ("10.0.0.1", 29501)
    assert coordination_address("node-a:29500", 4000) == ("node-a", 4000)
    assert coordination_address("node-a", None) == ("node-a", 29401)  # torchrun's default port
    assert coordination_address("[fe80::1]:29500", None) == ("fe80::1", 29501)
    assert coordination_address("fe80::1", None) == ("fe80::1", 29401)
    assert coordination_address("node-a:29500", 0) is None  # turned off
    assert coordination_address("node-a:65535", None) is None
    assert coordination_address("node-a:http", None) is None


def test_only_a_ranked_node_of_a_multi_node_run_coordinates():
    def warn(_: str) -> None: ...

    two = MultiNode(nnodes="2", node_rank=1, rdzv_endpoint="h:29500", rdzv_id="job")
    assert max_nodes("2") == 2 and max_nodes("1:4") == 4 and max_nodes("x") == 1
    made = for_node(two, 1, 0.5, warn)
    assert made is not None and made.address == ("h", 29501) and made.key == "gpt2sup/job/ended"
    assert made.grace_s == pytest.approx(2 * 0.5 + 5.0)
    assert for_node(None, None, 0.5, warn) is None
    assert for_node(two, None, 0.5, warn) is None  # torchrun assigns the rank: no node to name
    assert for_node(MultiNode(nnodes="1", node_rank=0, rdzv_endpoint="h:29500"), 0, 0.5, warn) is None
    assert for_node(MultiNode(nnodes="2", node_rank=0, rdzv_endpoint="h:29500", coordination_port=0), 0, 0.5,
                    warn) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _opened(coordination: NodeCoordination, timeout: float = 60.0) -> NodeCoordination:
    deadline = time.monotonic() + timeout
    while coordination._current() is None:
        assert time.monotonic() < deadline, "the store did not open"
        time.sleep(0.05)
    return coordination


def test_node_1s_ending_reaches_node_0_which_closes_once_every_node_has_read_it():
    warnings: list[str] = []
    address = ("127.0.0.1", _free_port())
    host = NodeCoordination("job", address, 0, 3, grace_s=30.0, warn=warnings.append)
    nodes = [NodeCoordination("job", address, rank, 3, grace_s=30.0, warn=warnings.append) for rank in (1, 2)]
    for node in nodes:  # the clients first: they wait, quietly, for node 0's store
        node.start()
    host.start()
    _opened(host)
    for node in nodes:
        _opened(node)
    assert host.ending() is None and nodes[1].ending() is None
    record = {"node": 1, "state": "gave_up", "exit_code": 3, "reason": "gave up: x", "time": time.time()}
    assert nodes[0].publish(record)
    assert host.ending() == record and nodes[1].ending() == record
    started = time.monotonic()
    nodes[1].acknowledge()
    nodes[1].acknowledge()  # counted once
    host.close()  # node 1 wrote it, node 2 read it: nothing to wait for
    assert time.monotonic() - started < 5
    assert warnings == []
    # Node 0's supervisor gone: one warning, no exception, and the node goes on as without the store.
    del host
    time.sleep(0.3)
    assert nodes[1].ending() is None and nodes[1].ending() is None
    assert len(warnings) == 1 and "lost the nodes' coordination store" in warnings[0], warnings
    for node in nodes:
        node.close()


def test_node_0_waits_at_most_its_grace_for_a_node_that_never_reads_the_ending():
    host = NodeCoordination("job", ("127.0.0.1", _free_port()), 0, 2, grace_s=1.0, warn=lambda _: None)
    host.start()
    _opened(host)
    assert host.publish({"node": 0})
    started = time.monotonic()
    host.close()
    assert 0.9 < time.monotonic() - started < 5


def test_a_port_already_taken_is_one_warning_and_no_store():
    warnings: list[str] = []
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        host = NodeCoordination("job", ("127.0.0.1", taken.getsockname()[1]), 0, 2, 1.0, warn=warnings.append)
        host.start()
        host._thread.join(60)
    assert host.ending() is None and not host.publish({"node": 0})
    assert len(warnings) == 1 and "could not host" in warnings[0], warnings


# --- the cycle: one announce, one check, over give_up.json and the store ------------------------------
class FakeStore:
    """What the cycle asks of a NodeCoordination, recorded."""

    def __init__(self, record: object = None, reachable: bool = True) -> None:
        self.record, self.reachable = record, reachable
        self.published: list[dict] = []
        self.acknowledged = 0

    def where(self) -> str:
        return "h:29501"

    def publish(self, record: dict) -> bool:
        self.published.append(record)
        return self.reachable

    def ending(self) -> object:
        return self.record

    def acknowledge(self) -> None:
        self.acknowledged += 1

    def start(self) -> None: ...

    def close(self, should_stop=None) -> None: ...


NODE_0 = MultiNode(nnodes="2", node_rank=0, rdzv_endpoint="127.0.0.1:29500")
NODE_1 = MultiNode(nnodes="2", node_rank=1, rdzv_endpoint="127.0.0.1:29500")


def test_another_nodes_ending_in_the_store_ends_this_node_with_its_code_and_is_read_once(tmp_path):
    store = FakeStore()

    def crash_then_node_1_gives_up(number: int):
        store.record = {"node": 1, "state": "gave_up", "exit_code": int(SupervisorExit.GAVE_UP),
                        "reason": "gave up: restart budget exhausted (0/0 restarts used)", "time": time.time()}
        return ends(OutcomeKind.CRASHED, code=1)(number)

    sup, attempts, _, _ = make(tmp_path, [crash_then_node_1_gives_up], multi_node=NODE_0, coordination=store)
    assert sup.run() == SupervisorExit.GAVE_UP
    assert attempts.numbers == [1]
    line = events(tmp_path, "gave_up")[-1]["message"]
    assert line == "node 1 gave up: restart budget exhausted (0/0 restarts used) -- node 0 ends too", line
    assert store.published == [] and store.acknowledged == 1  # followed, not announced; read once
    assert not (tmp_path / "give_up.json").exists()


def test_an_ending_in_the_store_from_before_this_supervisor_started_is_ignored(tmp_path):
    (tmp_path / "model_00011.pt").write_bytes(b"x")
    store = FakeStore({"node": 1, "state": "gave_up", "exit_code": 3, "reason": "old", "time": time.time() - 60})
    sup, _, _, _ = make(tmp_path, [ends(OutcomeKind.FINISHED, step=11, last="model_00011.pt")], multi_node=NODE_0,
                        coordination=store)
    assert sup.run() == SupervisorExit.FINISHED and store.acknowledged == 0


def test_a_node_that_gives_up_announces_it_in_the_file_and_the_store_and_warns_when_unreachable(tmp_path):
    store = FakeStore(reachable=False)
    sup, _, _, _ = make(tmp_path, [ends(OutcomeKind.CRASHED, code=1)], multi_node=NODE_1,
                        limits=RestartLimits(max_restarts=0, max_no_progress_restarts=0), coordination=store)
    assert sup.run() == SupervisorExit.GAVE_UP
    marker = json.loads((tmp_path / "give_up.json").read_text())
    assert store.published == [marker] and marker["node"] == 1
    assert any("coordination store" in e["message"] for e in events(tmp_path, "warning"))


def test_the_supervisor_imports_torch_only_when_a_multi_node_store_opens():
    import subprocess
    import sys

    code = ("import sys, supervisor.run_loop, supervisor.multinode.node_coordination; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
