"""The root of candled's exceptions.

Every error candled raises on purpose derives from `CandledError`, so a caller
can catch "anything candled refused" in one clause while programming errors
(TypeError, KeyError, ...) still surface as what they are.
"""

from __future__ import annotations


class CandledError(Exception):
    """Base class of every exception candled raises on purpose."""
