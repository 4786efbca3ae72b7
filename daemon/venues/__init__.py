"""Venue codecs and their registry: a config's `kind` names the codec to use."""

from collections.abc import Callable

from daemon.venues.base import (
    CodecError,
    FrameResult,
    HttpRequest,
    RateFacts,
    VenueCodec,
    VenueError,
    VenueLimits,
)
from daemon.venues.binance import BinanceCodec

# kind -> factory taking the venue name stored with the candles.
_CODECS: dict[str, Callable[[str], VenueCodec]] = {
    "binance": BinanceCodec,
}


def known_kinds() -> list[str]:
    return sorted(_CODECS)


def get_codec(kind: str, venue: str | None = None) -> VenueCodec:
    """The codec for `kind`, naming its candles' venue `venue` (default: the kind)."""
    try:
        factory = _CODECS[kind]
    except KeyError:
        raise ValueError(
            f"unknown venue kind {kind!r}; expected one of {', '.join(known_kinds())}"
        ) from None
    return factory(venue or kind)


__all__ = [
    "CodecError",
    "FrameResult",
    "HttpRequest",
    "RateFacts",
    "VenueCodec",
    "VenueError",
    "VenueLimits",
    "get_codec",
    "known_kinds",
]
