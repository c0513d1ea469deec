"""Is this checkpoint file sound? Cheap checks first, the load-probe child last.

Used by ``gpt2sup verify`` and by the supervisor before every restart (docs/checkpoints.md, docs/architecture.md), so the two
can never disagree. The checks run in order and stop at the first failure:

1. ``file``      exists (a symlink is followed; a dangling one is reported), is a regular file,
                 can be opened for reading. FIFOs and devices are never opened (they could block).
2. ``size``      not empty.
3. ``zip-crc``   torch.save writes a zip archive; its central directory must parse, it must hold
                 ``<archive>/data.pkl``, and every member's bytes must match the CRC-32 stored
                 for it (``shared.checkpoint_crc``). One sequential read. When the directory does
                 not parse and the file is far smaller than its siblings, the failure says so
                 ("probably cut short"). Siblings are compared by size only when they share the
                 file's tensor layout (the member sizes listed in the zip directory, read without
                 loading anything): a smaller, valid checkpoint of another model is not "short".
4. ``load-probe`` ``python -m worker.checkpoint_probe`` in a child process: safe load, keys,
                 format, step vs. name, config, shapes, size floor, then the worker's own restore
                 (model, optimizer, loader state, every RNG); with ``deep`` also finite tensors
                 and optimizer moment shapes. With ``generic`` (a checkpoint in a format of its own,
                 e.g. a user script's: :func:`probe_command`), only the safe load, step vs. name,
                 and with ``deep`` finite ``model`` tensors.

Verdicts (``shared.vocabulary.Verdict``): VALID; UNSUPPORTED for a ``format_version`` newer than
this install reads (a newer gpt2sup wrote it: not damage, never quarantined, nothing else judged);
INVALID only on positive evidence about the file
(CRC mismatch, truncation, unpicklable, missing keys, wrong shapes, a failed restore, a loader that
crashes the interpreter with SIGSEGV/SIGBUS); INCONCLUSIVE when the file could not be judged (a
probe that timed out, could not start, or failed for reasons of its own; in generic mode, a file
whose pickle names a class we never load). An inconclusive file is never quarantined.

Speed: all files of one call share ONE probe child (one ``import torch``), each file with its own
timeout; a file that hangs or crashes the child costs only that file, the next one gets a fresh
child. CRCs of many files run in threads while the child imports torch.

This module never imports torch (the supervisor and ``verify`` stay light); only the child does.
"""
from __future__ import annotations

import json
import math
import os
import selectors
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from shared.checkpoint_crc import check_zip_crc
from shared.exit_codes import ProbeExit
from shared.run_dir import scan_checkpoints, step_from_checkpoint_path
from shared.vocabulary import Verdict
from supervisor.messages import signal_name

if TYPE_CHECKING:
    from supervisor.run_config import RunConfig

SIBLING_SIZE_FRACTION = 0.5  # a broken zip below this fraction of its siblings' median: "cut short"
# ``auto`` probe timeout per file: a multiple of this machine's measured ``import torch`` (the
# probe child reports it; loading and restoring a mmapped file costs far less), plus the time to
# read the file at a slow disk's rate (--deep reads every byte), never below the floor.
AUTO_TIMEOUT_FLOOR_S = 30.0
AUTO_TIMEOUT_IMPORT_MULTIPLE = 10.0
AUTO_TIMEOUT_READ_BYTES_PER_S = 20e6
# Starting the child (import torch + the worker's model code) says nothing about any file; a
# start that takes longer than this means the environment is broken: inconclusive.
PROBE_STARTUP_TIMEOUT_S = 300.0
MAX_PROBE_TIMEOUT_S = 86400.0  # a day: longer is a typo (1e308), and timers overflow on such values
PROBE_MODULE = "worker.checkpoint_probe"
# A loader that dies of these signals crashed on the file's bytes; SIGKILL (the OOM killer, an
# operator) and anything else say nothing about the file.
_FILE_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE}
_PROJECT_ROOT = Path(__file__).resolve().parent.parent  # holds the `shared`, `worker` packages
_CRC_THREADS = 4
MEMORY_POLL_S = 0.1  # how often the probe child's RSS is read against its cap while it works
PROBE_MEMORY_FLOOR = 2 * 2**30  # the smallest memory cap of a warm probe child (torch + a small file)


