"""API keys and the bind check of `recsys serve`.

Keys come from `RECSYS_API_KEYS` (comma- or whitespace-separated). A request
carries one in the `X-API-Key` header or as `Authorization: Bearer KEY`.
Keys are compared in constant time: the sha256 of the given key against the
sha256 of every configured key with `hmac.compare_digest`, all of them every
time (neither the position of a matching key nor a key's length shows in the
time taken).

The server listens on a loopback address unless told otherwise; a public
address without keys is refused unless the operator says `--insecure`.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re

from recsys.errors import UserError

API_KEYS_ENV = "RECSYS_API_KEYS"
KEY_HEADER = "X-API-Key"


def parse_keys(text: str | None) -> tuple[str, ...]:
    """The keys of a `RECSYS_API_KEYS` value ("k1,k2" or "k1 k2"); empty or unset: none."""
    return tuple(k for k in re.split(r"[,\s]+", text or "") if k)


def api_keys_from_env(environ=None) -> tuple[str, ...]:
    return parse_keys((os.environ if environ is None else environ).get(API_KEYS_ENV))


class KeyChecker:
    """Answers whether a presented key is one of the configured keys, in constant time."""

    def __init__(self, keys):
        self._digests = tuple(hashlib.sha256(k.encode()).digest() for k in keys)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def matches(self, presented: str | None) -> bool:
        if presented is None:
            presented = ""
        given = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = False
        for digest in self._digests:  # no early exit: the time does not say which key matched
            found |= hmac.compare_digest(given, digest)
        return found and bool(presented)


def presented_key(x_api_key: str | None, authorization: str | None) -> str | None:
    """The key a request carries: X-API-Key, else the token of `Authorization: Bearer TOKEN`."""
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public address


def check_bind(host: str, keys, insecure: bool) -> None:
    """Refuse to serve a non-loopback address without API keys, unless `insecure`."""
    if is_loopback(host) or keys or insecure:
        return
    raise UserError(
        f"Refusing to listen on {host}, an address other machines can reach, without API keys. "
        f"Set {API_KEYS_ENV}=KEY1,KEY2 (clients then send the header `{KEY_HEADER}: KEY1`), or pass "
        "--insecure to serve it without keys on purpose (for example behind a gateway that checks them).")
