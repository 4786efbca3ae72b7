"""The root of candled's exceptions.

Every error candled raises on purpose derives from `CandledError`, so a caller
can catch "anything candled refused" in one clause while programming errors
(TypeError, KeyError, ...) still surface as what they are. Each error is
defined beside the code that raises it (`ConfigError` in `config`, the
`SpoolError` family in `store.spool`, `FetchError` in `fetch`, the codecs'
errors in `venues`, ...). "The database is unavailable" is not an exception
of ours but what the driver and the network raise: the one list of them is
`candled.store.database.UNAVAILABLE`.
"""

from __future__ import annotations


class CandledError(Exception):
    """Base class of every exception candled raises on purpose."""
