"""Is this checkpoint file sound? Cheap checks first, the torch load-probe last.

Used by ``gpt2sup verify`` and by the supervisor before every restart (docs/checkpoints.md). The
checks run in order and stop at the first failure:

1. ``file``      exists (a symlink is followed; a dangling one is reported), is a regular file,
                 can be opened for reading. FIFOs and devices are never opened (they could block).
2. ``size``      non-zero, and not below half the median size of its sibling checkpoints (files
                 of one run are all the same size, so a much smaller one is a cut-short copy).
3. ``zip-crc``   torch.save writes a zip archive; its central directory must parse, it must hold
                 ``<archive>/data.pkl``, and every member's bytes must match the CRC-32 stored
                 for it. ``torch.load`` checks no CRC, so a flipped bit in tensor data loads
                 silently as a wrong weight; this is the only guard against bit rot. It reads
                 the file once, sequentially.
4. ``load-probe`` ``python -m shared.checkpoint_probe`` in a child process with a timeout:
                 ``torch.load(weights_only=True, mmap=True)``, required keys, format version,
                 step vs. file name, config, parameter shapes vs. config, size vs. the floor the
                 config implies; with ``deep`` also finite tensors and optimizer moment shapes.
                 A loader that crashes, hangs or prints garbage fails the file, not the caller.

This module never imports torch (the supervisor and ``verify`` stay light); only the child does.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from shared.checkpoint_crc import check_zip_crc
from shared.run_dir import step_from_checkpoint_name

SIBLING_SIZE_FRACTION = 0.5  # below this fraction of the siblings' median size -> truncated
DEFAULT_PROBE_TIMEOUT = 60.0
_PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the directory holding the `shared` package
PROBE_EXIT_CANNOT_JUDGE = 3  # mirrors shared.checkpoint_probe.EXIT_CANNOT_JUDGE (not imported: keep this light)


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
    file's fault (the probe could not start, torch failed to import). A supervisor should not
    quarantine a checkpoint on an inconclusive result.
    """

    path: str
    ok: bool
    reason: str | None = None
    step: int | None = None
    size_bytes: int | None = None
    checks: list[Check] = field(default_factory=list)
    inconclusive: bool = False
    config: dict[str, Any] | None = None

    def seconds(self, name: str) -> float | None:
        """Time spent in the named check, or None if it did not run."""
        return next((check.seconds for check in self.checks if check.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["checks"] = [check._asdict() for check in self.checks]
        return data


class ProbeOutcome(NamedTuple):
    """What came back from one probe child process."""

    verdict: dict[str, Any] | None  # the parsed JSON verdict, when there was one
    error: str | None  # why there is no usable verdict
    inconclusive: bool  # the failure is the environment's, not the file's
    seconds: float


# --- 1. file -------------------------------------------------------------------------------------

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


# --- 2. size -------------------------------------------------------------------------------------

def check_size(size: int, sibling_sizes: Iterable[int] | None) -> tuple[bool, str]:
    """Non-empty, and not far below its siblings (same run -> same tensors -> same size)."""
    if size == 0:
        return False, "empty file (0 bytes)"
    siblings = [s for s in (sibling_sizes or []) if s > 0]
    if not siblings:
        return True, f"{size:,} bytes"
    median = statistics.median(siblings)
    if size < SIBLING_SIZE_FRACTION * median:
        return False, (
            f"{size:,} bytes is {size / median:.0%} of the median size of its {len(siblings)} "
            f"sibling checkpoint(s) ({int(median):,} bytes): probably cut short"
        )
    return True, f"{size:,} bytes ({size / median:.0%} of {len(siblings)} siblings' median)"


# --- 3. zip structure and CRC: shared.checkpoint_crc.check_zip_crc (the worker uses it too) ------


# --- 4. load-probe in a child process --------------------------------------------------------------

def probe_command(path: Path, *, deep: bool = False, size_bytes: int | None = None) -> list[str]:
    """The argv of the probe child for ``path`` (absolute, so the child's cwd does not matter)."""
    argv = [sys.executable, "-m", "shared.checkpoint_probe", str(Path(path).absolute())]
    if size_bytes is not None:
        argv += ["--size-bytes", str(size_bytes)]
    if deep:
        argv.append("--deep")
    return argv


def _probe_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    return env


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _last_line(text: str, limit: int | None = 300) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1][:limit] if limit else lines[-1]) if lines else ""