class Check(NamedTuple):
    """One check's outcome: a plain tuple (name, passed, detail, seconds) with names."""

    name: str
    passed: bool
    detail: str
    seconds: float


@dataclass
class ValidationResult:
    """The verdict on one file. ``reason`` is the one line a user sees when ``ok`` is False.

    ``inconclusive`` is True when the file could not be judged for reasons that are not the
    file's fault; the supervisor never quarantines on an inconclusive result.
    """

    path: str
    ok: bool
    reason: str | None = None
    step: int | None = None
    size_bytes: int | None = None
    checks: list[Check] = field(default_factory=list)
    inconclusive: bool = False
    config: dict[str, Any] | None = None
    source_format: str | None = None  # "build-nanogpt" for a file in build-nanogpt's format
    # Set when the file's format_version is newer than this install reads (``ok`` is False).
    unsupported_format_version: int | None = None
    no_checkpoint: bool = False  # verify: a directory that holds no checkpoint yet (not a file)

    @property
    def verdict(self) -> Verdict:
        if self.ok:
            return Verdict.VALID
        if self.no_checkpoint:
            return Verdict.NO_CHECKPOINT
        if self.unsupported_format_version is not None:
            return Verdict.UNSUPPORTED
        return Verdict.INCONCLUSIVE if self.inconclusive else Verdict.INVALID

    def seconds(self, name: str) -> float | None:
        """Time spent in the named check, or None if it did not run."""
        return next((check.seconds for check in self.checks if check.name == name), None)

    def record(self, name: str, passed: bool, detail: str, seconds: float) -> bool:
        self.checks.append(Check(name, passed, detail, round(seconds, 4)))
        if not passed:
            self.reason = detail
        return passed

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["checks"] = [check._asdict() for check in self.checks]
        data["verdict"] = str(self.verdict)
        return data


# --- timeouts --------------------------------------------------------------------------------------

def parse_probe_timeout(text: str | float | None) -> float | None:
    """``auto`` (or None) -> None; otherwise finite seconds > 0. Raises ValueError with one line."""
    if text is None or (isinstance(text, str) and text.strip().lower() == "auto"):
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{text!r} is not a number of seconds or 'auto'") from None
    if not math.isfinite(value) or not 0 < value <= MAX_PROBE_TIMEOUT_S:
        raise ValueError(f"{text!r} is not a number of seconds above 0 and at most "
                         f"{MAX_PROBE_TIMEOUT_S:g} (or 'auto')")
    return value


def auto_probe_timeout(import_seconds: float, size_bytes: int | None) -> float:
    """The ``auto`` per-file timeout (see the constants above)."""
    measured = AUTO_TIMEOUT_IMPORT_MULTIPLE * max(import_seconds, 0.0)
    reading = (size_bytes or 0) / AUTO_TIMEOUT_READ_BYTES_PER_S
    return max(AUTO_TIMEOUT_FLOOR_S, measured) + reading


# --- 1. file, 2. size ------------------------------------------------------------------------------

def check_file(path: Path) -> tuple[bool, str, int | None]:
    """(passed, detail, size) for "exists, regular file, readable". Never opens a non-file."""
    try:
        info = os.stat(path)  # follows symlinks
    except FileNotFoundError:
        if os.path.islink(path):
            return False, f"dangling symlink (points to {os.readlink(path)}, which does not exist)", None
        return False, "no such file", None
    except OSError as error:
        return False, f"cannot stat: {error.strerror or error}", None
    if stat.S_ISDIR(info.st_mode):
        return False, "is a directory, not a checkpoint file", None
    if not stat.S_ISREG(info.st_mode):
        return False, "not a regular file (a fifo, socket or device)", None
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        return False, f"cannot open for reading: {error.strerror or error}", None
    detail = "regular file"
    if os.path.islink(path):
        detail += f" (via symlink to {os.readlink(path)})"
    return True, detail, info.st_size


