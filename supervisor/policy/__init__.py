"""Pure supervisor policy: every "should we / how long / is it stuck" question as a function of data.

Nothing here touches processes, files or the clock (callers pass ``now``), so the whole policy is
unit-tested in milliseconds and the run loop stays a thin sequence of calls into it. One module
per concern:

- ``timeouts``: how long a rank may be silent in each phase (fixed, or learned: ``auto``);
- ``stops``: how long a stop may take, and when it is forced;
- ``measures``: which reported durations count;
- ``hangs``: which rank is stuck, whose heartbeat is this attempt's, start-up allowance;
- ``stragglers``: slow ranks and slow hosts (detection only);
- ``peers``: the ending another node recorded, which this node follows;
- ``restarts``: backoff, no-progress detection, restart or give up;
- ``exits``: what an attempt's exit was, and its description;
- ``disk``: the free-space threshold and what pruning may delete;
- ``reuse``: what a plain ``gpt2sup run`` on an existing directory reuses;
- ``remote``: the checkpoint store's upload and resume choices (``--checkpoint-uri``).

Callers use ``from supervisor import policy`` and ``policy.<name>``: every public name of the
modules is here.
"""
from __future__ import annotations

from supervisor.policy.disk import (
    MIN_FREE_DISK_FLOOR,
    MIN_FREE_DISK_MULTIPLE,
    CheckpointOnDisk,
    DiskWatch,
    choose_checkpoints_to_prune,
    default_min_free_disk,
    disk_level,
    parse_size,
)
from supervisor.policy.exits import (
    ExitDescription,
    ExitEvidence,
    ExitFacts,
    Outcome,
    RankExit,
    RankReport,
    classify_exit,
    describe_exit,
    first_failure,
    stop_checkpoint_missing,
)
from supervisor.policy.hangs import (
    HangVerdict,
    RankBeat,
    SilenceVerdict,
    agent_unresponsive,
    beat_of_attempt,
    find_hung_rank,
    ranks_ended_cleanly,
    silent_too_long,
    startup_timed_out,
)
from supervisor.policy.measures import (
    is_duration,
    median,
    slowest,
)
from supervisor.policy.peers import (
    PeerEnding,
    peer_ending,
)
from supervisor.policy.remote import (
    UPLOAD_RETRY_INITIAL_S,
    UPLOAD_RETRY_MAX_S,
    UploadPlan,
    is_uploaded,
    keep_last_from_worker_args,
    next_retry_delay,
    next_upload,
    remote_to_try,
    upload_lag,
)
from supervisor.policy.restarts import (
    BackoffConfig,
    Decision,
    ProgressTracker,
    RestartLimits,
    backoff_delay,
    decide_after_failure,
    next_consecutive_failures,
    remaining_backoff,
)
from supervisor.policy.reuse import (
    RecordedRun,
    already_finished,
    arguments_accepted,
    finished_checkpoint,
    run_to_reuse,
)
from supervisor.policy.stops import (
    FORCE_SIGNAL_NAME,
    forced_stop_reason,
    stop_allowance,
    stop_is_forced,
)
from supervisor.policy.stragglers import (
    STRAGGLER_MIN_EXCESS_S,
    STRAGGLER_MIN_SAMPLES,
    STRAGGLER_RATIO,
    STRAGGLER_RECOVERED_RATIO,
    Straggler,
    find_slow_hosts,
    find_stragglers,
)
from supervisor.policy.timeouts import (
    AUTO,
    AUTO_FLOOR_S,
    AUTO_STEP_MULTIPLE,
    CONSERVATIVE_WRITE_BYTES_PER_S,
    UNKNOWN_EVAL_S,
    UNKNOWN_SAVE_S,
    Measurements,
    StepPaceTracker,
    TimeoutConfig,
    auto_train_timeout,
    phase_timeouts,
    timeout_for_phase,
)

__all__ = [
    "AUTO",
    "AUTO_FLOOR_S",
    "AUTO_STEP_MULTIPLE",
    "CONSERVATIVE_WRITE_BYTES_PER_S",
    "FORCE_SIGNAL_NAME",
    "MIN_FREE_DISK_FLOOR",
    "MIN_FREE_DISK_MULTIPLE",
    "STRAGGLER_MIN_EXCESS_S",
    "STRAGGLER_MIN_SAMPLES",
    "STRAGGLER_RATIO",
    "STRAGGLER_RECOVERED_RATIO",
    "UNKNOWN_EVAL_S",
    "UNKNOWN_SAVE_S",
    "UPLOAD_RETRY_INITIAL_S",
    "UPLOAD_RETRY_MAX_S",
    "BackoffConfig",
    "CheckpointOnDisk",
    "Decision",
    "DiskWatch",
    "ExitDescription",
    "ExitEvidence",
    "ExitFacts",
    "HangVerdict",
    "Measurements",
    "Outcome",
    "PeerEnding",
    "ProgressTracker",
    "RankBeat",
    "RankExit",
    "RankReport",
    "RecordedRun",
    "RestartLimits",
    "SilenceVerdict",
    "StepPaceTracker",
    "Straggler",
    "TimeoutConfig",
    "UploadPlan",
    "agent_unresponsive",
    "already_finished",
    "arguments_accepted",
    "auto_train_timeout",
    "backoff_delay",
    "beat_of_attempt",
    "choose_checkpoints_to_prune",
    "classify_exit",
    "decide_after_failure",
    "default_min_free_disk",
    "describe_exit",
    "disk_level",
    "find_hung_rank",
    "find_slow_hosts",
    "find_stragglers",
    "finished_checkpoint",
    "first_failure",
    "forced_stop_reason",
    "is_duration",
    "is_uploaded",
    "keep_last_from_worker_args",
    "median",
    "next_consecutive_failures",
    "next_retry_delay",
    "next_upload",
    "parse_size",
    "peer_ending",
    "phase_timeouts",
    "ranks_ended_cleanly",
    "remaining_backoff",
    "remote_to_try",
    "run_to_reuse",
    "silent_too_long",
    "slowest",
    "startup_timed_out",
    "stop_allowance",
    "stop_checkpoint_missing",
    "stop_is_forced",
    "timeout_for_phase",
    "upload_lag",
]
