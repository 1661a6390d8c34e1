"""Redact secrets from error messages and tracebacks before they are stored.

Every pattern is anchored at a fixed word (``password``, ``bearer`` ...) and ends with the
secret itself; what lies between is bounded or can only be white space, and URLs are read
by hand, each in its own stretch of text. So the time taken grows with the length of the
text, not with its square: an error message of megabytes without a space in it (a hex
dump) must not keep an actor busy, let alone get it killed for silence.
"""

from __future__ import annotations

import re

# scheme://user:password@host: found by its "://", then read by hand within its own
# stretch of text (to the next URL or the next space), so no stretch is read twice.
_URL_START = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]{0,31}://")
_SPACE = re.compile(r"\s")
_NETLOC_END = re.compile(r"[/?#]")
_KEYWORD = (r"(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|credentials?"
            r"|private[_-]?key|session[_-]?id)")
_ASSIGN = r"[\w-]{0,64}['\"]?\s*[:=]\s*"
# A value is the last thing in its pattern and unbounded: however long, it is masked whole,
# and a greedy run at a pattern's end never backtracks.
_BARE = r"[^\s'\",;&)}\]]+"
# A quoted value to its closing quote (it may hold spaces), or a bare one to a separator.
_KEY_VALUE = re.compile(
    rf"(?i)(?P<key>{_KEYWORD}{_ASSIGN})"
    rf"(?:'(?P<single>[^'\r\n]+)'|\"(?P<double>[^\"\r\n]+)\"|(?P<open>['\"]?)(?P<value>{_BARE}))")
# An Authorization header's credential, after its scheme if it has one.
_SCHEME = r"(?:bearer|basic|digest|token|negotiate|ntlm)\s{1,8}"
_AUTHORIZATION = re.compile(
    rf"(?i)(?P<key>authorization{_ASSIGN})"
    rf"(?:(?P<quote>['\"])(?P<qscheme>{_SCHEME})?[^'\"\r\n]+(?P=quote)"
    rf"|(?P<open>['\"]?)(?P<scheme>{_SCHEME})?{_BARE})")
# A bearer token wherever it appears ("Bearer eyJ..."): 8 characters or more, with a digit
# or a symbol among them, so that "the bearer instrument" is left alone. (Basic and Digest
# credentials are masked after an Authorization key only: "basic" is a common word.)
_BEARER = re.compile(
    r"(?i)(?P<scheme>\bbearer\s{1,8})(?=[A-Za-z]*[0-9._~+/=-])[A-Za-z0-9._~+/=-]{8,}")
# A Cookie or Set-Cookie header ("name: value", not "cookie = ..." in code): all its cookies
# ("Cookie: session=abc; theme=dark": which of them is the secret cannot be told), to the end
# of the line, or, as a quoted value (a dict's repr, bytes, a list), to its closing quote.
_COOKIE = re.compile(
    r"(?i)(?P<key>\b(?:set-)?cookie['\"]?[ \t]*:[ \t]*)"
    r"(?:(?P<pre>\[?b?)(?:'(?P<single>[^'\r\n]+)'|\"(?P<double>[^\"\r\n]+)\")|[^\r\n]+)")
# A PEM private key ("-----BEGIN RSA PRIVATE KEY-----", "... PGP PRIVATE KEY BLOCK-----"): its
# body to the END line; when that was cut off, the run of base64 lines that follows (a
# mention of the BEGIN line, in a traceback's source, masks nothing). Read by hand, like URLs.
_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_PEM_END = "-----END"
_PEM_BODY = re.compile(r"(?:[A-Za-z0-9+/=\r\n]|\\[nr])+")  # newlines, or their escapes
MASK = "***"
# What an error keeps of a message or a traceback: its first and last characters. A message
# of megabytes (a payload dumped into an exception) would otherwise be stored, sent and
# redacted whole at every attempt.
KEEP_HEAD = 48 * 1024
KEEP_TAIL = 16 * 1024
_MARGIN = 8 * 1024  # redacted beyond a cut, so that a secret across it is masked whole


