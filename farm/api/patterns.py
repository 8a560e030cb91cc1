r"""Regular expressions for the OpenAPI schema, derived from the rules they describe.

Each pattern is built from the function or constant that *is* the rule (never a copied
literal), by asking it about every code point of the BMP once:

* :func:`farm.spec.has_control_chars` — the control characters a text may not hold;
* :func:`farm.spec.normalize_prompt` — the characters that normalise away (whitespace), so
  "not blank" is "holds a character that does not";
* :data:`farm.client.library.LABEL_FIRST_CHARS` / ``LABEL_MORE_CHARS`` after ``str.lower()`` —
  the characters a review label may be written with (``K``, and the Kelvin sign, lowercase to ``k``);
* :meth:`str.isprintable` on Latin-1 — what an HTTP header value can carry and an idempotency key accepts.

Semantics: JSON Schema's, ECMA-262 (what schemathesis and the Rust/JS validators use): ``$`` is
the end of the text. The patterns stay in the subset Python's ``re`` reads the same way
(character classes of ``\uXXXX`` escapes, bounded repeats); where the API checks a pattern itself it
uses :func:`matches` (a full match: ECMA's reading). farm's own tag key check is Python's
``re.match`` with ``$``, which also takes one final newline: :func:`python_end_as_ecma` spells that.

Producer code: no torch, no numpy.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from functools import cache

from farm.client.library import LABEL_FIRST_CHARS, LABEL_MORE_CHARS, MAX_LABEL_CHARS
from farm.spec import has_control_chars, normalize_prompt

#: The Basic Multilingual Plane: every character the derived classes hold lies in it (checked).
_BMP = 0x10000
_SURROGATES = range(0xD800, 0xE000)
#: The derived sets of code points.
_SETS = ("control", "blank", "space", "label_first", "label_more")
#: Latin-1: an HTTP header value's characters as Starlette decodes them.
_LATIN1 = 0x100


def char_class(points: Iterable[int], *, negate: bool = False) -> str:
    r"""A character class of ``points`` as ``\uXXXX`` ranges (readable by Python ``re`` and ECMA-262)."""
    ordered = sorted(set(points))
    if not ordered or ordered[-1] >= _BMP:
        raise ValueError("a derived class must hold BMP characters, at least one")
    ranges: list[tuple[int, int]] = []
    for point in ordered:
        if ranges and point == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], point)
        else:
            ranges.append((point, point))
    body = "".join(f"\\u{lo:04x}" if lo == hi else f"\\u{lo:04x}-\\u{hi:04x}" for lo, hi in ranges)
    return f"[{'^' if negate else ''}{body}]"


def _classify(points: Iterable[int]) -> dict[str, frozenset[int]]:
    """The code points of ``points`` each rule picks out (asked of the rule's own function)."""
    found: dict[str, set[int]] = {name: set() for name in _SETS}
    for point in points:
        if point in _SURROGATES:
            continue
        ch = chr(point)
        if has_control_chars(ch):
            found["control"].add(point)
        elif normalize_prompt(ch) == "":
            found["blank"].add(point)
        if ch.isspace():  # what str.strip() removes around a label
            found["space"].add(point)
        lowered = ch.lower()
        if len(lowered) == 1 and lowered in LABEL_MORE_CHARS:
            found["label_more"].add(point)
            if lowered in LABEL_FIRST_CHARS:
                found["label_first"].add(point)
    return {name: frozenset(found[name]) for name in _SETS}


@cache
def _derived() -> dict[str, frozenset[int]]:
    """Every derived set, from one pass over the BMP (a fraction of a second, once per process).

    No character beyond the BMP is a control character, whitespace or a label character (Unicode's
    ``Cc`` and ``White_Space`` lie in it); :func:`beyond_bmp` checks that, for the unit tests.
    """
    return _classify(range(_BMP))


def beyond_bmp() -> dict[str, frozenset[int]]:
    """What the rules pick out beyond the BMP (every set empty; a full pass, several seconds)."""
    return _classify(range(_BMP, sys.maxunicode + 1))


def control_chars() -> frozenset[int]:
    """The code points :func:`farm.spec.has_control_chars` refuses."""
    return _derived()["control"]


def blank_chars() -> frozenset[int]:
    """The code points (other than refused control characters) a prompt's normalisation removes: whitespace."""
    return _derived()["blank"]


def no_control_pattern() -> str:
    """Text without the control characters farm refuses (tab, newline and CR are fine)."""
    return f"^{char_class(control_chars(), negate=True)}*$"


def not_blank_pattern() -> str:
    """Text without refused control characters holding at least one character that is not whitespace."""
    allowed = char_class(control_chars(), negate=True)
    visible = char_class(control_chars() | blank_chars(), negate=True)
    return f"^{allowed}*{visible}{allowed}*$"


def label_pattern() -> str:
    """A review label as given: surrounding whitespace, then 1-MAX_LABEL_CHARS label characters in any case."""
    derived = _derived()
    space = char_class(derived["space"])
    first, more = char_class(derived["label_first"]), char_class(derived["label_more"])
    return f"^{space}*{first}{more}{{0,{MAX_LABEL_CHARS - 1}}}{space}*$"


def header_value_pattern(max_chars: int) -> str:
    """1 to ``max_chars`` printable Latin-1 characters, none of them a space at either end.

    (HTTP drops spaces around a header value, so only such values arrive as sent.)
    """
    printable = [c for c in range(_LATIN1) if chr(c).isprintable()]
    inner = char_class(printable)
    edge = char_class(c for c in printable if not chr(c).isspace())
    return f"^{edge}(?:{inner}{{0,{max_chars - 2}}}{edge})?$"


def matches(pattern: str, value: str) -> bool:
    """Whether ``value`` matches the anchored ``pattern`` (``^...$``) as JSON Schema reads it: the whole text."""
    if not (pattern.startswith("^") and pattern.endswith("$")):
        raise ValueError(f"expected an anchored pattern, got {pattern!r}")
    return re.fullmatch(pattern, value) is not None


def python_end_as_ecma(pattern: str) -> str:
    r"""A ``^...$`` pattern applied with Python's ``re.match``, spelled for ECMA-262.

    Python's closing ``$`` also matches before one final newline (``re.match("^k$", "k\n")``);
    ECMA's does not, so there ``^...\n?$`` says the same thing.
    """
    if not (pattern.startswith("^") and pattern.endswith("$")) or pattern.endswith("\\$"):
        raise ValueError(f"expected an anchored pattern, got {pattern!r}")
    return pattern[:-1] + "\\n?$"
