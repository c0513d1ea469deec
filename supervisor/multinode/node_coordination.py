"""One node's ending is every node's, with one run directory per node: a torch ``TCPStore``.

With a shared run directory the nodes' supervisors agree through ``give_up.json``; with one
directory per node nothing is shared, so node 0's supervisor hosts a ``torch.distributed.TCPStore``
(torch's own key-value store, the one c10d's rendezvous uses: no protocol of ours) for the run's
lifetime, on the rendezvous host at ``--coordination-port`` (default: the rendezvous port + 1).
A node that ends the run sets one key, ``gpt2sup/<rdzv_id>/ended``, to the same JSON it writes
to ``give_up.json``; every node checks that key wherever it checks the file. Readers ``add`` to
``gpt2sup/<rdzv_id>/ended_seen``, so node 0, when the run ends, keeps the store up only until
every other node has read the ending (or a short grace has passed).

This module's one job is that store. It imports ``torch.distributed`` (seconds of CPU) lazily,
in a background thread, and only for multi-node runs: a one-node supervisor never loads torch.
Nothing here ever blocks or fails the run: node R >= 1 connects in the background (quietly
retrying while node 0 is not up), and a store that cannot be bound or is lost (node 0's
supervisor gone) is one warning, after which the node behaves as without it (its workers notice
a lost node through their collectives and heartbeats).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from supervisor.attempts.torchrun import RDZV_DEFAULT_PORT

# A client's connect and each store call give up after this long (a reachable store answers in
# milliseconds); node R >= 1 retries the connection this often while node 0's store is not up.
CLIENT_TIMEOUT_S = 2.0
CONNECT_RETRY_S = 2.0
# A node that ends the run before its store is open waits this long for it.
PUBLISH_WAIT_S = 10.0
# Node 0, once the run has ended, waits for every other node to read the ending, at most
# GRACE_MONITOR_INTERVALS x --monitor-interval + GRACE_EXTRA_S (the others poll every interval).
GRACE_MONITOR_INTERVALS = 2
GRACE_EXTRA_S = 5.0


def coordination_address(rdzv_endpoint: str, port: int | None) -> tuple[str, int] | None:
    """``(host, port)`` of node 0's store: the rendezvous host, ``port`` or the rendezvous port + 1.

    ``port`` 0 turns the store off (None); an endpoint without a port means torchrun's ``RDZV_DEFAULT_PORT``.
    """
    if port == 0:
        return None
    host, sep, rdzv_port = rdzv_endpoint.rpartition(":")
    if not sep or "]" in rdzv_port or (host.count(":") and not host.startswith("[")):
        host, rdzv_port = rdzv_endpoint, ""  # no port, or a bare IPv6 address
    host = host.strip("[]") or "127.0.0.1"
    if port is None:
        try:
            port = (int(rdzv_port) if rdzv_port else RDZV_DEFAULT_PORT) + 1
        except ValueError:
            return None
    return (host, port) if 0 < port < 65536 else None


def max_nodes(nnodes: str) -> int:
    """torchrun's ``--nnodes``: ``N`` or ``MIN:MAX``; the most nodes the run can have (1 if unreadable)."""
    try:
        return int(nnodes.rpartition(":")[2])
    except ValueError:
        return 1


