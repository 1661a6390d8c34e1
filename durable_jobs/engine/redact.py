"""Redact secrets from error messages and tracebacks before they are stored."""

from __future__ import annotations

import re

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+:)[^@\s]+@")
_KEY_VALUE = re.compile(
    r"(?i)(?P<key>\b[\w-]*(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|"
    r"authorization|credentials?)[\w-]*\b['\"]?\s*[:=]\s*['\"]?)"
    r"(?P<scheme>(?:bearer|basic|digest|token|negotiate|ntlm)\s+)?(?P<value>[^\s'\",;&)}\]]+)"
)
# A bearer token wherever it appears ("Bearer eyJ..."), 8 characters or more. (Basic and
# Digest credentials are masked after an Authorization key only: "basic" is a common word.)
_BEARER = re.compile(r"(?i)(?P<scheme>\bbearer\s+)(?P<value>[A-Za-z0-9._~+/=-]{8,})")
MASK = "***"


def redact(text: str) -> str:
    """Mask passwords in URLs, values of secret-looking keys (``password=``, ``token:``,
    ``Authorization: Basic ...``) and bearer tokens."""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    text = _KEY_VALUE.sub(lambda m: f"{m.group('key')}{m.group('scheme') or ''}{MASK}", text)
    return _BEARER.sub(
        lambda m: m.group(0) if m.group("value") == MASK else f"{m.group('scheme')}{MASK}", text)
