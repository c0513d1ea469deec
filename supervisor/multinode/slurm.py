"""SLURM: fill ``gpt2sup run``'s multi-node options from the ``SLURM_*`` variables of an ``srun`` task.

``srun gpt2sup run ...`` starts one supervisor per node; each learns how many nodes there are,
which one it is, and where the rendezvous is from the variables SLURM sets, so one batch script
serves any allocation. Pure: the caller passes the environment and what the user gave, and gets
the merged values (or a ``SlurmError`` with a one-line reason) back.

Which variables, and why in this order (a step may run on a subset of the job's nodes, and
``SLURM_NODEID`` counts within the step):

- node count: ``SLURM_STEP_NUM_NODES``, ``SLURM_NNODES``, ``SLURM_JOB_NUM_NODES``
- node list (its first host is node 0, the rendezvous host): ``SLURM_STEP_NODELIST``,
  ``SLURM_JOB_NODELIST``, ``SLURM_NODELIST``
- node rank: ``SLURM_NODEID``; run id: ``SLURM_JOB_ID``
- port: ``GPT2SUP_RDZV_PORT``, else 29400 (torchrun's own default for ``--rdzv-endpoint``)

Only a job on more than one node is filled in; a one-node job stays ``--standalone``. A value the
user gave on the command line is never replaced.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace

from supervisor.attempts.torchrun import RDZV_DEFAULT_PORT

DEFAULT_PORT = RDZV_DEFAULT_PORT
PORT_ENV = "GPT2SUP_RDZV_PORT"
NNODES_VARS = ("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
NODELIST_VARS = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
NODE_RANK_VAR = "SLURM_NODEID"
JOB_ID_VAR = "SLURM_JOB_ID"

_RANGE_RE = re.compile(r"^(\d+)(?:-(\d+))?$")
_PLAIN_RE = re.compile(r"^[A-Za-z0-9._-]+$")


class SlurmError(ValueError):
    """A SLURM variable gpt2sup needs is missing or malformed; the text is one line for the user."""


@dataclass(frozen=True)
class Rendezvous:
    """The multi-node options, each ``None`` when not known (not given, not filled)."""

    nnodes: str | None = None
    node_rank: int | None = None
    endpoint: str | None = None
    rdzv_id: str | None = None


@dataclass(frozen=True)
class SlurmFill:
    """What SLURM supplied: the merged options and the names of those it filled."""

    rendezvous: Rendezvous
    filled: tuple[str, ...]

    def describe(self) -> str:
        """The one line ``gpt2sup run`` prints, so nobody wonders where a value came from."""
        r = self.rendezvous
        shown = {"nnodes": f"--nnodes {r.nnodes}", "node_rank": f"--node-rank {r.node_rank}",
                 "endpoint": f"--rdzv-endpoint {r.endpoint}", "rdzv_id": f"--rdzv-id {r.rdzv_id}"}
        return "from SLURM: " + " ".join(shown[name] for name in self.filled)


# --- host lists ----------------------------------------------------------------------------------------
def split_hostlist(text: str) -> list[str]:
    """``a[1-2],b,c[3,5]`` -> ``["a[1-2]", "b", "c[3,5]"]``: commas outside brackets separate."""
    parts: list[str] = []
    depth, start = 0, 0
    for index, char in enumerate(text):
        if char == "[":
            depth += 1
            if depth > 1:
                raise SlurmError(f"nested '[' in host list {text!r}")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise SlurmError(f"unbalanced ']' in host list {text!r}")
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    if depth != 0:
        raise SlurmError(f"unbalanced '[' in host list {text!r}")
    parts.append(text[start:])
    if any(not part.strip() for part in parts):
        raise SlurmError(f"empty host name in host list {text!r}")
    return [part.strip() for part in parts]


Choices = Callable[[], Iterator[str]]


def _bracket_choices(inside: str, whole: str) -> Choices:
    """``01-03,07`` -> 01, 02, 03, 07: checked at once, produced lazily (``node[0-9999999]`` is cheap)."""
    bounds: list[tuple[str, str | None]] = []
    for item in inside.split(","):
        match = _RANGE_RE.match(item.strip())
        if match is None:
            raise SlurmError(f"bad range {item!r} in host list {whole!r}")
        low, high = match.group(1), match.group(2)
        if high is not None and int(high) < int(low):
            raise SlurmError(f"range {item!r} runs backwards in host list {whole!r}")
        bounds.append((low, high))

    def choices() -> Iterator[str]:
        for low, high in bounds:
            if high is None:
                yield low
            else:  # the width is the low bound's: [08-10] -> 08 09 10, [8-10] -> 8 9 10
                yield from (str(n).zfill(len(low)) for n in range(int(low), int(high) + 1))

    return choices


def _combine(pieces: list[Choices]) -> Iterator[str]:
    if not pieces:
        yield ""
        return
    for head in pieces[0]():
        for tail in _combine(pieces[1:]):
            yield head + tail


def expand_host(pattern: str, whole: str | None = None) -> Iterator[str]:
    """Every host one pattern names, in SLURM's order: ``rack[1-2]-n[01-02]`` -> rack1-n01, rack1-n02, ...

    The pattern is checked when this is called; the hosts come lazily.
    """
    whole = pattern if whole is None else whole
    pieces: list[Choices] = []
    rest = pattern
    while rest:
        literal, bracket, tail = rest.partition("[")
        if literal:
            if not _PLAIN_RE.match(literal):
                raise SlurmError(f"bad host name {literal!r} in host list {whole!r}")
            pieces.append(lambda text=literal: iter([text]))
        if not bracket:
            break
        inside, closed, rest = tail.partition("]")
        if not closed or not inside.strip():
            raise SlurmError(f"empty or unclosed brackets in host list {whole!r}")
        pieces.append(_bracket_choices(inside, whole))
    if not pieces:
        raise SlurmError(f"empty host name in host list {whole!r}")
    return _combine(pieces)


def first_host(text: str) -> str:
    """The first host of a SLURM host list: SLURM's node 0, where the rendezvous runs.

    Every pattern is checked, not only the first, so a mangled variable is reported rather than
    half used.
    """
    hosts = [expand_host(pattern, text) for pattern in split_hostlist(text)]  # checks every pattern
    return next(hosts[0])


# --- the variables -------------------------------------------------------------------------------------
def _first_set(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return name, value
    return None


def _whole_number(name: str, value: str) -> int:
    if not value.isdigit():
        raise SlurmError(f"{name}={value!r} is not a whole number")
    return int(value)


def slurm_node_count(env: Mapping[str, str]) -> int | None:
    """The step's node count, or ``None`` when not running under SLURM."""
    found = _first_set(env, NNODES_VARS)
    if found is None:
        return None
    count = _whole_number(*found)
    if count < 1:
        raise SlurmError(f"{found[0]}={found[1]!r} is not a node count")
    return count


