"""HTTP fetcher: one aiohttp session per venue, every request through the
venue's throttle, retries with exponential backoff and full jitter on 429,
403, 5xx, connection errors, timeouts and bodies that cannot be used (cut
short, or past `max_body`). The backoff grows with the venue's failures in a
row, not each request's own: in a 5xx storm the BATCH requests under way back
off as one instead of each probing the venue on its own schedule. Retry-After
is honoured through the throttle: a 429 or 418 blocks the bucket, so the
retry (and every other request to the venue) waits until the venue allows
it. Answers that are not the venue talking (an HTML error page, a body cut
or too large) are counted as malformed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass

import aiohttp
import backoff
from backoff.types import Details

from daemon import logs, metrics
from daemon.throttle import VenueThrottle
from daemon.venues import HttpRequest, VenueCodec

log = logs.get("candled.fetch")
# 403: a CDN or firewall turning traffic away for a while (Binance: "WAF limit
# violated"); market data needs no credentials that could be refused for good.
RETRY_STATUSES = frozenset({403, 429, 418, 500, 502, 503, 504})
MAX_BODY = 32 * 1024 * 1024  # far above any page a venue sends; a bound, not a target
MAX_RETRY_WAIT_S = 60.0


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    request: HttpRequest


class RetryableStatus(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class UnusableBody(Exception):
    """An answer whose body was cut short or ran past the size bound: asked again."""


class FetchError(Exception):
    """A request that failed for good (after retries, or a non-retryable answer)."""


_RETRIED = (RetryableStatus, UnusableBody, aiohttp.ClientError, TimeoutError)


class Fetcher:
    def __init__(
        self,
        rest_url: str,
        codec: VenueCodec,
        throttle: VenueThrottle,
        *,
        timeout_s: float = 30.0,
        max_time_s: float = 600.0,
        retry_base_s: float = 1.0,
        max_body: int = MAX_BODY,
        on_ban: Callable[[float], Awaitable[None]] | None = None,
        on_response: Callable[[int], None] | None = None,
    ) -> None:
        self._base = rest_url
        self._codec = codec
        self.throttle = throttle
        self._max_body = max_body
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(10.0, timeout_s))
        self._on_ban = on_ban
        self._on_response = on_response
        self._session: aiohttp.ClientSession | None = None
        self._retry_base_s = retry_base_s
        self._failures = 0  # retryable failures in a row, over every request to the venue
        # Retry-After is not a backoff matter: the throttle holds the retry (and
        # every other request to the venue) until the venue allows it.
        self._retrying = backoff.on_exception(
            self._waits,
            _RETRIED,
            max_time=max_time_s,
            jitter=backoff.full_jitter,
            on_backoff=self._log_backoff,
            logger=None,  # _log_backoff says it, with the venue's words
        )(self._attempt)

    def _waits(self) -> Generator[float, None, None]:
        """backoff's wait generator: exponential in the venue's failures in a row."""
        yield 0.0  # discarded: backoff primes the generator with send(None)
        while True:
            yield min(MAX_RETRY_WAIT_S, self._retry_base_s * 2 ** min(self._failures - 1, 30))

    async def __aenter__(self) -> Fetcher:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout, headers={"User-Agent": "candled/0.1"}
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def fetch(self, req: HttpRequest) -> Response:
        """Send `req` and return a non-retryable answer (2xx or a 4xx the caller
        should report); raise `FetchError` when retries run out."""
        try:
            return await self._retrying(req)
        except _RETRIED as e:
            raise FetchError(f"{req.path} failed after retries: {e!r}") from e

    async def _attempt(self, req: HttpRequest) -> Response:
        try:
            response = await self._send(req)
        except _RETRIED:
            self._failures += 1
            raise
        self._failures = 0
        return response

    async def _send(self, req: HttpRequest) -> Response:
        assert self._session is not None, "use Fetcher as an async context manager"
        sent_at = await self.throttle.acquire(req.weight)
        async with self._session.request(
            req.method, self._base + req.path, params=dict(req.params), headers=dict(req.headers)
        ) as resp:
            status = resp.status
            facts = self._codec.rate_facts(status, resp.headers)
            # Before the body: a ban or a 429 holds whatever the body turns out to be.
            self.throttle.observe(facts, sent_at)
            if self._on_response is not None:
                self._on_response(status)
            try:
                body = await self._read_body(resp)
            finally:
                if facts.banned and self._on_ban is not None:
                    await self._on_ban(self.throttle.banned_until)
            if status >= 400 and "json" not in resp.content_type:
                self._count_malformed()  # a proxy's or CDN's page, not the venue's error
        if status in RETRY_STATUSES:
            raise RetryableStatus(status)
        return Response(status, body, req)

    async def _read_body(self, resp: aiohttp.ClientResponse) -> bytes:
        """The whole body. (`content.read(n)` would return only what has
        arrived so far: a truncated page.)"""
        body = bytearray()
        try:
            async for chunk in resp.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > self._max_body:
                    break  # unread, the rest is dropped with the connection
            else:
                return bytes(body)
            problem = f"body larger than {self._max_body} bytes"
        except aiohttp.ClientPayloadError as e:
            problem = f"body cut short: {e}"
        self._count_malformed()
        raise UnusableBody(problem)

    def _count_malformed(self) -> None:
        metrics.malformed.labels(self._codec.venue, "http").inc()

    @staticmethod
    def _log_backoff(details: Details) -> None:
        log.warning(
            "request retry",
            tries=details["tries"],
            wait_s=round(details.get("wait", 0.0), 2),
            error=repr(details.get("exception")),
        )
