"""HTTP fetcher: one aiohttp session per venue, every request through the
venue's throttle, retries with exponential backoff and full jitter on 429,
403, 5xx, connection errors, timeouts and bodies that cannot be used (cut
short, or past `max_body`). The backoff grows with the venue's failures in a
row, not each request's own: in a 5xx storm the BATCH requests under way back
off as one instead of each probing the venue on its own schedule. Retry-After
is honoured through the throttle: a 429 or 418 blocks the bucket, so the
retry (and every other request to the venue) waits until the venue allows
it. Answers that are not the venue talking (an HTML error page, a body cut
or too large) are counted as malformed.

Credentials stay with the venue: redirects are never followed (a redirect
would carry the key headers to wherever it points; a 3xx is a definite error
naming its status and target origin: fix `rest_url`), and errors are told by
type, status and URL (`describe`), never by an exception's repr, which for
aiohttp's response errors holds the request's headers. A venue that refuses
the key (the codec's `refused_credentials`: for Alpaca and OANDA a 401, or a
403 in the venue's own error format) fails every request at once for
`auth_retry_s`, then one request asks again: no ten minutes of retries, no
hammering with a revoked key, and the daemon goes on with its other venues."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass

import aiohttp
import backoff
from backoff.types import Details
from yarl import URL

from candled import logs, metrics
from candled.errors import CandledError
from candled.throttle import VenueThrottle
from candled.venues import HttpRequest, VenueCodec
from candled.venues.base import CredentialsRefused

log = logs.get("candled.fetch")
# 403: a CDN or firewall turning traffic away for a while (Binance: "WAF limit
# violated"). Where the venue itself refuses the key with a 401 or 403 (its
# codec's `refused_credentials`), retrying cannot help: that fails at once.
RETRY_STATUSES = frozenset({403, 429, 418, 500, 502, 503, 504})
MAX_BODY = 32 * 1024 * 1024  # far above any page a venue sends; a bound, not a target
MAX_RETRY_WAIT_S = 60.0
# After a refused key, requests fail at once for this long; then one asks
# again (a key fixed at the venue's side starts working without a restart).
AUTH_RETRY_S = 300.0


@dataclass(frozen=True)
class Response:
    """A venue's final answer to one request, for the codec to parse."""

    status: int
    body: bytes
    request: HttpRequest


class RetryableStatus(CandledError):
    """An HTTP status worth asking again for (429, 418, 403, 5xx); backoff retries it."""

    def __init__(self, status: int, url: str = "") -> None:
        super().__init__(f"HTTP {status} from {url}" if url else f"HTTP {status}")
        self.status = status


class UnusableBody(CandledError):
    """An answer whose body was cut short or ran past the size bound: asked again."""


class FetchError(CandledError):
    """A request that failed for good (after retries, or a non-retryable answer)."""


class RedirectRefused(FetchError):
    """The venue answered with a redirect, which is not followed."""


_RETRIED = (RetryableStatus, UnusableBody, aiohttp.ClientError, TimeoutError)


def safe_url(url: str | URL) -> str:
    """A URL without its query, fragment or user info: enough to say where a
    request went, nothing a venue may have put beside it."""
    u = URL(url) if isinstance(url, str) else url
    if not u.is_absolute():
        return u.path
    return str(u.with_user(None).with_query(None).with_fragment(None))


def describe(error: BaseException) -> str:
    """An error told by type, status and URL only. The repr (and for some,
    the str) of aiohttp's exceptions holds the request's headers, and so the
    venue's credentials: never log or store them."""
    name = type(error).__name__
    if isinstance(error, RetryableStatus | UnusableBody | FetchError):
        return f"{name}: {error}"  # ours: status, URL and bound, nothing else
    if isinstance(error, aiohttp.ClientResponseError):
        return f"{name}: HTTP {error.status} from {safe_url(error.request_info.real_url)}"
    if isinstance(error, aiohttp.ClientConnectorError):
        cause = error.os_error.strerror or type(error.os_error).__name__
        return f"{name}: cannot connect to {error.host}:{error.port} ({cause})"
    if isinstance(error, OSError) and error.strerror:
        return f"{name}: {error.strerror}"
    return name


