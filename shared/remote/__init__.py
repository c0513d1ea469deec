"""Checkpoints that outlive the machine: an S3-compatible bucket or a mounted directory as a
checkpoint store, with a commit protocol (docs/object-storage.md).

``gpt2sup run --checkpoint-uri`` uses it through ``supervisor.checkpoints.remote_sync``. Nothing
here imports torch or boto3 at import time (boto3 is imported by the S3 backend when first used).
"""
from __future__ import annotations

from shared.remote.errors import (
    CheckpointUriError,
    IntegrityError,
    NotCommittedError,
    ObjectStoreError,
    StoreAccessError,
)
from shared.remote.records import RemoteCheckpoint
from shared.remote.store import CheckpointStore
from shared.remote.uri import StoreLocation, open_store, parse_checkpoint_uri

__all__ = [
    "CheckpointStore",
    "CheckpointUriError",
    "IntegrityError",
    "NotCommittedError",
    "ObjectStoreError",
    "RemoteCheckpoint",
    "StoreAccessError",
    "StoreLocation",
    "open_store",
    "parse_checkpoint_uri",
]
