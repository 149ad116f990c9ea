"""JSON from peers with a size and a nesting limit checked before the parser runs.

``json.loads`` recurses once per nested array or object, so a body of a few
thousand ``[`` raises RecursionError (not a ValueError) from deep inside the
decoder, and a large enough body costs memory before anything looks at it.
``loads`` therefore measures the text first, with one linear scan that counts
brackets outside strings (RFC 8259 §7: inside a string, ``"`` and ``\\`` are the
only characters that change how the next one is read), and refuses it with
``JSONLimitError`` (a ValueError, so callers that already turn ValueError into an
answer need nothing new).
"""

from __future__ import annotations

import json
import re

#: Deep enough for every message lvsmail exchanges (a registration is 3 levels), far below the recursion limit.
MAX_DEPTH = 16

# The only tokens that matter to the scan: an escape pair (backslash and the byte after it, which
# never opens or closes anything), a quote, a bracket; every other byte is skipped by the regex engine.
_TOKENS = re.compile(r'\\.|[][{}"]', re.DOTALL)


class JSONLimitError(ValueError):
    """A JSON text over the size or nesting limit; the message says which."""


def depth(text: str) -> int:
    """The deepest nesting of arrays and objects in ``data``, counting only brackets outside strings.

    Linear in ``len(text)`` and never recursive; malformed text is measured as far as it goes
    (the parser then reports what is wrong with it).
    """
    deepest = level = 0
    in_string = False
    for match in _TOKENS.finditer(text):
        char = match.group()
        if len(char) == 2:  # an escape pair: inside a string it is one character, outside it is invalid
            continue
        if char == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif char in "[{":
            level += 1
            deepest = max(deepest, level)
        else:
            level = max(0, level - 1)
    return deepest


def loads(data: bytes, *, max_bytes: int, max_depth: int = MAX_DEPTH):
    """``json.loads`` after checking size and depth; JSONLimitError, or ValueError for bad JSON or bad UTF-8.

    Only UTF-8 is accepted (RFC 8259 §8.1), decoded before the scan: ``json.loads`` would also guess
    UTF-16 and UTF-32 from bytes, whose code units could hide brackets from a byte-wise count.
    """
    if len(data) > max_bytes:
        raise JSONLimitError(f"JSON text of {len(data)} bytes exceeds {max_bytes}")
    text = bytes(data).decode("utf-8")  # UnicodeDecodeError is a ValueError
    found = depth(text)
    if found > max_depth:
        raise JSONLimitError(f"JSON nested {found} levels deep; at most {max_depth} accepted")
    return json.loads(text)
