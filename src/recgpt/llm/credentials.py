"""Credentials in backend specs and URLs: redact them wherever a spec is recorded, and decide when
an API key may travel at all.

A spec such as `openai:m@http://user:pass@host/v1?api_key=K` carries secrets in the URL. The run
folder (config.json, done.json, results, report), the ledger and the terminal get `redact(spec)`
(`user:***@`, `api_key=***`); a stage hash gets `secret_digest(spec)` next to it, so a changed
password still re-runs the stage without the password itself being written anywhere.

An API key from the environment goes only over HTTPS or to a loopback host: plain HTTP to anything
else is readable by every machine on the path. `RECGPT_ALLOW_INSECURE_KEY=1` is the explicit opt-in.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from urllib.parse import urlparse

from recgpt.settings import INSECURE_KEY_ENV as INSECURE_KEY_ENV  # re-export: callers import it here
from recgpt.settings import settings

REDACTED = "***"

# scheme://userinfo@ : greedy up to the last '@' before the path, as urllib splits a netloc.
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s?#]*)@")
# ?api_key=... / &token=... : query parameters whose name says they hold a secret.
_SECRET_PARAM = re.compile(
    r"(?P<lead>[?&;](?:[\w.-]*[_.-])?(?:api_?key|key|token|secret|password|passwd|pwd|auth|signature|sig|credential)s?=)"
    r"(?P<value>[^&#\s'\"]*)",
    re.IGNORECASE,
)


def _userinfo_secret(userinfo: str) -> str:
    """The secret part of `user:pass` (the password) or of a bare `token`."""
    user, sep, password = userinfo.partition(":")
    return password if sep else user


def redact(text: str) -> str:
    """`text` with every URL password / bare userinfo token and secret query value replaced by `***`."""

    def _info(m: re.Match[str]) -> str:
        user, sep, password = m["userinfo"].partition(":")
        if not sep:  # `https://TOKEN@host`: the whole userinfo is the secret
            return f"{m['scheme']}{REDACTED if user else ''}@"
        return f"{m['scheme']}{user}:{REDACTED if password else ''}@"

    text = _USERINFO.sub(_info, text)
    return _SECRET_PARAM.sub(lambda m: f"{m['lead']}{REDACTED if m['value'] else ''}", text)


def secrets_in(text: str) -> list[str]:
    """The secret strings `redact` would hide (URL passwords / tokens, secret query values)."""
    found = [_userinfo_secret(m["userinfo"]) for m in _USERINFO.finditer(text)]
    found += [m["value"] for m in _SECRET_PARAM.finditer(text)]
    return [s for s in found if s and s != REDACTED]


def secret_digest(text: str) -> str | None:
    """A short sha256 of the secrets in `text` (None without any): lets a hash notice a changed key."""
    found = secrets_in(text)
    if not found:
        return None
    return hashlib.sha256("\0".join(found).encode()).hexdigest()[:16]


def is_redacted(text: str) -> bool:
    """Whether `text` carries a credential placeholder from `redact` (a spec read back from a run)."""
    return redact(text) == text and (
        f":{REDACTED}@" in text or f"={REDACTED}" in text or f"//{REDACTED}@" in text
    )


def is_loopback(host: str) -> bool:
    """Whether a host name / address is this machine (`localhost`, 127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def key_may_travel(url: str) -> bool:
    """Whether an API key may be sent to `url`: HTTPS, a loopback host, or the explicit opt-in."""
    parsed = urlparse(url)
    if parsed.scheme.lower() == "https" or is_loopback(parsed.hostname or ""):
        return True
    return settings().allow_insecure_key


__all__ = [
    "INSECURE_KEY_ENV",
    "REDACTED",
    "is_loopback",
    "is_redacted",
    "key_may_travel",
    "redact",
    "secret_digest",
    "secrets_in",
]
