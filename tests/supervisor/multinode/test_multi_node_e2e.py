"""Two "nodes" on loopback: two ``gpt2sup run`` x 1 process over torchrun's c10d rendezvous, each
with its own run directory (node-local disks) or both on one directory (shared storage), as an
operator would start them on two machines.

c10d orders the nodes of each rendezvous round by its own node descriptors, not by ``--node-rank``,
so after a restart node 1 can host global rank 0. It once started over from step 0 in its own,
empty directory while node 0 held the run's checkpoints, and both supervisors exited as if all
were well. Whichever node hosts global rank 0, the run must resume from node 0's newest validated
checkpoint and finish bitwise-equal to a one-node, two-process run.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from shared.exit_codes import SupervisorExit
from tests.supervisor.helpers import (
    FAST_SUPERVISOR_ARGS,
    FINAL_CHECKPOINT,
    REPO_ROOT,
    WORKER_ARGS,
    assert_same_weights,
    child_env,
    console_text,
    events_named,
    gpt2sup_argv,
    wait_exit,
    wait_for,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_argv(log_dir: Path, node_rank: int, port: int, run_id: str, hang_timeout: float = 30,
              extra: tuple[str, ...] = ()) -> list[str]:
    return gpt2sup_argv(
        "run", "--log-dir", str(log_dir), "--nproc-per-node", "1", "--nnodes", "2", "--node-rank", str(node_rank),
        "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", run_id, *FAST_SUPERVISOR_ARGS,
        "--hang-timeout", str(hang_timeout), *extra, "--", *WORKER_ARGS)


def start_node(log_dir: Path, node_rank: int, port: int, run_id: str, hang_timeout: float = 30,
               env: dict[str, str] | None = None, console_path: Path | None = None,
               extra: tuple[str, ...] = ()) -> subprocess.Popen:
    argv = node_argv(log_dir, node_rank, port, run_id, hang_timeout, extra)
    with open(console_path or f"{log_dir}.console", "ab") as console:
        return subprocess.Popen(argv, cwd=REPO_ROOT, env=child_env(env), stdout=console, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def node_heartbeat(log_dir: Path) -> dict | None:
    """The one rank this node runs (its global rank can be 0 or 1)."""
    for path in (log_dir / "heartbeat").glob("rank*.json"):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None
    return None


def training_past(log_dir: Path, step: int) -> dict | None:
    beat = node_heartbeat(log_dir)
    return beat if beat and beat.get("step", -1) >= step and beat.get("phase") == "train" else None


def start_two_nodes(tmp_path: Path, run_id: str, hang_timeout: float = 30,
                    env: dict[str, str] | None = None) -> tuple[list[Path], list[subprocess.Popen]]:
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    port = free_port()
    procs = [start_node(nodes[0], 0, port, run_id, hang_timeout, env)]
    time.sleep(2)  # node 0's torchrun first: it hosts global rank 0 in the first round
    procs.append(start_node(nodes[1], 1, port, run_id, hang_timeout, env))
    return nodes, procs


def wait_both(procs: list[subprocess.Popen], nodes: list[Path]) -> list[int]:
    try:
        return [wait_exit(proc, log_dir, timeout=400) for proc, log_dir in zip(procs, nodes)]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.slow
def test_a_killed_rank_on_node_1_resumes_the_whole_run_from_node_0s_checkpoint_bitwise(tmp_path, reference_checkpoint):
    nodes, procs = start_two_nodes(tmp_path, "mn-kill")
    try:
        beat = wait_for(lambda: training_past(nodes[1], 9), 240, "node 1 past step 9")
        os.kill(beat["pid"], signal.SIGKILL)
    finally:
        codes = wait_both(procs, nodes)
    detail = "\n".join(console_text(d)[-2500:] for d in nodes)
    assert codes == [SupervisorExit.FINISHED, SupervisorExit.FINISHED], detail
    # Node 0 holds the run: every checkpoint, the final one bitwise equal to the one-node run's.
    assert_same_weights(nodes[0] / FINAL_CHECKPOINT, reference_checkpoint)
    assert not list(nodes[1].glob("model_*.pt")), "node 1 wrote checkpoints of its own"
    # The second attempt resumed from one of node 0's checkpoints, not from scratch. Which one
    # depends on timing: the step-8 checkpoint is written in the background, and a kill that lands
    # before that write ends leaves step 4 as the newest (CI once saw exactly that).
    log = (nodes[0] / "log.txt").read_text().splitlines()
    assert [line.split()[0] for line in log if " train " in line] == [str(s) for s in range(12)], log
    attempt_logs = "".join(p.read_text(errors="replace") for d in nodes for p in sorted((d / "attempts").glob("*.log")))
    resumed = re.findall(r"resumed from (\S+) \(step (\d+)\)", attempt_logs)
    assert resumed and all(Path(path).parent == nodes[0] and int(step) in (4, 8) for path, step in resumed), resumed
    assert "starting fresh" not in attempt_logs.split("resumed from")[-1]
    assert events_named(nodes[0], "restarted") and events_named(nodes[1], "restarted")


@pytest.mark.slow
def test_a_stopped_rank_on_node_0_is_a_hang_on_both_nodes_and_both_restart(tmp_path, reference_checkpoint):
    nodes, procs = start_two_nodes(tmp_path, "mn-stop", hang_timeout=10)
    try:
        beat = wait_for(lambda: training_past(nodes[0], 5), 240, "node 0 past step 5")
        os.kill(beat["pid"], signal.SIGSTOP)
    finally:
        codes = wait_both(procs, nodes)
    assert codes == [SupervisorExit.FINISHED, SupervisorExit.FINISHED], "\n".join(console_text(d)[-2500:] for d in nodes)
    # Node 0 saw its rank silent; node 1's rank, waiting in a collective for it, went silent too.
    assert events_named(nodes[0], "hung") and events_named(nodes[0], "restarted")
    assert events_named(nodes[1], "restarted")
    assert_same_weights(nodes[0] / FINAL_CHECKPOINT, reference_checkpoint)
    # Both supervisors name the run's final checkpoint, although only node 0's directory holds it.
    for log_dir in nodes:
        assert FINAL_CHECKPOINT in events_named(log_dir, "finished")[-1]["message"]


@pytest.mark.slow
def test_a_killed_supervisor_on_node_1_stops_the_run_with_a_save_and_a_reason_then_it_resumes(tmp_path, reference_checkpoint):
    # Steps of at least 0.5 s (a sleep, no change to the math): the workers look for their supervisor
    # once a second, and the stop must come before the last of the 12 steps.
    nodes, procs = start_two_nodes(tmp_path, "mn-sup", env={"GPT2SUP_INJECT_SLOW_RANK": "1:0.5"})
    try:
        wait_for(lambda: training_past(nodes[1], 5), 240, "node 1 past step 5")
        procs[1].kill()  # kill -9 of node 1's supervisor: its workers must not train unwatched
    finally:
        codes = wait_both(procs, nodes)
    assert codes[0] == SupervisorExit.STOPPED, console_text(nodes[0])[-2500:]
    stopped = events_named(nodes[0], "stopped")[-1]["message"]
    assert f"supervisor {procs[1].pid} on {socket.gethostname()} is gone" in stopped, stopped
    assert "saved model_" in stopped
    # Both supervisors again: the run resumes from that save and ends as if nothing happened.
    nodes, procs = start_two_nodes(tmp_path, "mn-sup-2")
    codes = wait_both(procs, nodes)
    assert codes == [SupervisorExit.FINISHED, SupervisorExit.FINISHED], "\n".join(console_text(d)[-2500:] for d in nodes)
    assert_same_weights(nodes[0] / FINAL_CHECKPOINT, reference_checkpoint)


# --- one run directory shared by both nodes ---------------------------------------------------------
def start_two_nodes_sharing(tmp_path: Path, run_id: str, node_1_args: tuple[str, ...] = (),
                            env: dict[str, str] | None = None, hang_timeout: float = 30
                            ) -> tuple[Path, int, list[subprocess.Popen]]:
    """Both supervisors on ``tmp_path/run``; consoles in ``tmp_path/node{R}.console``."""
    run, port = tmp_path / "run", free_port()
    run.mkdir()
    procs = [start_node(run, 0, port, run_id, hang_timeout, env=env, console_path=tmp_path / "node0.console")]
    time.sleep(2)
    procs.append(start_node(run, 1, port, run_id, env=env, console_path=tmp_path / "node1.console",
                            extra=node_1_args))
    return run, port, procs


def node_beat(run: Path, supervisor: subprocess.Popen, step: int) -> dict | None:
    """The heartbeat of the rank ``supervisor`` launched, once it trains past ``step``."""
    try:
        ours = {p.pid for p in psutil.Process(supervisor.pid).children(recursive=True)}
    except psutil.Error:
        return None
    for path in (run / "heartbeat").glob("rank*.json"):
        try:
            beat = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if beat.get("pid") in ours and beat.get("step", -1) >= step and beat.get("phase") == "train":
            return beat
    return None


def consoles(tmp_path: Path) -> str:
    return "\n".join(console_text(tmp_path / f"node{n}")[-2500:] for n in (0, 1))


@pytest.mark.slow
def test_a_shared_run_directory_one_lock_and_state_per_node_status_of_both_and_a_killed_rank_on_node_1(
        tmp_path, reference_checkpoint):
    # Steps of 0.5 s (a sleep, no change to the math): the refusal and status checks run mid-training.
    run, port, procs = start_two_nodes_sharing(tmp_path, "mn-shared", env={"GPT2SUP_INJECT_SLOW_RANK": "1:0.5"},
                                               hang_timeout=20)
    try:
        beat = wait_for(lambda: node_beat(run, procs[1], 2), 240, "node 1's rank past step 2")
        node_0s = wait_for(lambda: node_beat(run, procs[0], 2), 60, "node 0's rank past step 2")
        # One lock per node: a second supervisor for node 1 is refused, node 0's is untouched.
        second = subprocess.run(node_argv(run, 1, port, "mn-shared"), check=False, cwd=REPO_ROOT, env=child_env(),
                                capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert second.returncode == SupervisorExit.REFUSED, second.stdout + second.stderr
        assert "another supervisor for node 1" in second.stderr, second.stderr
        assert (run / "supervisor.lock").is_file() and (run / "supervisor.node1.lock").is_file()
        # Status on the shared directory: both nodes' supervisors and both ranks.
        shown = subprocess.run(gpt2sup_argv("status", "--log-dir", str(run)), check=False, cwd=REPO_ROOT,
                               env=child_env(),
                               capture_output=True, text=True, timeout=60)
        assert "node 1 supervisor:" in shown.stdout, shown.stdout
        assert "rank 0" in shown.stdout and "rank 1" in shown.stdout, shown.stdout
        # Node 0's rank stopped first, so node 0's torchrun, which hosts the c10d store, outlives node 1's
        # failed torchrun, which closes the rendezvous id in that store as it exits: node 1's relaunches
        # find it closed until node 0's supervisor has killed its hung attempt.
        os.kill(node_0s["pid"], signal.SIGSTOP)
        time.sleep(0.5)
        os.kill(beat["pid"], signal.SIGKILL)
    finally:
        codes = wait_both(procs, [tmp_path / "node0", tmp_path / "node1"])
    assert codes == [SupervisorExit.FINISHED, SupervisorExit.FINISHED], consoles(tmp_path)
    assert_same_weights(run / FINAL_CHECKPOINT, reference_checkpoint)
    # Per-node files next to each other: state, attempt logs; one events.jsonl naming the node.
    assert json.loads((run / "supervisor.node1.json").read_text())["state"] == "finished"
    assert json.loads((run / "supervisor.json").read_text())["state"] == "finished"
    assert list((run / "attempts").glob("*.log")) and list((run / "attempts" / "node1").glob("*.log"))
    restarted = {e.get("node") for e in events_named(run, "restarted")}
    assert restarted == {0, 1}, restarted
    assert [e.get("node") for e in events_named(run, "hung")] == [0]
    # The closed rendezvous cost node 1 launches, not restarts: its one restart is the SIGKILL's.
    assert [e for e in events_named(run, "warning") if e.get("rendezvous_closed") and e.get("node") == 1]
    assert json.loads((run / "supervisor.node1.json").read_text())["restarts_used"] == 1
    # Node 1's supervisor judged no checkpoint: node 0 alone validates and quarantines.
    checked = {e.get("node") for e in events_named(run, "checkpoint_valid")}
    assert 1 not in checked, checked


def nth_launch(run: Path, node: int, count: int) -> dict | None:
    launches = [e for e in events_named(run, "launched") if e.get("node") == node]
    return launches[count - 1] if len(launches) >= count else None


@pytest.mark.slow
def test_a_node_joining_late_meets_node_0s_third_attempt_and_when_it_gives_up_node_0_ends_with_its_reason(tmp_path):
    run, port = tmp_path / "run", free_port()
    run.mkdir()
    procs = [start_node(run, 0, port, "mn-give-up", console_path=tmp_path / "node0.console")]
    try:
        # Node 0 alone, waiting in the rendezvous: its torchrun killed twice, so it is on attempt 3
        # when node 1 (started by hand, attempt 1) comes. The rendezvous id is the same for both.
        for count in (1, 2):
            os.kill(wait_for(lambda c=count: nth_launch(run, 0, c), 120, f"node 0's launch {count}")["pid"],
                    signal.SIGKILL)
        wait_for(lambda: nth_launch(run, 0, 3), 120, "node 0's third launch")
        procs.append(start_node(run, 1, port, "mn-give-up", console_path=tmp_path / "node1.console",
                                extra=("--max-restarts", "0")))
        beat = wait_for(lambda: node_beat(run, procs[1], 5), 240, "node 1's rank past step 5")
        os.kill(beat["pid"], signal.SIGKILL)  # node 1 has no restart left: it gives up
    finally:
        codes = wait_both(procs, [tmp_path / "node0", tmp_path / "node1"])
    assert codes == [SupervisorExit.GAVE_UP, SupervisorExit.GAVE_UP], consoles(tmp_path)
    assert nth_launch(run, 1, 1)["attempt"] == 1 and nth_launch(run, 0, 3)["attempt"] == 3
    ended = [e for e in events_named(run, "gave_up") if e.get("node") == 0]
    assert ended and ended[-1]["message"].startswith("node 1 gave up: restart budget exhausted"), ended
    marker = json.loads((run / "give_up.json").read_text())
    assert marker["node"] == 1 and marker["exit_code"] == SupervisorExit.GAVE_UP


# --- one directory per node: an ending agreed through node 0's coordination store -----------------------
def start_two_nodes_apart(tmp_path: Path, run_id: str, node_args: tuple[tuple[str, ...], tuple[str, ...]]
                          ) -> tuple[list[Path], list[subprocess.Popen]]:
    """Two supervisors, each its own run directory: nothing shared but the rendezvous and node 0's
    coordination store (rendezvous port + 1). Steps of 0.5 s (a sleep, no change to the math), so
    the run is mid-training when a rank is killed."""
    nodes, port = [tmp_path / "node0", tmp_path / "node1"], free_port()
    env = {"GPT2SUP_INJECT_SLOW_RANK": "1:0.5"}
    procs = [start_node(nodes[0], 0, port, run_id, env=env, extra=node_args[0])]
    time.sleep(2)
    procs.append(start_node(nodes[1], 1, port, run_id, env=env, extra=node_args[1]))
    return nodes, procs


def ended_at(log_dir: Path, state: str) -> float:
    return events_named(log_dir, state)[-1]["time"]


@pytest.mark.slow
def test_apart_node_1_giving_up_ends_node_0_through_the_coordination_store(tmp_path):
    nodes, procs = start_two_nodes_apart(tmp_path, "mn-apart-1", ((), ("--max-restarts", "0")))
    try:
        beat = wait_for(lambda: training_past(nodes[1], 2), 240, "node 1's rank past step 2")
        os.kill(beat["pid"], signal.SIGKILL)  # node 1 has no restart left: it gives up
    finally:
        codes = wait_both(procs, nodes)
    detail = "\n".join(console_text(d)[-2500:] for d in nodes)
    assert codes == [SupervisorExit.GAVE_UP, SupervisorExit.GAVE_UP], detail
    message = events_named(nodes[0], "gave_up")[-1]["message"]
    assert message.startswith("node 1 gave up: restart budget exhausted"), message
    assert message.endswith("-- node 0 ends too"), message
    # Nothing shared: node 0 learnt it from the store, not from a give_up.json of its own directory.
    assert not (nodes[0] / "give_up.json").exists()
    assert json.loads((nodes[1] / "give_up.json").read_text())["node"] == 1
    # Well before node 0's own budget (3 restarts) or a rendezvous timeout (180 s).
    assert ended_at(nodes[0], "gave_up") - ended_at(nodes[1], "gave_up") < 20, detail


@pytest.mark.slow
def test_apart_node_0_giving_up_ends_node_1_and_node_0_waits_until_node_1_has_read_it(tmp_path):
    nodes, procs = start_two_nodes_apart(tmp_path, "mn-apart-0", (("--max-restarts", "0"), ()))
    try:
        beat = wait_for(lambda: training_past(nodes[0], 2), 240, "node 0's rank past step 2")
        os.kill(beat["pid"], signal.SIGKILL)
    finally:
        codes = wait_both(procs, nodes)
    detail = "\n".join(console_text(d)[-2500:] for d in nodes)
    assert codes == [SupervisorExit.GAVE_UP, SupervisorExit.GAVE_UP], detail
    message = events_named(nodes[1], "gave_up")[-1]["message"]
    assert message.startswith("node 0 gave up: restart budget exhausted"), message
    assert message.endswith("-- node 1 ends too"), message
    assert not (nodes[1] / "give_up.json").exists()
    assert ended_at(nodes[1], "gave_up") - ended_at(nodes[0], "gave_up") < 20, detail
    assert not [e for e in events_named(nodes[1], "warning") if "coordination store" in e["message"]], detail
