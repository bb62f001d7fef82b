"""JSON from outside (uploads, wallet files, label files, exported logs) is measured before it is parsed:
a document nested a thousand levels deep crashes Python's parser, and every reader after it."""
from __future__ import annotations

import re

MAX_JSON_DEPTH = 64          # arrays and objects in arrays and objects; no event nests more than a few
# a JSON string (escapes included; an unterminated one runs to the end) or one bracket: brackets inside
# strings nest nothing. The closing quote is optional so that a match never fails after a long scan.
_JSON_NESTING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]')


def check_json_depth(text_: str, limit: int = MAX_JSON_DEPTH, what: str = "JSON") -> None:
    """Raise ValueError when arrays and objects in `text_` nest deeper than `limit`: Python's parser
    recurses once per level and gives up (RecursionError) near a thousand, and everything that walks the
    value afterwards recurses too. Linear in the text, and a count of brackets for most text."""
    if text_.count("[") + text_.count("{") <= limit:
        return
    depth = 0
    for match in _JSON_NESTING.finditer(text_):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                raise ValueError(f"{what} nests arrays and objects deeper than {limit} levels")
        elif token in "]}":
            depth -= 1
