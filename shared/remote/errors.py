"""The errors of the checkpoint store, each a one-line message a CLI can print as it is.

Messages are built by this package from what it knows (the URI, an error code, a step), never by
pasting a library's exception text: that text can carry request details, and nothing here may
ever print a credential.
"""
from __future__ import annotations


class CheckpointUriError(ValueError):
    """A ``--checkpoint-uri`` that names no store we can open (bad scheme, no bucket, relative file://)."""


class ObjectStoreError(Exception):
    """Base of every runtime failure of a store: unreachable, refused, missing object, bad bytes."""


class StoreAccessError(ObjectStoreError):
    """The store cannot be used at all: wrong credentials, missing bucket, unreachable endpoint.

    Raised by ``check_access`` before training starts, so a run fails in one line instead of
    training for an hour and then failing its first upload.
    """


class IntegrityError(ObjectStoreError):
    """Bytes that do not match their checksum: an upload the store did not store as sent, or a
    download that differs from what was committed. Nothing is committed or installed then."""


class NotCommittedError(ObjectStoreError):
    """A step asked for that has no committed (and not bad-marked) checkpoint in the store."""
