"""Multi-node on one run directory, without processes: per-node file names and locks, the pure
give-up agreement and slow-node verdicts, the cycle following another node's ending, and status
showing every node (the loopback end-to-end runs are in test_multi_node_e2e.py)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
import pytest

from shared.exit_codes import SupervisorExit
from shared.heartbeat import Heartbeat, write_heartbeat
from shared.run_dir import RunDir
from shared.supervisor_state import (
    ProcessRecord,
    SupervisorState,
)
from shared.vocabulary import OutcomeKind
from supervisor.attempts.attempt import AttemptResult
from supervisor.policy import (
    Outcome,
    PeerEnding,
    RestartLimits,
    find_slow_hosts,
    peer_ending,
)
from supervisor.run_config import MultiNode
from supervisor.run_lock import RunLock, RunLockHeld
from supervisor.views.dashboard import status_lines
from supervisor.views.snapshot import collect_snapshot
from tests.supervisor.helpers import write_supervisor_state
from tests.supervisor.test_run_loop import ends, make

NODE_1 = MultiNode(nnodes="2", node_rank=1, rdzv_endpoint="127.0.0.1:29500")
NODE_0 = MultiNode(nnodes="2", node_rank=0, rdzv_endpoint="127.0.0.1:29500")


# --- the run directory's per-node names -----------------------------------------------------------
def test_node_0_and_a_one_node_run_keep_todays_names_and_node_r_gets_its_own(tmp_path):
    for plain in (RunDir.at(tmp_path), RunDir.at(tmp_path, 0)):
        assert plain.supervisor_lock == tmp_path / "supervisor.lock"
        assert plain.supervisor_state == tmp_path / "supervisor.json"
        assert plain.attempt_log(3) == tmp_path / "attempts" / "003.log"
        assert plain.incident_dir(2) == tmp_path / "incidents" / "002"
    node = RunDir.at(tmp_path, 2)
    assert node.supervisor_lock == tmp_path / "supervisor.node2.lock"
    assert node.supervisor_state == tmp_path / "supervisor.node2.json"
    assert node.attempt_log(3) == tmp_path / "attempts" / "node2" / "003.log"
    assert node.incident_dir(2) == tmp_path / "incidents" / "node2" / "002"
    # Attempts are numbered per node: node 2's logs do not count for node 0 and the reverse.
    node.attempt_log(7).parent.mkdir(parents=True)
    node.attempt_log(7).write_text("")
    assert RunDir.at(tmp_path).highest_attempt() == 0 and node.highest_attempt() == 7


def test_one_lock_per_node_refuses_a_second_supervisor_of_the_same_node_only(tmp_path):
    with RunLock(RunDir.at(tmp_path).supervisor_lock), RunLock(RunDir.at(tmp_path, 1).supervisor_lock):
        with pytest.raises(RunLockHeld):
            RunLock(RunDir.at(tmp_path, 1).supervisor_lock).acquire()
        with pytest.raises(RunLockHeld):  # a one-node run on node 0's directory: refused as today
            RunLock(RunDir.at(tmp_path).supervisor_lock).acquire()
        RunLock(RunDir.at(tmp_path, 2).supervisor_lock).acquire()  # another node: fine (released at exit)


# --- pure decisions ----------------------------------------------------------------------------------
def test_peer_ending_follows_only_another_nodes_record_written_since_we_started():
    record = {"node": 1, "state": "gave_up", "exit_code": 3, "reason": "restart budget exhausted", "time": 100.0}
    assert peer_ending(record, own_node=0) == PeerEnding(1, "gave_up", 3, "restart budget exhausted")
    assert peer_ending(record, own_node=1) is None  # our own
    assert peer_ending(record, own_node=0, before=[record]) is None  # there when we started: an earlier run's
    for broken in (None, [], {"node": "1", "exit_code": 3, "time": 100.0}, {"node": 1, "exit_code": True, "time": 1e9},
                   {"node": 1, "time": 100.0}):
        assert peer_ending(broken, own_node=0) is None
    assert peer_ending(record, 0).describe() == "node 1 gave up: restart budget exhausted"
    # node 0's store, read only once connected: still by its time against our start
    assert peer_ending(record, own_node=0, started_at=150.0) is None
    assert peer_ending({**record, "time": "soon"}, own_node=0, started_at=0.0) is None


def test_a_peers_ending_is_new_or_old_whatever_the_nodes_clocks_say():
    """Node 1's clock an hour behind: its fresh record must count; an hour ahead: an old record
    left from an earlier run must not end this one."""
    now = 1_800_000_000.0
    fresh_but_behind = {"node": 1, "exit_code": 3, "reason": "gave up", "time": now - 3600}
    assert peer_ending(fresh_but_behind, own_node=0, before=[None]) is not None
    old_but_ahead = {"node": 1, "exit_code": 3, "reason": "gave up", "time": now + 3600, "pid": 7}
    assert peer_ending(old_but_ahead, own_node=0, before=[old_but_ahead]) is None


def test_a_whole_slow_node_is_found_even_when_each_rank_looks_like_its_neighbours():
    fast, slow = [0.10] * 12, [0.16] * 12
    samples = {0: fast, 1: fast, 2: slow, 3: slow}
    hosts = {0: "a", 1: "a", 2: "b", 3: "b"}
    assert set(find_slow_hosts(samples, hosts)) == {"b"}
    assert find_slow_hosts({0: fast, 1: slow}, {0: "a", 1: "a"}) == {}  # one host: nothing to compare
    assert find_slow_hosts({0: fast, 1: [0.11] * 12}, {0: "a", 1: "b"}) == {}  # within the ratio
    assert find_slow_hosts({0: fast, 1: slow[:3]}, {0: "a", 1: "b"}) == {}  # too few samples


# --- the cycle ------------------------------------------------------------------------------------
def _events(tmp_path: Path, name: str) -> list[dict]:
    records = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    return [r for r in records if r["event"] == name]


def test_a_node_that_gives_up_records_it_and_writes_its_own_state_file(tmp_path):
    crash = ends(OutcomeKind.CRASHED, signal=9, reason="rank 1 crashed: killed by SIGKILL after step 3")
    sup, _, _, select = make(tmp_path, [crash], multi_node=NODE_1,
                             limits=RestartLimits(max_restarts=0, max_no_progress_restarts=0))
    assert sup.run() == SupervisorExit.GAVE_UP
    marker = json.loads((tmp_path / "give_up.json").read_text())
    assert marker["node"] == 1 and marker["state"] == "gave_up" and marker["exit_code"] == SupervisorExit.GAVE_UP
    assert "SIGKILL" in marker["reason"]
    assert json.loads((tmp_path / "supervisor.node1.json").read_text())["state"] == "gave_up"
    assert not (tmp_path / "supervisor.json").exists()
    assert all(e.get("node") == 1 for e in _events(tmp_path, "gave_up"))
    assert select.chosen == []  # node 1 never validates: node 0 judges the run's checkpoints


def test_another_nodes_give_up_ends_this_node_before_its_next_launch_with_the_same_code(tmp_path):
    def crash_then_peer_gives_up(number: int):
        (tmp_path / "give_up.json").write_text(json.dumps({
            "node": 1, "state": "gave_up", "exit_code": int(SupervisorExit.GAVE_UP), "time": time.time(),
            "reason": "gave up: restart budget exhausted (0/0)"}))
        return ends(OutcomeKind.CRASHED, code=1)(number)

    sup, attempts, _, _ = make(tmp_path, [crash_then_peer_gives_up], multi_node=NODE_0)
    assert sup.run() == SupervisorExit.GAVE_UP
    assert attempts.numbers == [1]
    line = _events(tmp_path, "gave_up")[-1]["message"]
    assert line.startswith("node 1 gave up: restart budget exhausted (0/0)") and "node 0 ends too" in line
    assert json.loads((tmp_path / "give_up.json").read_text())["node"] == 1  # not overwritten by the follower


def test_a_give_up_record_older_than_this_supervisor_is_an_earlier_run_and_ignored(tmp_path):
    (tmp_path / "give_up.json").write_text(json.dumps({"node": 1, "state": "gave_up", "exit_code": 3,
                                                       "time": time.time() - 3600, "reason": "old"}))
    sup, attempts, _, _ = make(tmp_path, [ends(OutcomeKind.FINISHED, step=11, last="model_00011.pt")],
                               multi_node=NODE_0)
    (tmp_path / "model_00011.pt").write_bytes(b"x")
    assert sup.run() == SupervisorExit.FINISHED
    assert attempts.numbers == [1]


def test_a_one_node_run_writes_no_give_up_record_and_no_node_field(tmp_path):
    crash = ends(OutcomeKind.CRASHED, code=1)
    sup, _, _, _ = make(tmp_path, [crash], limits=RestartLimits(max_restarts=0, max_no_progress_restarts=0))
    assert sup.run() == SupervisorExit.GAVE_UP
    assert not (tmp_path / "give_up.json").exists()
    assert all("node" not in e for e in _events(tmp_path, "gave_up"))


# --- status on a shared directory -------------------------------------------------------------------
def test_status_on_a_shared_directory_shows_every_nodes_supervisor_and_which_node_runs_each_rank(tmp_path):
    me = psutil.Process()
    run = RunDir.at(tmp_path)
    for node, worker_pid in ((0, 4_000_001), (1, os.getpid())):
        state = SupervisorState(state="running", pid=me.pid, pid_create_time=me.create_time(), hostname="h",
                                log_dir=str(tmp_path), started_at=time.time(), attempt=2 + node,
                                processes=[ProcessRecord(worker_pid, 0.0, "worker")])
        write_supervisor_state(run.node_state(node), state)
    for rank, pid in ((0, os.getpid()), (1, 4_000_001)):
        write_heartbeat(run.heartbeat(rank), Heartbeat(pid=pid, rank=rank, world_size=2, step=5, phase="train",
                                                       time=time.time(), hostname="h"))
    snapshot = collect_snapshot(tmp_path)
    assert snapshot.supervisor is not None and snapshot.supervisor.attempt == 2
    assert set(snapshot.nodes) == {1} and snapshot.nodes[1].attempt == 3
    assert {r.rank: r.node for r in snapshot.ranks} == {0: 1, 1: 0}
    lines = status_lines(snapshot)
    assert any(line.startswith("node 1 supervisor: pid") and "attempt 3" in line for line in lines), lines
    assert any(line.startswith("rank 0 on h (node 1)") for line in lines), lines


def test_status_on_node_rs_own_directory_shows_its_supervisor(tmp_path):
    me = psutil.Process()
    write_supervisor_state(RunDir.at(tmp_path, 1).supervisor_state, SupervisorState(
        state="running", pid=me.pid, pid_create_time=me.create_time(), hostname="h", log_dir=str(tmp_path),
        started_at=time.time(), attempt=4, run_config={"multi_node": {
            "nnodes": "2", "node_rank": 1, "rdzv_endpoint": "gpu-07:29500", "rdzv_id": "81234", "rdzv_backend": "c10d"}}))
    snapshot = collect_snapshot(tmp_path)
    assert snapshot.has_run and snapshot.supervisor is not None and snapshot.supervisor.attempt == 4
    assert snapshot.nodes == {}
    assert "rendezvous: node 1 of 2, c10d at gpu-07:29500, id 81234" in status_lines(snapshot)


def test_a_launch_that_finds_the_rendezvous_closed_is_relaunched_without_counting_a_restart(tmp_path, monkeypatch):
    monkeypatch.setattr("supervisor.multinode.endings.CLOSED_RENDEZVOUS_WAIT_S", 0.01)

    def closed(number: int) -> AttemptResult:
        return AttemptResult(Outcome(OutcomeKind.CRASHED, exit_code=1), "torchrun exit 1", 0.5,
                             cause="torchrun found the rendezvous closed (RendezvousClosedError)",
                             rendezvous_closed=True)

    (tmp_path / "model_00011.pt").write_bytes(b"x")
    sup, attempts, _, _ = make(tmp_path, [ends(OutcomeKind.CRASHED, code=1), closed, closed,
                                          ends(OutcomeKind.FINISHED, step=11, last="model_00011.pt")],
                               multi_node=NODE_0)
    assert sup.run() == SupervisorExit.FINISHED
    assert attempts.numbers == [1, 2, 3, 4]
    assert [e["restarts_used"] for e in _events(tmp_path, "restarted")] == [1]  # the crash only
    warnings = [e for e in _events(tmp_path, "warning") if e.get("rendezvous_closed")]
    assert len(warnings) == 2 and "not counted as a restart" in warnings[0]["message"]


def test_torchruns_closed_rendezvous_is_recognised_in_its_log():
    from supervisor.attempts.torchrun import rendezvous_closed

    assert rendezvous_closed("...\ntorch.distributed.elastic.rendezvous.api.RendezvousClosedError\n")
    assert not rendezvous_closed("RendezvousTimeoutError: timed out")


def test_node_r_never_prunes_the_runs_checkpoints(tmp_path):
    from supervisor.checkpoints.disk_guard import DiskGuard
    from supervisor.run_config import RunConfig

    for step in (4, 8):
        (tmp_path / f"model_{step:05d}.pt").write_bytes(b"x" * 10)
    guard = DiskGuard(RunDir.at(tmp_path, 1), RunConfig(log_dir=tmp_path, cwd=tmp_path, prune_on_low_disk=True),
                      journal=None)
    guard.newest_valid_step = 8
    guard.prune(threshold=10**15)
    assert sorted(p.name for p in tmp_path.glob("model_*.pt")) == ["model_00004.pt", "model_00008.pt"]


# --- watching one node's ranks among all of a shared directory's --------------------------------------
def _watching(tmp_path: Path, node: int):
    import socket
    from types import SimpleNamespace

    from supervisor.attempts.heartbeat_reader import HeartbeatReader
    from supervisor.attempts.torchrun_attempts import TorchrunAttempts, _Live
    from supervisor.checkpoints.disk_guard import DiskGuard
    from supervisor.journal import CycleState, Journal
    from supervisor.run_config import RunConfig
    from supervisor.stop_signals import StopSignals
    from tests.supervisor.attempts.test_torchrun_attempts import Quiet

    run = RunDir.at(tmp_path, node)
    config = RunConfig(log_dir=tmp_path, cwd=tmp_path, multi_node=MultiNode("2", node, "127.0.0.1:29500"))
    journal = Journal(run, Quiet(), node=node)
    journal.begin(CycleState(state="running", pid=1, pid_create_time=0.0, hostname="h", log_dir=str(tmp_path),
                             started_at=0.0))
    attempts = TorchrunAttempts(config, run, journal, StopSignals(), DiskGuard(run, config, journal))
    tree = SimpleNamespace(launched_at=time.time() - 1.0, known={100: object()})  # our rank's pid is 100
    return attempts, _Live(tree=tree, heartbeats=HeartbeatReader(run, "")), socket.gethostname()  # type: ignore[arg-type]


def _write_beats(tmp_path: Path, beats: list[tuple[int, int, str, float]]) -> None:
    for rank, pid, host, compute in beats:
        write_heartbeat(RunDir.at(tmp_path).heartbeat(rank), Heartbeat(
            pid=pid, rank=rank, world_size=len(beats), step=20, phase="train", time=time.time(), hostname=host,
            compute_s=[compute] * 20))


def test_a_supervisor_judges_only_its_own_ranks_and_node_0_names_another_nodes_straggler(tmp_path):
    attempts, live, host = _watching(tmp_path, 0)
    # rank 0: another node's process (not in our tree) on this machine; rank 1: ours.
    _write_beats(tmp_path, [(0, 200, host, 0.30), (1, 100, host, 0.10), (2, 300, host, 0.10)])
    attempts._read_heartbeats(live)
    assert set(live.beats) == {1} and set(live.peers) == {0, 2}
    stragglers = _events(tmp_path, "straggler")
    assert [e["rank"] for e in stragglers] == [0] and stragglers[0]["node"] == 0


def test_node_r_announces_only_its_own_stragglers_and_node_0_a_whole_slow_host(tmp_path):
    attempts, live, host = _watching(tmp_path, 1)
    _write_beats(tmp_path, [(0, 200, "fast-host", 0.10), (1, 100, host, 0.10), (2, 300, "slow-host", 0.30),
                            (3, 301, "slow-host", 0.30)])
    attempts._read_heartbeats(live)
    assert set(live.beats) == {1}
    assert not (tmp_path / "events.jsonl").exists() or not _events(tmp_path, "straggler")
    attempts, live, host = _watching(tmp_path, 0)
    attempts._read_heartbeats(live)
    whole = [e for e in _events(tmp_path, "straggler") if e.get("whole_node")]
    assert [e["hostname"] for e in whole] == ["slow-host"] and "node slow-host is a straggler" in whole[0]["message"]


def test_another_nodes_trainer_on_a_shared_directory_is_neither_foreign_nor_ours(tmp_path):
    import subprocess
    import sys

    from supervisor.attempts.orphans import another_nodes, find_foreign_trainers

    env = {**os.environ, "GPT2SUP_NODE_RANK": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--log_dir", str(tmp_path)],
                            env=env, cwd=tmp_path)
    try:
        def seen() -> bool:
            try:
                return psutil.Process(proc.pid).environ().get("GPT2SUP_NODE_RANK") == "1"
            except psutil.Error:
                return False

        deadline = time.monotonic() + 10
        while not seen() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert another_nodes(proc.pid, 0) and not another_nodes(proc.pid, 1)
        assert find_foreign_trainers(tmp_path, node=0) is None  # node 1's: node 0 leaves it alone
        assert find_foreign_trainers(tmp_path, node=1) is not None  # node 1's own kind: not ours, so foreign
        assert find_foreign_trainers(tmp_path) is not None  # a one-node run: a trainer is a trainer
    finally:
        proc.kill()
        proc.wait()


def test_the_report_and_goodput_count_each_failure_once_from_node_0s_events(tmp_path):
    from supervisor.views.run_history import load_history

    records = [{"time": 1.0, "event": "supervisor_started", "node": 0}, {"time": 1.1, "event": "supervisor_started", "node": 1},
               {"time": 5.0, "event": "crashed", "node": 0, "message": "attempt 1: rank 0 crashed"},
               {"time": 5.1, "event": "crashed", "node": 1, "message": "attempt 1: rank 1 crashed"}]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "time": 2.0 + s, "loss": 1.0}) + "\n"
                                                    for s in range(6)))
    history = load_history(tmp_path)
    assert [e.get("node") for e in history.events] == [0, 0] and len(history.faults) == 1


def test_node_0_of_a_finished_multi_node_run_launches_so_every_node_ends_alike(tmp_path):
    """A one-node `gpt2sup run` on a finished run says "already finished" and launches nothing; node 0
    of a multi-node run must not: the other nodes' supervisors would launch into a rendezvous that
    never forms and spend their restarts. Node 0 launches, and every node's workers end at once."""
    from dataclasses import replace

    node_0 = replace(NODE_0, coordination_port=0)
    (tmp_path / "model_00011.pt").write_bytes(b"x")
    first, _, _, _ = make(tmp_path, [ends(OutcomeKind.FINISHED, step=11, last="model_00011.pt")], multi_node=node_0)
    assert first.run() == SupervisorExit.FINISHED
    again, attempts, _, _ = make(tmp_path, [ends(OutcomeKind.FINISHED, step=11, last="model_00011.pt")],
                                 multi_node=node_0)
    assert again.run() == SupervisorExit.FINISHED
    assert attempts.numbers == [1]
