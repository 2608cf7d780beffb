"""Identifiers as wsfan checks them (shared/src/domain/channel.rs), and ULIDs for message ids."""

from __future__ import annotations

import os
import re
import time

# channel::validate_id: 1-128 characters of A-Z a-z 0-9 _ . @ -
_ID = re.compile(r"[A-Za-z0-9_.@-]{1,128}")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def validate_id(value: str, what: str) -> str:
    """Returns `value` if wsfan accepts it as a document id or user id; raises ValueError if not."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ValueError(f"{what} must be 1-128 characters of A-Z a-z 0-9 _ . @ -, not {value!r}")
    return value


def new_ulid() -> str:
    """A ULID (48 bits of epoch milliseconds, 80 random bits), as the fanout wants in `MSG#<ulid>`."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))