def run_probe_command(argv: list[str], timeout: float) -> ProbeOutcome:
    """Run a probe child and interpret how it ended. Never raises for anything the child does.

    Exit 0 with a JSON object on the last stdout line -> that verdict. A signal (SIGSEGV, SIGBUS
    from a mapped file that shrank, SIGKILL by the OOM killer), another exit status, a timeout,
    or garbage on stdout -> an error line blaming the loader on this file. Exit status 3, or a
    child that cannot start -> inconclusive.
    """
    started = time.perf_counter()
    try:
        completed = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            timeout=timeout, cwd=_PROJECT_ROOT, env=_probe_env(), start_new_session=True,
        )
    except subprocess.TimeoutExpired:  # subprocess.run has already killed and reaped the child
        return ProbeOutcome(None, f"load-probe timed out after {timeout:g}s (the loader hangs on this file)",
                            False, time.perf_counter() - started)
    except OSError as error:
        return ProbeOutcome(None, f"load-probe could not start: {error}", True, time.perf_counter() - started)
    seconds = time.perf_counter() - started
    stdout = completed.stdout.decode("utf-8", "replace")
    stderr = completed.stderr.decode("utf-8", "replace")
    code = completed.returncode
    if code < 0:
        return ProbeOutcome(None, f"load-probe killed by {_signal_name(-code)} while loading "
                                  f"(the loader crashes on this file)", False, seconds)
    if code == PROBE_EXIT_CANNOT_JUDGE:
        return ProbeOutcome(None, f"load-probe could not run: {_last_line(stderr) or 'torch unavailable'}",
                            True, seconds)
    if code != 0:
        tail = _last_line(stderr)
        return ProbeOutcome(None, f"load-probe exited with status {code}" + (f": {tail}" if tail else ""),
                            False, seconds)
    try:
        verdict = json.loads(_last_line(stdout, limit=None) or "null")
    except json.JSONDecodeError:
        verdict = None
    if not isinstance(verdict, dict) or not isinstance(verdict.get("ok"), bool):
        return ProbeOutcome(None, "load-probe printed no verdict (garbage on its stdout)", False, seconds)
    return ProbeOutcome(verdict, None, False, seconds)


def run_probe(path: Path, *, deep: bool = False, size_bytes: int | None = None,
              timeout: float = DEFAULT_PROBE_TIMEOUT) -> ProbeOutcome:
    """Load-probe ``path`` in a child process (see ``shared.checkpoint_probe``)."""
    return run_probe_command(probe_command(path, deep=deep, size_bytes=size_bytes), timeout)


# --- the whole validation -------------------------------------------------------------------------

def validate_checkpoint(
    path: str | Path,
    *,
    deep: bool = False,
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
    sibling_sizes: Iterable[int] | None = None,
) -> ValidationResult:
    """Run checks 1-4 (module docstring) on one file, stopping at the first failure."""
    path = Path(path)
    result = ValidationResult(path=str(path), ok=False, step=step_from_checkpoint_name(path.name))

    def record(name: str, passed: bool, detail: str, t0: float) -> bool:
        result.checks.append(Check(name, passed, detail, round(time.perf_counter() - t0, 4)))
        if not passed:
            result.reason = detail
        return passed

    t0 = time.perf_counter()
    passed, detail, size = check_file(path)
    if not record("file", passed, detail, t0):
        return result
    result.size_bytes = size
    # Through a symlink (latest_checkpoint.pt) the step to compare against is the target's name.
    real_path = path.resolve()
    if result.step is None:
        result.step = step_from_checkpoint_name(real_path.name)

    t0 = time.perf_counter()
    if not record("size", *check_size(size or 0, sibling_sizes), t0):
        return result

    t0 = time.perf_counter()
    if not record("zip-crc", *check_zip_crc(real_path), t0):
        return result

    outcome = run_probe(real_path, deep=deep, size_bytes=size, timeout=probe_timeout)
    if outcome.verdict is None:
        result.checks.append(Check("load-probe", False, outcome.error or "load-probe failed", round(outcome.seconds, 4)))
        result.reason = outcome.error
        result.inconclusive = outcome.inconclusive
        return result
    verdict = outcome.verdict
    import_seconds = verdict.get("import_torch_seconds")
    probe_detail = "child process finished" + (f" (import torch {import_seconds:.2f}s)" if isinstance(import_seconds, (int, float)) else "")
    result.checks.append(Check("load-probe", True, probe_detail, round(outcome.seconds, 4)))
    for entry in verdict.get("checks", []):
        try:
            name, ok, text, seconds = entry
            result.checks.append(Check(str(name), bool(ok), str(text), float(seconds)))
        except (TypeError, ValueError):
            continue
    if isinstance(verdict.get("step"), int):
        result.step = verdict["step"]
    if isinstance(verdict.get("config"), dict):
        result.config = verdict["config"]
    if verdict["ok"]:
        result.ok = True
    else:
        result.reason = str(verdict.get("reason") or "load-probe rejected the file")
    return result


def sibling_checkpoint_sizes(path: Path, _listing_cache: dict[Path, dict[Path, int]] | None = None) -> list[int]:
    """Sizes of the other ``model_N.pt`` regular files in ``path``'s directory.

    Siblings come from the directory listing, not from the paths the user named, so verifying a
    single file still compares it with the rest of its run.
    """
    directory = path.resolve().parent
    cache = _listing_cache if _listing_cache is not None else {}
    if directory not in cache:
        sizes: dict[Path, int] = {}
        try:
            entries = list(os.scandir(directory))
        except OSError:
            entries = []
        for entry in entries:
            if step_from_checkpoint_name(entry.name) is None:
                continue
            try:
                if entry.is_file(follow_symlinks=False):
                    sizes[Path(entry.path)] = entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
        cache[directory] = sizes
    me = path.resolve()
    return [size for other, size in cache[directory].items() if other != me]


def validate_many(
    paths: Iterable[str | Path], deep: bool = False, *, probe_timeout: float = DEFAULT_PROBE_TIMEOUT
) -> list[ValidationResult]:
    """Validate each path in order, comparing each with its sibling checkpoints' sizes."""
    cache: dict[Path, dict[Path, int]] = {}
    results = []
    for raw in paths:
        path = Path(raw)
        try:
            siblings = sibling_checkpoint_sizes(path, cache) if path.exists() else []
        except OSError:
            siblings = []
        results.append(validate_checkpoint(path, deep=deep, probe_timeout=probe_timeout, sibling_sizes=siblings))
    return results