class NodeCoordination:
    """Node 0 hosts the store, node R >= 1 is a client of it; every call is from the main thread
    except the background start-up, which only hands over the finished store object."""

    def __init__(self, rdzv_id: str, address: tuple[str, int], node: int, nnodes: int,
                 grace_s: float, warn: Callable[[str], None]) -> None:
        self.address = address
        self.node = node
        self.others = max(nnodes - 1, 0)
        self.grace_s = grace_s
        self.key = f"gpt2sup/{rdzv_id}/ended"
        self.seen_key = f"gpt2sup/{rdzv_id}/ended_seen"
        self._warn = warn
        self._store: Any = None
        self._ready: Any = None  # set by the background thread, taken by the main thread
        self._notes: list[str] = []  # the background thread's warnings, emitted by the main thread
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._acknowledged = False
        self._lost_once = False

    @property
    def is_host(self) -> bool:
        return self.node == 0

    def where(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    # -- start-up, in the background ------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._open, name="gpt2sup-node-coordination", daemon=True)
            self._thread.start()

    def _open(self) -> None:
        # c10d logs a C++ stack trace on the console for a lost connection (node 0's supervisor
        # exiting at the end of the run); the errors are ours to report. Its log level is read once,
        # when torch loads, so it is set for the import only, with putenv: os.environ, which every
        # child's environment is built from, never sees it. A level the user set is left alone.
        quiet = "TORCH_CPP_LOG_LEVEL" not in os.environ and "torch" not in sys.modules
        if quiet:
            os.putenv("TORCH_CPP_LOG_LEVEL", "ERROR")
        try:
            import torch.distributed as dist  # seconds of CPU: only here, only for a multi-node run
        except Exception as exc:  # noqa: BLE001 - without torch the node behaves as without the store
            self._note(f"cannot agree endings through a store (import torch.distributed: {exc})")
            return
        finally:
            if quiet:
                os.unsetenv("TORCH_CPP_LOG_LEVEL")
        host, port = self.address
        timeout = timedelta(seconds=CLIENT_TIMEOUT_S)
        if self.is_host:
            try:
                store = dist.TCPStore(host, port, is_master=True, wait_for_workers=False, timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - e.g. the port is taken
                self._note(f"could not host the nodes' coordination store on port {port} ({_first_line(exc)}); "
                           "another node's ending reaches this node only through a shared run directory")
                return
            self._hand_over(store)
            return
        while not self._closed:
            # A plain connect first: torch's client logs a stack trace for every refused try.
            store = _connect(dist, host, port, timeout) if _reachable(host, port) else None
            if store is not None:
                self._hand_over(store)
                return
            time.sleep(CONNECT_RETRY_S)

    def _hand_over(self, store: Any) -> None:
        with self._lock:
            self._ready = store

    def _note(self, line: str) -> None:
        with self._lock:
            self._notes.append(line)

    def _current(self) -> Any:
        with self._lock:
            notes, self._notes = self._notes, []
            if self._ready is not None:
                self._store, self._ready = self._ready, None
        for line in notes:
            self._warn(line)
        return self._store

    def _lost(self, exc: BaseException) -> None:
        """The store went away (node 0's supervisor gone): one warning, then reconnect quietly."""
        self._store = None
        if not self._lost_once:
            self._lost_once = True
            self._warn(f"lost the nodes' coordination store at {self.where()} ({_first_line(exc)}): node 0's "
                       "supervisor has exited or is gone; going on without it, reconnecting in the background")
        if not self.is_host and not self._closed:
            self.start()

    # -- the ending ------------------------------------------------------------------------------
    def publish(self, record: dict[str, Any]) -> bool:
        """This node ended the run: tell the others. False when the store is not reachable.

        A store still being opened (torch importing, node 0 not up yet) is waited for, at most
        ``PUBLISH_WAIT_S``: the run is over for this node, and the others depend on hearing it."""
        store = self._current()
        deadline = time.monotonic() + PUBLISH_WAIT_S
        while store is None and self._thread is not None and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
            store = self._current()
        if store is None:
            return False
        try:
            store.set(self.key, json.dumps(record))
            if not self.is_host:
                store.add(self.seen_key, 1)  # the node that ended knows it
        except Exception as exc:  # noqa: BLE001
            self._lost(exc)
            return False
        self._acknowledged = True
        return True

    def ending(self) -> object:
        """The ending recorded in the store (another process's JSON, unchecked), or None."""
        store = self._current()
        if store is None:
            return None
        try:
            if not store.check([self.key]):
                return None
            raw = store.get(self.key)
        except Exception as exc:  # noqa: BLE001
            self._lost(exc)
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def acknowledge(self) -> None:
        """This node has read another node's ending (node 0 counts the readers before closing)."""
        store = self._current()
        if store is None or self.is_host or self._acknowledged:
            return
        try:
            store.add(self.seen_key, 1)
            self._acknowledged = True
        except Exception as exc:  # noqa: BLE001
            self._lost(exc)

    def close(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Node 0: when an ending is in the store, keep it up until every other node has read it,
        at most ``grace_s`` (``should_stop`` cuts the wait short). Then drop the store."""
        self._closed = True
        store = self._current()
        self._store = None
        if store is None or not self.is_host:
            return
        try:
            if not store.check([self.key]):
                return
            deadline = time.monotonic() + self.grace_s
            while time.monotonic() < deadline and not should_stop():
                if store.add(self.seen_key, 0) >= self.others:
                    return
                time.sleep(0.1)
        except Exception:  # noqa: BLE001 - our own store: nothing left to tell anyone
            return


def for_node(multi_node: Any, node: int | None, monitor_interval: float,
             warn: Callable[[str], None]) -> NodeCoordination | None:
    """The coordination for this node of a multi-node run, or None (one node, no rank, turned off)."""
    if multi_node is None or node is None or max_nodes(multi_node.nnodes) < 2:
        return None
    address = coordination_address(multi_node.rdzv_endpoint, getattr(multi_node, "coordination_port", None))
    if address is None:
        return None
    grace = GRACE_MONITOR_INTERVALS * monitor_interval + GRACE_EXTRA_S
    return NodeCoordination(multi_node.rdzv_id, address, node, max_nodes(multi_node.nnodes), grace, warn)


def _connect(dist: Any, host: str, port: int, timeout: timedelta) -> Any:
    try:
        return dist.TCPStore(host, port, is_master=False, timeout=timeout)
    except Exception:  # noqa: BLE001 - not up yet after all: the caller tries again
        return None


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=CLIENT_TIMEOUT_S):
            return True
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
