"""Message ids: 32 lowercase hex characters, 128 bits from ``os.urandom``.

``uuid.uuid4().hex`` builds a ``UUID`` object and makes a system call per id (a couple of
microseconds); these come from one ``os.urandom`` call per batch, or per 64 single ids, at a
tenth of that, and are as unpredictable: the same kernel randomness, all 128 bits of it (a
uuid4 spends 6 on its version and variant). Unpredictable matters: an id someone could guess
in advance could be published first and make an idempotent consumer skip the real message.
"""

from __future__ import annotations

import os

__all__ = ["ID_LENGTH", "new_id", "new_id_text"]

#: Characters in a message id.
ID_LENGTH = 32
_AHEAD = 64  # single ids drawn per system call

# Ids drawn ahead for single publishes. Process-wide on purpose: a forked child must not hand
# out the ids its parent drew, and one list is what the fork hook below can reach (popping and
# extending a list are atomic, so threads share it safely).
_drawn: list[str] = []
os.register_at_fork(after_in_child=_drawn.clear)


def new_id() -> str:
    """One fresh message id."""
    try:
        return _drawn.pop()
    except IndexError:
        text = os.urandom(ID_LENGTH // 2 * _AHEAD).hex()
        _drawn.extend(text[i : i + ID_LENGTH] for i in range(ID_LENGTH, len(text), ID_LENGTH))
        return text[:ID_LENGTH]


def new_id_text(count: int) -> str:
    """``count`` fresh message ids, one after the other (slice it by ``ID_LENGTH``)."""
    return os.urandom(ID_LENGTH // 2 * count).hex()
