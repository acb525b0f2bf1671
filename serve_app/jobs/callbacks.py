"""Job callbacks: which URLs may be called back, when to retry, and one signed delivery.

A callback URL comes from a client, and memeserve will POST to it from inside the
cluster, so it is checked against an allowlist of hosts when the job is submitted
(:func:`check_callback_url`): without that, a client could make memeserve call internal
services or a cloud metadata endpoint. Entries are host names (``hooks.example.com``),
wildcards for subdomains (``*.example.com``: any name below example.com, but not
example.com itself) or IP literals (``10.0.0.7``, ``::1``), which are the only way to
allow an IP address. Any port is allowed. The allowlist is about names: a listed name is
trusted to resolve where its owner says.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import httpx

from serve_app.jobs.signing import SIGNATURE_HEADER, sign

logger = logging.getLogger(__name__)

SCHEMES: Final[tuple[str, ...]] = ("http", "https")
MAX_URL_CHARS: Final[int] = 2048
MAX_ERROR_CHARS: Final[int] = 200
USER_AGENT: Final[str] = "memeserve-callback/1"
_LABEL: Final = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _normalise_host(host: str) -> str:
    """``host`` lower-cased, without one trailing dot, IDNA-encoded; ``ValueError`` if invalid.

    IP literals come back in their canonical form (without brackets).
    """
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    ip = _ip(host)
    if ip is not None:
        return str(ip)
    if host.endswith("."):
        host = host[:-1]
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"invalid host name {host!r}") from None
    labels = host.split(".")
    if not host or len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"invalid host name {host!r}")
    return host


def _entry(entry: str) -> tuple[bool, str]:
    """Whether an allowlist entry is a wildcard, and its normalised name."""
    entry = entry.strip()
    wildcard = entry.startswith("*.")
    name = _normalise_host(entry[2:] if wildcard else entry)
    if wildcard and _ip(name) is not None:
        raise ValueError(f"invalid host name {entry!r}: a wildcard needs a domain name")
    return wildcard, name


def normalise_allowed_hosts(entries: Sequence[str]) -> tuple[str, ...]:
    """The allowlist in normal form (lower case, no trailing dot, IDNA, IPs canonical).

    Raises ``ValueError`` naming the first invalid entry: for checking configuration
    when it is loaded (:func:`check_callback_url` skips invalid entries).
    """
    normalised = []
    for entry in entries:
        wildcard, name = _entry(entry)
        normalised.append(f"*.{name}" if wildcard else name)
    return tuple(normalised)


def _allowed(host: str, allowed_hosts: Sequence[str]) -> bool:
    """Whether the normalised ``host`` matches an entry of ``allowed_hosts``."""
    is_ip = _ip(host) is not None
    for entry in allowed_hosts:
        try:
            wildcard, name = _entry(entry)
        except ValueError:
            logger.debug("skipping invalid callback allowlist entry %r", entry)
            continue
        if wildcard:
            # Names only: a wildcard never admits an IP literal.
            if not is_ip and host.endswith("." + name):
                return True
        elif host == name:
            return True
    return False


def check_callback_url(url: str, allowed_hosts: Sequence[str]) -> str:
    """Return ``url`` normalised if memeserve may call it back, else raise ``ValueError``.

    Refused, with the reason in the message: a scheme other than http or https, user
    info (``user:password@``), a missing or invalid host or port, whitespace or control
    characters, more than 2048 characters, and a host not on ``allowed_hosts`` (see the
    module's docstring; an empty allowlist refuses every URL). Host names compare
    case-insensitively and without a trailing dot. The normalised URL has a lower-case
    scheme and host, no trailing dot, at least ``/`` as path and no fragment.
    """
    if not isinstance(url, str) or not url:
        raise ValueError("the callback URL is empty")
    if len(url) > MAX_URL_CHARS:
        raise ValueError(f"the callback URL is longer than {MAX_URL_CHARS} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url) or "\\" in url:
        raise ValueError("the callback URL contains whitespace, control characters or '\\'")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"the callback URL cannot be parsed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(
            f"the callback URL's scheme must be http or https, not {scheme or 'missing'!r}"
        )
    if "@" in parts.netloc:
        raise ValueError("the callback URL must not carry credentials (user:password@)")
    if not parts.hostname:
        raise ValueError("the callback URL has no host")
    if port == 0:
        raise ValueError("the callback URL's port must not be 0")
    host = _normalise_host(parts.hostname)
    if not allowed_hosts:
        raise ValueError("callbacks are disabled here: no callback hosts are allowed")
    if not _allowed(host, allowed_hosts):
        what = "IP address" if _ip(host) is not None else "host"
        raise ValueError(f"the callback {what} {host!r} is not on the allowed callback hosts")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1, 2, …).

    ``base_s`` after the first, doubling after each next one, never more than ``max_s``.
    """
    if attempt < 1:
        raise ValueError("attempt must be >= 1")
    if base_s <= 0 or max_s < 0:
        raise ValueError("base_s must be > 0 and max_s >= 0")
    return float(min(max_s, base_s * 2.0 ** min(attempt - 1, 64)))


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def deliver(
    url: str,
    body: bytes,
    secret: str,
    timeout_s: float,
    client: httpx.Client | None = None,
) -> str | None:
    """POST ``body`` (JSON) to ``url``, signed with ``secret``; ``None`` if it was accepted.

    Accepted means any 2xx status. Otherwise returns a short error for the job's
    ``last_error``: ``"HTTP 500"``, ``"HTTP 302 redirect (not followed)"`` or the transport
    error (``"ConnectTimeout: …"``). Redirects are never followed, whatever ``client``
    says, and the response body is never read. Without ``client`` a fresh one is used
    (no proxies from the environment) and closed. ``url`` must already have passed
    :func:`check_callback_url`.
    """
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        SIGNATURE_HEADER: sign(secret, body, int(time.time())),
    }
    http = client or httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False)
    try:
        with http.stream(
            "POST", url, content=body, headers=headers, timeout=timeout_s, follow_redirects=False
        ) as response:
            status = response.status_code
            redirect = response.has_redirect_location
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        detail = str(exc).strip()
        return _short(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)
    finally:
        if client is None:
            http.close()
    if 200 <= status < 300:
        return None
    if redirect or 300 <= status < 400:
        return f"HTTP {status} redirect (not followed)"
    return f"HTTP {status}"
