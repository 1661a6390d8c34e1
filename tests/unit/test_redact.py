"""Secrets are masked in stored error messages and tracebacks (API.md §5)."""

from __future__ import annotations

import pytest

from durable_jobs.engine.redact import redact


@pytest.mark.parametrize(("text", "expected"), [
    ("connect to postgresql://app:s3cret@db/jobs failed",
     "connect to postgresql://app:***@db/jobs failed"),
    ("password=hunter2 user=bob", "password=*** user=bob"),
    ("token: abc123", "token: ***"),
    ('{"api_key": "k-123", "name": "x"}', '{"api_key": "***", "name": "x"}'),
    ("client_secret=xyz&scope=a", "client_secret=***&scope=a"),
    ("X-Api-Key: 0123456789", "X-Api-Key: ***"),
    ("Authorization: Bearer eyJabc.def.ghi", "Authorization: Bearer ***"),
    ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic ***"),
    ('headers={"Authorization": "Bearer eyJhbGciOi.x"}', 'headers={"Authorization": "Bearer ***"}'),
    ("proxy-authorization: Digest abcdefgh12", "proxy-authorization: Digest ***"),
    ("got 401 for Bearer abcdef123456 on /api", "got 401 for Bearer *** on /api"),
    ("Authorization: sk-live-1234", "Authorization: ***"),
    ("password=basic hunter2", "password=*** hunter2"),  # the value is what follows "="
    ("Authorization: Token abc123", "Authorization: Token ***"),
])
def test_secrets_are_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    "Basic validation failed for order 12",
    "the bearer of bad news",
    "the bearer instrument was signed",
    "token bucket empty",
    "ValueError: invalid literal for int() with base 10: 'abc'",
])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text