def tensor_layout(path: Path) -> tuple[int, ...] | None:
    """Sorted sizes of the tensor members in a torch.save zip, from its central directory alone.

    Two checkpoints of one model (same config, both with optimizer moments) list the same sizes;
    another model lists others. ``None`` when the directory does not parse (cut short, not a zip).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return tuple(sorted(info.file_size for info in archive.infolist() if "/data/" in info.filename))
    except Exception:  # noqa: BLE001  zipfile trips in many ways on a damaged directory: "unknown layout"
        return None


@dataclass(frozen=True)
class Sibling:
    """Another ``model_N.pt`` of the same directory: its size and tensor layout."""

    path: Path
    size: int
    layout: tuple[int, ...] | None


def check_size(size: int, layout: tuple[int, ...] | None, siblings: Sequence[Sibling]) -> tuple[bool, str]:
    """Not empty. Siblings of the same tensor layout are named in the detail, nothing more:
    same layout means same tensors, so a shorter file would already fail its zip directory."""
    if size == 0:
        return False, "empty file (0 bytes)"
    same = [s for s in siblings if layout is not None and s.layout == layout]
    if same:
        return True, f"{size:,} bytes; same tensor layout as {len(same)} sibling(s)"
    return True, f"{size:,} bytes"


def cut_short_hint(size: int, siblings: Sequence[Sibling]) -> str:
    """For a file whose zip directory is unreadable: how small it is next to its siblings."""
    sizes = [s.size for s in siblings if s.size > 0]
    if not sizes:
        return ""
    median = statistics.median(sizes)
    if size >= SIBLING_SIZE_FRACTION * median:
        return ""
    return (f"; it is {size / median:.0%} of the median size of its {len(sizes)} sibling "
            f"checkpoint(s) ({int(median):,} bytes): probably cut short")


def list_siblings(path: Path, cache: dict[Path, list[Sibling]] | None = None) -> list[Sibling]:
    """The other checkpoints of ``path``'s directory (``scan_checkpoints``' rule), with their layouts.

    Siblings come from the directory listing, not from the paths the user named, so verifying a
    single file still compares it with the rest of its run.
    """
    directory = path.resolve().parent
    cache = cache if cache is not None else {}
    if directory not in cache:
        try:
            listed = scan_checkpoints(directory)
        except OSError:
            listed = []
        cache[directory] = [Sibling(file.path, file.size, tensor_layout(file.path)) for file in listed]
    me = path.resolve()
    return [s for s in cache[directory] if s.path != me]


# --- 4. load-probe children --------------------------------------------------------------------------

class ProbeOutcome(NamedTuple):
    """What came back from the probe child for one file."""

    verdict: dict[str, Any] | None  # the parsed JSON verdict, when there was one
    error: str | None  # why there is no usable verdict
    inconclusive: bool  # the failure is not evidence about the file
    seconds: float


def probe_command(generic: bool = False, user_probe: str | None = None,
                  user_probe_path: str | Path | None = None) -> list[str]:
    """The probe child's argv: ``python -m worker.checkpoint_probe --serve``, plus ``--generic``
    for checkpoints in a format of their own (a user script's), judged without gpt2sup's format
    checks, and ``--user-probe MODULE:FUNCTION`` (``gpt2sup run --probe``), the user's own
    restore, imported from ``user_probe_path`` first (``worker.checkpoint_probe``'s docstring)."""
    argv = [sys.executable, "-m", PROBE_MODULE, "--serve", *(["--generic"] if generic else [])]
    if generic and user_probe:
        argv += ["--user-probe", user_probe]
        if user_probe_path is not None:
            argv += ["--user-probe-path", str(user_probe_path)]
    return argv


def probe_command_for(config: RunConfig) -> list[str]:
    """The load-probe child's argv for a run: gpt2sup's own probe for its worker; for a user's
    script the generic one, with its ``--probe MODULE:FUNCTION`` (imported from the run's cwd)."""
    if not config.runs_script:
        return probe_command()
    return probe_command(True, config.user_probe, config.cwd)


def _probe_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    return env


def _rss(pid: int) -> int | None:
    """Resident memory of ``pid`` and its descendants, or None when it cannot be read."""
    try:
        import psutil

        proc = psutil.Process(pid)
        return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
    except Exception:  # noqa: BLE001 - gone or unreadable: no verdict on memory
        return None


def default_probe_memory_cap(size_bytes: int | None) -> int:
    """The probe child's memory cap for files of ``size_bytes``: torch itself, plus the file twice
    (mapped pages, and a deep check's copies), never below ``PROBE_MEMORY_FLOOR``."""
    return max(PROBE_MEMORY_FLOOR, PROBE_MEMORY_FLOOR + 2 * int(size_bytes or 0))


def _last_line(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""


class ProbeSession:
    """One ``python -m worker.checkpoint_probe --serve`` child answering many files in turn.

    ``timeout`` is per file, in seconds, or None for ``auto`` (:func:`auto_probe_timeout` on the
    child's measured import time). The child's start has its own allowance
    (``startup_timeout``). A file that times out or kills the child ends that child; the next
    file starts a fresh one. A start that fails (no torch, too slow) is not retried for every
    file: each later file gets the same inconclusive outcome. Never raises for anything the
    child does. ``command`` replaces the child's argv (tests simulate misbehaving children;
    ``probe_command(generic=True)`` probes every file in generic mode).
    """

    def __init__(self, timeout: float | None = None, *, startup_timeout: float = PROBE_STARTUP_TIMEOUT_S,
                 command: Sequence[str] | None = None, memory_cap_bytes: int | None = None) -> None:
        self.timeout = timeout
        self.startup_timeout = startup_timeout
        # Resident memory the child may use while it judges a file (None: no cap). Watched with
        # psutil while a verdict is awaited; a child above it is killed and the file is not judged.
        self.memory_cap_bytes = memory_cap_bytes
        self._over_memory: int | None = None  # the RSS that got the child killed
        self.command = list(command) if command else probe_command()
        self.import_seconds: float | None = None
        self.children_started = 0
        self._child: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._buffer = b""
        self._ready = False
        self._eof = False
        self._start_failure: ProbeOutcome | None = None
        self._bad_timeout: str | None = None
        if timeout is not None:
            try:
                parse_probe_timeout(timeout)
            except ValueError as error:
                self._bad_timeout = f"load-probe not run: timeout {error}"

    def __enter__(self) -> ProbeSession:  # noqa: PYI034  (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the child now (optional: ``probe`` starts it) so its import overlaps other work."""
        if self._child is None and self._start_failure is None and self._bad_timeout is None:
            self._spawn()

    def timeout_for(self, size_bytes: int | None) -> float:
        if self.timeout is not None:
            return float(self.timeout)
        return auto_probe_timeout(self.import_seconds or 0.0, size_bytes)

    def probe(self, path: Path, *, deep: bool = False, size_bytes: int | None = None,
              generic: bool = False) -> ProbeOutcome:
        """One file's outcome. ``generic`` asks for generic mode for this file alone (a child
        started with ``--generic`` uses it for every file anyway)."""
        started = time.monotonic()
        if self._bad_timeout is not None:
            return ProbeOutcome(None, self._bad_timeout, True, 0.0)
        self.start()
        if self._start_failure is None:
            self._await_ready()
        if self._start_failure is not None:
            return self._start_failure._replace(seconds=time.monotonic() - started)
        assert self._child is not None and self._child.stdin is not None
        request: dict[str, Any] = {"path": str(Path(path).absolute()), "deep": deep, "size_bytes": size_bytes}
        if generic:
            request["generic"] = True
        timeout = self.timeout_for(size_bytes)
        sent = time.monotonic()
        try:
            self._child.stdin.write((json.dumps(request) + "\n").encode())
            self._child.stdin.flush()
        except OSError:
            pass  # the child is gone; reading below finds out how it ended
        self._over_memory = None
        line = self._read_line(sent + timeout, watch_memory=True)
        seconds = time.monotonic() - sent
        if line is None:
            if self._over_memory is not None:
                self._stop_child()
                cap = self.memory_cap_bytes or 0
                return ProbeOutcome(None, f"load-probe used {self._over_memory / 2**20:.0f} MiB, above its cap of "
                                          f"{cap / 2**20:.0f} MiB: killed (not judged)", True, seconds)
            if not self._eof:  # still running: it hangs on this file (or the machine is slow)
                self._stop_child()
                return ProbeOutcome(None, f"load-probe gave no verdict within {timeout:g}s (not judged: "
                                          "a slow machine or a loader that hangs on this file)", True, seconds)
            return self._ended(seconds)
        try:
            verdict = json.loads(line)
        except json.JSONDecodeError:
            verdict = None
        if not isinstance(verdict, dict) or not isinstance(verdict.get("ok"), bool):
            self._stop_child()
            return ProbeOutcome(None, "load-probe printed no verdict (garbage on its stdout; not judged)", True, seconds)
        return ProbeOutcome(verdict, None, False, seconds)

    @property
    def warm(self) -> bool:
        """A started child is alive (it may still be importing torch)."""
        return self._child is not None and self._child.poll() is None

    @property
    def child_pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def keep_warm(self) -> None:
        """Replace a child that died while idle (killed, OOM) and retry a failed start, so the
        next file costs the read, not an interpreter start. Call between files only."""
        if self._child is not None and self._child.poll() is not None:
            self._stop_child()
        self._start_failure = None
        self.start()

    def close(self) -> None:
        if self._child is not None:
            try:
                if self._child.stdin is not None:
                    self._child.stdin.close()  # EOF: the child's loop ends
                self._child.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass  # it did not leave on its own: _stop_child kills it
            self._stop_child()

    # -- the child process ------------------------------------------------------------------------
    def _spawn(self) -> None:
        # A file, not a pipe: a chatty child never blocks. Closed with the child (_close_stderr).
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self._buffer = b""
        try:
            self._child = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                cwd=_PROJECT_ROOT, env=_probe_env(), start_new_session=True, bufsize=0,
            )
        except OSError as error:
            self._start_failure = ProbeOutcome(None, f"load-probe could not start: {error}", True, 0.0)
            self._close_stderr()
            return
        self.children_started += 1
        self._ready = False

    def _await_ready(self) -> None:
        if self._ready:
            return
        line = self._read_line(time.monotonic() + self.startup_timeout)
        message = None
        if line is None:
            if not self._eof:
                message = (f"load-probe could not start within {self.startup_timeout:g}s "
                           "(importing torch takes longer on this machine)")
            else:
                message = self._ended(0.0).error
        else:
            try:
                hello = json.loads(line)
            except json.JSONDecodeError:
                hello = None
            if isinstance(hello, dict) and hello.get("ready") is True:
                self._ready = True
                self.import_seconds = float(hello.get("import_torch_seconds") or 0.0)
                return
            message = "load-probe started but did not say it was ready (garbage on its stdout)"
        self._stop_child()
        self._start_failure = ProbeOutcome(None, f"{message}; not judged", True, 0.0)

    def _read_line(self, deadline: float, watch_memory: bool = False) -> str | None:
        """The next stdout line; None at EOF (``self._eof`` set) or when ``deadline`` passes, or,
        with ``watch_memory`` and a cap, when the child's RSS goes above it (``_over_memory`` set)."""
        assert self._child is not None and self._child.stdout is not None
        stdout = self._child.stdout
        self._eof = False
        watching = watch_memory and self.memory_cap_bytes is not None
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if not selector.select(timeout=min(remaining, MEMORY_POLL_S) if watching else remaining):
                    if watching:
                        rss = _rss(self._child.pid)
                        if rss is not None and rss > (self.memory_cap_bytes or 0):
                            self._over_memory = rss
                            return None
                    if time.monotonic() >= deadline:
                        return None
                    continue
                chunk = os.read(stdout.fileno(), 1 << 16)
                if not chunk:
                    self._eof = True  # the child closed stdout: it is exiting or dead
                    return None
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", "replace")

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - 8192))
            return _last_line(self._stderr.read().decode("utf-8", "replace"))
        except OSError:
            return ""

    def _ended(self, seconds: float) -> ProbeOutcome:
        """The child exited while we waited: say how, and whether that blames the file."""
        assert self._child is not None
        try:
            code = self._child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        tail = self._stderr_tail()
        self._stop_child()
        if code is not None and code < 0:
            number = -code
            if number in _FILE_CRASH_SIGNALS:
                return ProbeOutcome(None, f"load-probe killed by {signal_name(number)} while loading "
                                          "(the loader crashes on this file)", False, seconds)
            return ProbeOutcome(None, f"load-probe killed by {signal_name(number)} (out of memory, or "
                                      "stopped from outside; not judged)", True, seconds)
        if code == ProbeExit.CANNOT_JUDGE:
            return ProbeOutcome(None, f"load-probe could not run: {tail or 'torch unavailable'}", True, seconds)
        return ProbeOutcome(None, f"load-probe failed on its own (exit status {code}"
                                  + (f": {tail}" if tail else "") + "; not judged)", True, seconds)

    def _stop_child(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            if child.poll() is None:
                try:
                    os.killpg(child.pid, signal.SIGKILL)  # its own session: nothing else is hit
                except ProcessLookupError:
                    pass
            child.wait()
            for stream in (child.stdin, child.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass  # a broken pipe to a dead child; nothing left to flush
        self._close_stderr()

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


# --- the whole validation -------------------------------------------------------------------------

def _file_and_size(path: Path, siblings: Sequence[Sibling]) -> ValidationResult:
    """Checks 1 and 2: a result that is already final when ``ok`` is False."""
    result = ValidationResult(path=str(path), ok=False, step=step_from_checkpoint_path(path))
    t0 = time.perf_counter()
    passed, detail, size = check_file(path)
    if not result.record("file", passed, detail, time.perf_counter() - t0):
        return result
    result.size_bytes = size
    # Through a symlink (latest_checkpoint.pt) the step to compare against is the target's name.
    if result.step is None:
        result.step = step_from_checkpoint_path(path.resolve())
    t0 = time.perf_counter()
    layout = tensor_layout(path.resolve()) if size else None
    passed, detail = check_size(size or 0, layout, siblings)
    if result.record("size", passed, detail, time.perf_counter() - t0):
        result.ok = True  # provisional: "the cheap checks passed"
    return result


def _timed_crc(path: Path) -> tuple[bool, str, float]:
    t0 = time.perf_counter()
    ok, detail = check_zip_crc(path)
    return ok, detail, time.perf_counter() - t0


def _finish(result: ValidationResult, crc: tuple[bool, str, float], siblings: Sequence[Sibling],
            session: ProbeSession, deep: bool, generic: bool = False) -> ValidationResult:
    """Checks 3 and 4 for a file that passed 1 and 2."""
    result.ok = False
    ok, detail, seconds = crc
    if not ok:
        if detail.startswith("not a zip archive"):
            detail += cut_short_hint(result.size_bytes or 0, siblings)
        result.record("zip-crc", False, detail, seconds)
        return result
    result.record("zip-crc", True, detail, seconds)
    outcome = session.probe(Path(result.path).resolve(), deep=deep, size_bytes=result.size_bytes, generic=generic)
    if outcome.verdict is None:
        result.record("load-probe", False, outcome.error or "load-probe failed", outcome.seconds)
        result.inconclusive = outcome.inconclusive
        return result
    verdict = outcome.verdict
    import_seconds = verdict.get("import_torch_seconds")
    probe_detail = "child process finished" + (
        f" (import torch {import_seconds:.2f}s, paid once per call)" if isinstance(import_seconds, (int, float)) else "")
    result.record("load-probe", True, probe_detail, outcome.seconds)
    for entry in verdict.get("checks", []):
        try:
            name, passed, text, check_seconds = entry
            result.checks.append(Check(str(name), bool(passed), str(text), float(check_seconds)))
        except (TypeError, ValueError):
            continue
    if isinstance(verdict.get("step"), int):
        result.step = verdict["step"]
    if isinstance(verdict.get("config"), dict):
        result.config = verdict["config"]
    if isinstance(verdict.get("source_format"), str):
        result.source_format = verdict["source_format"]
    newer = verdict.get("unsupported_format_version")
    if isinstance(newer, int) and not isinstance(newer, bool):
        result.unsupported_format_version = newer
    if verdict["ok"]:
        result.ok = True
    else:
        result.reason = str(verdict.get("reason") or "load-probe rejected the file")
        # Generic mode: the file names code we never load, so it was not judged (never quarantined).
        if verdict.get("inconclusive") is True:
            result.inconclusive = True
    return result


def validate_checkpoint(
    path: str | Path,
    *,
    deep: bool = False,
    probe_timeout: float | None = None,
    siblings: Sequence[Sibling] | None = None,
    session: ProbeSession | None = None,
    generic: bool = False,
    command: Sequence[str] | None = None,
) -> ValidationResult:
    """Run checks 1-4 (module docstring) on one file, stopping at the first failure.

    ``probe_timeout`` None means ``auto``. Pass a ``session`` to share one probe child across
    files (the caller closes it); without one, a child is started and closed for this file.
    ``generic`` probes a checkpoint in a format of its own (:func:`probe_command`); ``command``:
    the probe child's argv, when it is not the plain one (``--probe``: :func:`probe_command_for`).
    """
    path = Path(path)
    siblings = list(siblings or [])
    result = _file_and_size(path, siblings)
    if not result.ok:
        return result
    if session is not None:
        return _finish(result, _timed_crc(path.resolve()), siblings, session, deep, generic)
    with ProbeSession(probe_timeout, command=command or probe_command(generic)) as own:
        own.start()  # import torch while the CRC pass reads the file
        return _finish(result, _timed_crc(path.resolve()), siblings, own, deep, generic)


def validate_many(
    paths: Iterable[str | Path], deep: bool = False, *, probe_timeout: float | None = None,
    generic: bool | Callable[[Path], bool] = False,
) -> list[ValidationResult]:
    """Validate each path, results in order: CRCs in threads, every probe in one child
    (``generic``: in generic mode, :func:`probe_command`; a function of the path: generic mode
    for the files it names, e.g. those of a script's run, in the same child)."""
    paths = [Path(raw) for raw in paths]
    generic_for = generic if callable(generic) else (lambda _path, every=generic: every)
    cache: dict[Path, list[Sibling]] = {}
    siblings = [list_siblings(path, cache) if path.exists() else [] for path in paths]
    results = [_file_and_size(path, sibs) for path, sibs in zip(paths, siblings)]
    pending = [i for i, result in enumerate(results) if result.ok]
    if not pending:
        return results
    with ProbeSession(probe_timeout, command=probe_command(generic is True)) as session, \
            ThreadPoolExecutor(max_workers=_CRC_THREADS) as pool:
        crcs = {i: pool.submit(_timed_crc, paths[i].resolve()) for i in pending}
        session.start()  # the child imports torch while the threads read files
        for i in pending:
            results[i] = _finish(results[i], crcs[i].result(), siblings[i], session, deep, generic_for(paths[i]))
    return results
