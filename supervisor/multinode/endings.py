"""Multi-node: one node's ending is every node's.

A node that ends the run (gave up, refused, stopped) records it in ``give_up.json`` and node 0's
coordination store; every other node's supervisor follows it. A record already present when this
supervisor started ended an earlier run and is not followed (``policy.peer_ending``: no clocks
compared). Also here: a launch that found the rendezvous still closed by the previous attempt,
relaunched without counting a restart.
"""
from __future__ import annotations

import socket
import time

import psutil

from shared.atomic_io import read_json, write_json_atomic
from shared.exit_codes import SupervisorExit
from shared.run_dir import RunDir
from shared.vocabulary import EventKind, SupervisorStateName
from supervisor import messages, policy
from supervisor.attempts.attempt import AttemptResult
from supervisor.journal import Journal
from supervisor.multinode.node_coordination import NodeCoordination
from supervisor.run_config import RunConfig
from supervisor.stop_signals import StopSignals

# Between launches that found the rendezvous closed (see NodeEndings.stale_rendezvous).
CLOSED_RENDEZVOUS_WAIT_S = 2.0


class NodeEndings:
    def __init__(self, config: RunConfig, run_dir: RunDir, journal: Journal, stops: StopSignals,
                 coordination: NodeCoordination | None) -> None:
        self.config = config
        self.node = config.node
        self.run_dir = run_dir
        self.journal = journal
        self.stops = stops
        self.coordination = coordination
        self.started_at = time.time()
        # The ending another node recorded before this supervisor started ended an earlier run;
        # one that differs from it was written since (no clocks compared).
        self._before = [read_json(run_dir.give_up_marker)]
        self.following: policy.PeerEnding | None = None  # the ending this node follows, once it does
        self._seen: policy.PeerEnding | None = None  # the first ending another node recorded
        self._closed_since: float | None = None  # first of the current run of closed-rendezvous launches

    def record(self, state: SupervisorStateName, line: str, code: SupervisorExit) -> None:
        """``give_up.json`` and node 0's coordination store: the other nodes' supervisors, sharing this
        directory or not, end the same way."""
        record = {"node": self.node, "state": str(state), "exit_code": int(code), "reason": line,
                  "time": time.time(), "attempt": self.journal.attempt, "hostname": socket.gethostname(),
                  "pid": psutil.Process().pid}
        try:
            write_json_atomic(self.run_dir.give_up_marker, record, create_parent=False)
        except OSError as exc:
            self.journal.event(EventKind.WARNING, messages.ending_not_recorded(self.run_dir.give_up_marker.name,
                                                                               str(exc.strerror or exc)))
        if self.coordination is not None and not self.coordination.publish(record):
            self.journal.event(EventKind.WARNING, messages.store_unreachable(self.coordination.where()))

    def peer(self) -> policy.PeerEnding | None:
        """Another node's ending, from ``give_up.json`` or the coordination store; once seen, kept."""
        if self.node is None or self._seen is not None:
            return self._seen
        self._seen = policy.peer_ending(read_json(self.run_dir.give_up_marker), self.node, self._before)
        if self._seen is None and self.coordination is not None:
            self._seen = policy.peer_ending(self.coordination.ending(), self.node, started_at=self.started_at)
        if self._seen is not None:
            if self.coordination is not None:
                self.coordination.acknowledge()  # node 0 keeps its store up until every node has read it
            return self._seen
        return None

    def peer_line(self) -> str | None:
        peer = self.peer()
        return peer.describe() if peer is not None else None

    def stale_rendezvous(self, result: AttemptResult) -> bool:
        """torchrun found the rendezvous closed: relaunch after a short wait, not counted as a restart.

        Every torchrun whose workers failed closes the rendezvous of its ``--rdzv-id`` in the c10d
        store as it exits (torch/distributed/launcher/api.py: ``rdzv_handler.shutdown()``), and
        the store lives in whichever torchrun bound the endpoint's port. While a torchrun of the
        previous attempt still hosts it (another node's, its ranks not yet failed or killed), a
        new join under the same id fails at once with RendezvousClosedError. Once that torchrun
        exits, the next one hosts a new store and the rendezvous forms in a fresh round. That
        takes at most the other node's hang timeout; past ``--startup-timeout`` of such launches
        in a row it is a failure like any other.
        """
        if not result.rendezvous_closed or self.config.multi_node is None:
            self._closed_since = None
            return False
        now = time.monotonic()
        self._closed_since = self._closed_since if self._closed_since is not None else now
        if now - self._closed_since > self.config.timeouts.startup_timeout:
            return False
        wait = CLOSED_RENDEZVOUS_WAIT_S
        self.journal.event(EventKind.WARNING, messages.rendezvous_still_closed(self.config.multi_node.rdzv_id, wait),
                           rendezvous_closed=True, delay_s=wait)
        deadline = now + wait
        while time.monotonic() < deadline and not self.stops.count and self.peer() is None:
            self.stops.sleep(min(deadline - time.monotonic(), self.config.monitor_interval))
        return True