def rendezvous_port(env: Mapping[str, str]) -> int:
    value = env.get(PORT_ENV, "").strip()
    if not value:
        return DEFAULT_PORT
    port = _whole_number(PORT_ENV, value)
    if not 1 <= port <= 65535:
        raise SlurmError(f"{PORT_ENV}={value!r} is not a TCP port (1-65535)")
    return port


def fill_from_slurm(given: Rendezvous, env: Mapping[str, str]) -> SlurmFill | None:
    """The user's options with the missing ones taken from SLURM, or ``None`` when SLURM has
    nothing to say (not under SLURM, a one-node job, or every value given).

    Only the variables a missing value needs are read, so a variable the user overrides on the
    command line may be malformed without harm.
    """
    count = slurm_node_count(env)
    if count is None or count <= 1:
        return None
    merged, filled = given, []
    if given.nnodes is None:
        merged, filled = replace(merged, nnodes=str(count)), [*filled, "nnodes"]
    if given.node_rank is None:
        found = _first_set(env, (NODE_RANK_VAR,))
        if found is None:
            raise SlurmError(f"{NODE_RANK_VAR} is not set; pass --node-rank (run one task per node with srun)")
        rank = _whole_number(*found)
        if rank >= count:
            raise SlurmError(f"{NODE_RANK_VAR}={rank} is not below the node count {count}")
        merged, filled = replace(merged, node_rank=rank), [*filled, "node_rank"]
    if given.endpoint is None:
        found = _first_set(env, NODELIST_VARS)
        if found is None:
            raise SlurmError(f"none of {', '.join(NODELIST_VARS)} is set; pass --rdzv-endpoint HOST:PORT")
        try:
            host = first_host(found[1])
        except SlurmError as exc:
            raise SlurmError(f"{found[0]}: {exc}") from None
        merged, filled = replace(merged, endpoint=f"{host}:{rendezvous_port(env)}"), [*filled, "endpoint"]
    if given.rdzv_id is None:
        found = _first_set(env, (JOB_ID_VAR,))
        if found is not None:
            merged, filled = replace(merged, rdzv_id=found[1]), [*filled, "rdzv_id"]
    if not filled:
        return None
    return SlurmFill(merged, tuple(filled))
