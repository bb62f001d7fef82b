"""File downloads: the one place a Content-Disposition header is written (RFC 6266 with RFC 5987/8187).

A file name comes from data (a policy's name, an id): written into the header as it is, a line break
ends the header (the server drops the connection), a `"` or `;` adds parameters of the sender's
choosing, and a name outside Latin-1 cannot be sent at all. So every header is

    attachment; filename="ascii-safe"; filename*=UTF-8''percent-encoded

`filename` is a fallback for old clients: ASCII letters, digits and `._-+()@,=~!#$&^'` only (accents
dropped, anything else `_`); `filename*` is the name itself, UTF-8 and percent-encoded, with control
characters and path separators made `_` (a downloaded file must not be named `../x` or hold a line
break). Clients that know RFC 6266 (every current browser, curl -OJ, Python's email parser) use it.
"""
from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

MAX_NAME = 200                                   # characters of the decoded name; the rest is cut
_FALLBACK_UNSAFE = re.compile(r"[^A-Za-z0-9._\-+()@,=~!#$&^']")
_UNSAFE_CATEGORIES = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
# RFC 5987 attr-char: ALPHA / DIGIT / "!" / "#" / "$" / "&" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~"
_ATTR_CHARS = "!#$&+-.^_`|~"


def safe_name(name: str, default: str = "download") -> str:
    """The file name as a client should save it: control and format characters, line and paragraph
    separators, / and \\ become _; surrounding spaces and dots go; at most MAX_NAME characters."""
    cleaned = "".join("_" if unicodedata.category(c) in _UNSAFE_CATEGORIES or c in "/\\" else c
                      for c in unicodedata.normalize("NFC", name or ""))
    cleaned = cleaned.strip(" .")[:MAX_NAME].strip(" .")
    return cleaned or default


def ascii_name(name: str, default: str = "download") -> str:
    """The ASCII fallback: accents dropped (é -> e), every other unsafe character _ (runs of them as one),
    the extension kept, `default` for a name with nothing ASCII left."""
    full = safe_name(name, default)
    plain = "".join(c for c in unicodedata.normalize("NFKD", full) if not unicodedata.combining(c))
    stem, dot, extension = plain.rpartition(".")
    if not dot:
        stem, extension = plain, ""

    def clean(part: str) -> str:
        return re.sub(r"_+", "_", _FALLBACK_UNSAFE.sub("_", part)).strip(" ._-")
    stem, extension = clean(stem) or default, clean(extension)[:16]
    return stem + (f".{extension}" if extension else "")


def content_disposition(name: str, *, inline: bool = False) -> str:
    """The header's value: always Latin-1 (ASCII, in fact), one line, and the two parameters only."""
    full = safe_name(name)
    return (f'{"inline" if inline else "attachment"}; filename="{ascii_name(full)}"; '
            f"filename*=UTF-8''{quote(full, safe=_ATTR_CHARS, encoding='utf-8')}")


def attachment(name: str) -> dict[str, str]:
    """Response headers for a download named `name` (a str from anywhere: it is made safe here)."""
    return {"content-disposition": content_disposition(name)}