def _mask_url_passwords(text: str) -> str:
    """``postgresql://app:***@db``. The user may be empty (``redis://:pw@cache``); the
    password runs to the last "@" before the host's "/", "?" or "#", as URL parsers read
    it (``app:p@ss@db``), or else to the first "@" (a password holding "/": ``app:a/b@db``).
    """
    starts = list(_URL_START.finditer(text))
    pieces: list[str] = []
    done = 0
    for k, match in enumerate(starts):
        begin = match.end()
        limit = starts[k + 1].start() if k + 1 < len(starts) else len(text)
        space = _SPACE.search(text, begin, limit)
        if space is not None:
            limit = space.start()
        netloc = _NETLOC_END.search(text, begin, limit)
        at = text.rfind("@", begin, netloc.start() if netloc else limit)
        if at < 0:
            at = text.find("@", begin, limit)
        colon = text.find(":", begin, at) if at >= 0 else -1
        if colon < 0 or _NETLOC_END.search(text, begin, colon) or colon + 1 == at:
            continue  # no user:password@ here (a path, a port, an empty password)
        pieces += [text[done:colon + 1], MASK]
        done = at
    return "".join(pieces) + text[done:] if pieces else text


def _mask_private_keys(text: str) -> str:
    """``-----BEGIN PRIVATE KEY-----***-----END PRIVATE KEY-----``."""
    if "PRIVATE KEY" not in text:
        return text
    pieces: list[str] = []
    done = 0
    ends = True  # whether an END line may still follow (each stretch is searched once)
    for match in _PEM_BEGIN.finditer(text):
        if match.start() < done:
            continue  # inside a key masked already
        end = text.find(_PEM_END, match.end()) if ends else -1
        if end < 0:
            ends = False
            body = _PEM_BODY.match(text, match.end())
            if body is None:
                continue
            end = body.end()
        pieces += [text[done:match.end()], MASK]
        done = end
    return "".join(pieces) + text[done:] if pieces else text


def _masked_cookie(match: re.Match[str]) -> str:
    key, pre = match.group("key"), match.group("pre") or ""
    if match.group("single") is not None:
        return f"{key}{pre}'{MASK}'"
    if match.group("double") is not None:
        return f'{key}{pre}"{MASK}"'
    return f"{key}{MASK}"


def _masked_header(match: re.Match[str]) -> str:
    key, quote = match.group("key"), match.group("quote")
    if quote is not None:
        return f"{key}{quote}{match.group('qscheme') or ''}{MASK}{quote}"
    return f"{key}{match.group('open')}{match.group('scheme') or ''}{MASK}"


def _masked_value(match: re.Match[str]) -> str:
    key = match.group("key")
    if match.group("single") is not None:
        return f"{key}'{MASK}'"
    if match.group("double") is not None:
        return f'{key}"{MASK}"'
    return f"{key}{match.group('open')}{MASK}"


def redact(text: str) -> str:
    """Mask passwords in URLs, values of secret-looking keys (``password=``, ``token:``,
    ``private_key=``, ``session_id=``, quoted values whole), the credential of an
    Authorization header (``Authorization: Basic ***``), the cookies of a Cookie or
    Set-Cookie header, the body of a PEM private key and bearer tokens."""
    text = _mask_private_keys(_mask_url_passwords(text))
    text = _AUTHORIZATION.sub(_masked_header, text)
    text = _COOKIE.sub(_masked_cookie, text)
    text = _KEY_VALUE.sub(_masked_value, text)
    return _BEARER.sub(lambda m: f"{m.group('scheme')}{MASK}", text)


def redact_for_storage(text: str) -> str:
    """``redact(text)``, cut to its first ``KEEP_HEAD`` and last ``KEEP_TAIL`` characters
    (with a note of how many were cut between them) when it is longer than both."""
    if len(text) <= KEEP_HEAD + KEEP_TAIL:
        return redact(text)
    cut = len(text) - KEEP_HEAD - KEEP_TAIL
    # A secret may be split by a cut. Each part is redacted twice, alone and with a margin
    # of the text beyond its cut, and what the two agree on is kept: up to where the part's
    # edge made a difference (a URL whose "@" is beyond the cut, say), however much the
    # masks shortened either.
    alone = redact(text[:KEEP_HEAD])
    wider = redact(text[:KEEP_HEAD + _MARGIN])
    head = wider[:_agreed(alone, wider)]
    alone = redact(text[-KEEP_TAIL:])[::-1]
    wider = redact(text[-(KEEP_TAIL + _MARGIN):])[::-1]
    tail = wider[:_agreed(alone, wider)][::-1]
    return f"{head}\n[... {cut:,} characters cut ...]\n{tail}"


def _agreed(a: str, b: str) -> int:
    """The length of the longest common prefix of ``a`` and ``b`` (halving: C compares)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle - 1
    return low