class Fetcher:
    """Sends one venue's REST requests: throttled, retried with backoff, credentials kept safe."""

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
        auth_retry_s: float = AUTH_RETRY_S,
    ) -> None:
        self._base = rest_url
        self._auth_retry_s = auth_retry_s
        self._refusal: CredentialsRefused | None = None
        self._refused_until = 0.0  # monotonic; requests fail at once until then
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
            logger=None,  # _log_backoff says it, without the exception's repr
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

    @property
    def refusal(self) -> CredentialsRefused | None:
        """The venue's last refusal of the credentials (None once it accepts them)."""
        return self._refusal

    @property
    def refused_until(self) -> float:
        """`time.monotonic()` until which requests fail without being sent."""
        return self._refused_until if self._refusal is not None else 0.0

    async def fetch(self, req: HttpRequest) -> Response:
        """Send `req` and return a non-retryable answer (2xx or a 4xx the caller
        should report); raise `FetchError` when retries run out or the venue
        redirects, `CredentialsRefused` while the venue refuses the key."""
        if self._refusal is not None and time.monotonic() < self._refused_until:
            # Told once when it came; asked again after the pause. A fresh
            # traceback each time: re-raising one object would grow its own.
            raise self._refusal.with_traceback(None)
        try:
            return await self._retrying(req)
        except _RETRIED as e:
            raise FetchError(
                f"{req.method} {safe_url(self._base + req.path)} failed after retries:"
                f" {describe(e)}"
            ) from None  # the cause's repr holds the request headers: not kept

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
            req.method, self._base + req.path, params=dict(req.params), headers=dict(req.headers),
            allow_redirects=False,  # the key headers would follow the redirect
        ) as resp:  # fmt: skip
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
            location = resp.headers.get("Location", "")
        url = safe_url(self._base + req.path)
        if 300 <= status < 400:
            raise RedirectRefused(
                f"{req.method} {url} answered {status}, a redirect to {_origin(location, url)}:"
                " venue redirects are not followed (is rest_url right?)"
            )
        refusal = self._codec.refused_credentials(status, body)
        if refusal is not None:
            self._refused(refusal)
            raise refusal
        if self._refusal is not None and status < 300:
            self._accepted()  # an answer, not a 5xx or a CDN page: the key works again
        if status in RETRY_STATUSES:
            raise RetryableStatus(status, url)
        return Response(status, body, req)

    def _refused(self, refusal: CredentialsRefused) -> None:
        """Fail every request for `auth_retry_s`: a refused key is said once,
        loudly, and then asked about rarely."""
        if self._refusal is None:
            log.error("venue refused the credentials; its requests fail until the key is fixed",
                      venue=self._codec.venue, error=str(refusal),
                      retry_in_s=self._auth_retry_s)  # fmt: skip
        self._refusal = refusal
        self._refused_until = time.monotonic() + self._auth_retry_s

    def _accepted(self) -> None:
        log.warning("venue accepts the credentials again", venue=self._codec.venue)
        self._refusal = None

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
            problem = f"body cut short: {describe(e)}"
        self._count_malformed()
        raise UnusableBody(problem)

    def _count_malformed(self) -> None:
        metrics.malformed.labels(self._codec.venue, "http").inc()

    def _log_backoff(self, details: Details) -> None:
        error = details.get("exception")
        log.warning(
            "request retry",
            venue=self._codec.venue,
            tries=details["tries"],
            wait_s=round(details.get("wait", 0.0), 2),
            error=describe(error) if isinstance(error, BaseException) else None,
        )


def _origin(location: str, request_url: str) -> str:
    """Where a redirect points, as an origin (its path and query may hold anything)."""
    target = URL(request_url).join(URL(location)) if location else URL(request_url)
    if not target.is_absolute():
        return "nowhere"
    same = target.origin() == URL(request_url).origin()
    return f"{target.origin()}{' (the same origin)' if same else ''}"
