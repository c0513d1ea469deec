"""Multi-node endings: the ending another node's supervisor recorded, which this one follows.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from supervisor.policy.measures import is_duration


@dataclass(frozen=True)
class PeerEnding:
    """Another node's supervisor ended the run (gave up, refused, stopped): follow it."""

    node: int
    state: str  # a SupervisorStateName: gave_up, refused, stopped
    exit_code: int
    reason: str

    def describe(self) -> str:
        verb = {"gave_up": "gave up", "refused": "refused to go on", "stopped": "stopped"}.get(self.state, self.state)
        return f"node {self.node} {verb}: {self.reason.removeprefix(f'{verb}: ')}"


def peer_ending(marker: object, own_node: int, before: Sequence[object] = (),
                started_at: float | None = None) -> PeerEnding | None:
    """The ending another node recorded (``give_up.json`` or node 0's store) that this supervisor
    must follow.

    A record already there when this supervisor started (one of ``before``) ended an earlier run of
    this directory, which a new ``gpt2sup run`` on every node resumes; any other was written since.
    That is judged without comparing the record's ``time`` with this node's clock: node clocks
    differ (a node an hour ahead would make an old record look new and end a fresh run at once).
    Only node 0's store, which this supervisor cannot read before it connects, still falls back on
    ``started_at`` (the record's time against this node's start). The record is another
    process's file: anything malformed is ignored.
    """
    if not isinstance(marker, dict) or any(marker == old for old in before):
        return None
    node, code, when = marker.get("node"), marker.get("exit_code"), marker.get("time")
    if not isinstance(node, int) or isinstance(node, bool) or node == own_node:
        return None
    if not isinstance(code, int) or isinstance(code, bool):
        return None
    if started_at is not None and (not is_duration(when) or when < started_at):
        return None
    return PeerEnding(node, str(marker.get("state") or "gave_up"), code, str(marker.get("reason") or "no reason given"))


