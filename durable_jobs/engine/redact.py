"""Redact secrets from error messages and tracebacks before they are stored."""

from __future__ import annotations

import re

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+:)[^@\s]+@")
_VALUE = r"(?P<value>[^\s'\",;&)}\]]+)"
_KEY_VALUE = re.compile(
    r"(?i)(?P<key>\b[\w-]*(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|"
    r"credentials?)[\w-]*\b['\"]?\s*[:=]\s*['\"]?)" + _VALUE
)
# An Authorization header's credential, after its scheme if it has one.
_AUTHORIZATION = re.compile(
    r"(?i)(?P<key>\b[\w-]*authorization[\w-]*\b['\"]?\s*[:=]\s*['\"]?)"
    r"(?P<scheme>(?:bearer|basic|digest|token|negotiate|ntlm)\s+)?" + _VALUE
)
# A bearer token wherever it appears ("Bearer eyJ..."): 8 characters or more, with a digit
# or a symbol among them, so that "the bearer instrument" is left alone. (Basic and Digest
# credentials are masked after an Authorization key only: "basic" is a common word.)
_BEARER = re.compile(
    r"(?i)(?P<scheme>\bbearer\s+)(?=[A-Za-z]*[0-9._~+/=-])(?P<value>[A-Za-z0-9._~+/=-]{8,})")
MASK = "***"


def redact(text: str) -> str:
    """Mask passwords in URLs, values of secret-looking keys (``password=``, ``token:``),
    the credential of an Authorization header (``Authorization: Basic ***``) and bearer
    tokens."""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    text = _AUTHORIZATION.sub(lambda m: f"{m.group('key')}{m.group('scheme') or ''}{MASK}", text)
    text = _KEY_VALUE.sub(lambda m: f"{m.group('key')}{MASK}", text)
    return _BEARER.sub(lambda m: f"{m.group('scheme')}{MASK}", text)
