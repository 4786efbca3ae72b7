"""Venue codecs and their registry: a config's `kind` names the codec to use.

A venue's codec (`VenueCodec`) is its history codec (REST) plus, where the
venue streams closed candles, a stream codec (`codec.stream`) that opens one
sans-I/O session per connection (`candled.venues.stream`). Shared wire
helpers are in `candled.venues.wire`.
"""

from collections.abc import Callable, Mapping

from candled.venues.alpaca import AlpacaCodec
from candled.venues.base import (
    CodecError,
    Credentials,
    CredentialsRefused,
    HistoryCodec,
    HistoryPage,
    HttpRequest,
    RateFacts,
    RateLimitedAnswer,
    VenueCodec,
    VenueError,
    VenueLimits,
)
from candled.venues.binance import BinanceCodec
from candled.venues.coinbase import CoinbaseCodec
from candled.venues.kraken import KrakenCodec
from candled.venues.oanda import OandaCodec
from candled.venues.stream import (
    ClosedBars,
    Foreign,
    Gap,
    Heartbeat,
    LoggedIn,
    Malformed,
    Refusal,
    Reply,
    StreamCodec,
    StreamError,
    StreamEvent,
    StreamFault,
    StreamLimits,
    StreamSession,
    Subscribed,
)

# kind -> factory taking the venue name stored with the candles, the venue's
# credentials (None without) and its `options` table; a bad option is a ValueError.
Factory = Callable[[str, Credentials | None, Mapping[str, str]], VenueCodec]
_CODECS: dict[str, Factory] = {
    "alpaca": AlpacaCodec,
    "binance": BinanceCodec,
    "coinbase": CoinbaseCodec,
    "kraken": KrakenCodec,
    "oanda": OandaCodec,
}


def known_kinds() -> list[str]:
    """The venue kinds a config may name, sorted."""
    return sorted(_CODECS)


def get_codec(
    kind: str,
    venue: str | None = None,
    credentials: Credentials | None = None,
    options: Mapping[str, str] | None = None,
) -> VenueCodec:
    """The codec for `kind`, naming its candles' venue `venue` (default: the kind)."""
    try:
        factory = _CODECS[kind]
    except KeyError:
        raise ValueError(
            f"unknown venue kind {kind!r}; expected one of {', '.join(known_kinds())}"
        ) from None
    return factory(venue or kind, credentials, options or {})


__all__ = [
    "ClosedBars",
    "CodecError",
    "Credentials",
    "CredentialsRefused",
    "Foreign",
    "Gap",
    "Heartbeat",
    "HistoryCodec",
    "HistoryPage",
    "HttpRequest",
    "LoggedIn",
    "Malformed",
    "RateFacts",
    "RateLimitedAnswer",
    "Refusal",
    "Reply",
    "StreamCodec",
    "StreamError",
    "StreamEvent",
    "StreamFault",
    "StreamLimits",
    "StreamSession",
    "Subscribed",
    "VenueCodec",
    "VenueError",
    "VenueLimits",
    "get_codec",
    "known_kinds",
]
