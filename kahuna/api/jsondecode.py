"""The one JSON decoder for request bodies: anything that parses but that the stores or Python
cannot hold is refused here as a 400 naming the problem, before validation, so nothing is stored
and no ERROR line is logged (these inputs are reachable unauthenticated through /login).

Refused: NaN/Infinity (not JSON, Python accepts them), numbers that overflow a double (1e999),
integers outside 64 bits (both stores hold int64; beyond 4,300 digits Python itself refuses to
convert), nesting deeper than MAX_DEPTH (the C scanner recurses; ~1,000 levels is a
RecursionError), lone surrogates (not encodable as UTF-8: SQLite and BSON refuse them) and NUL
characters (BSON keys cannot hold them; no name or text field needs one).
"""

from __future__ import annotations

import json
import math
from typing import Any

from kahuna.resources.errors import Invalid

MAX_DEPTH = 64
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def _constant(name: str):
    raise Invalid(f"malformed JSON: {name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Invalid(f"malformed JSON: number {text[:40]!r} is out of range")
    return value


def _int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > 19:
        raise Invalid(f"malformed JSON: integer of {len(digits)} digits is out of the 64-bit range")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise Invalid(f"malformed JSON: integer {text} is out of the 64-bit range")
    return value


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise Invalid("malformed JSON: strings must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid("malformed JSON: strings must not contain lone surrogates (\\ud800-\\udfff)") from None


def _check_tree(root: Any) -> None:
    stack = [(root, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                raise Invalid(f"malformed JSON: nested deeper than {MAX_DEPTH} levels")
            if isinstance(value, dict):
                for key, item in value.items():
                    _check_text(key)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in value)


def decode(raw: bytes) -> Any:
    """Decode a request body; raises Invalid (400) for anything malformed or unstorable."""
    try:
        value = json.loads(raw, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except RecursionError:
        raise Invalid(f"malformed JSON: nested deeper than {MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Invalid(f"malformed JSON: {exc}") from None
    except ValueError as exc:  # int/float conversion limits not caught above
        raise Invalid(f"malformed JSON: {exc}") from None
    _check_tree(value)
    return value
