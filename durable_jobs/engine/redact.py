"""Redact secrets from error messages and tracebacks before they are stored."""

from __future__ import annotations

import re

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+:)[^@\s]+@")
_KEY_VALUE = re.compile(
    r"(?i)(?P<key>\b[\w-]*(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|"
    r"authorization|credentials?)[\w-]*\b['\"]?\s*[:=]\s*['\"]?)(?P<value>[^\s'\",;&)}\]]+)"
)
MASK = "***"


def redact(text: str) -> str:
    """Mask passwords in URLs and values of secret-looking keys (``password=``, ``token:``)."""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    return _KEY_VALUE.sub(lambda m: f"{m.group('key')}{MASK}", text)
