"""Answer extraction and answer equivalence for math-style outputs (no sympy).

Extractors take a model's text and return the answer as a string, or None when none parses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

Extractor = Callable[[str], "str | None"]
Equivalence = Callable[[Any, Any], bool]

_BOXED_OPENERS = ("\\boxed{", "\\fbox{")
# X runs to the end of its sentence: a period followed by a space or the end, a newline, the end
_FINAL_ANSWER = re.compile(r"final\s+answer\**\s*(?:is\s*:?|:)\s*(?P<value>[^\n]*?)\s*(?:\.(?:\s|$)|\n|$)",
                           re.IGNORECASE)
# a sign only where it is not a binary minus ("5-3" -> "3"), thousands groups, then decimals
_NUMBER = re.compile(r"(?<![\w.])(?:(?<![0-9)])-)?(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?"
                     r"|(?<![\w.])-?\.[0-9]+")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_THOUSANDS = re.compile(r"[+-]?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?")
_FRACTION = re.compile(r"(?P<num>[+-]?[0-9]+)\s*/\s*(?P<den>[+-]?[0-9]+)")
_LATEX_FRAC = re.compile(r"(?P<sign>[+-]?)\\[dt]?frac\{(?P<num>[^{}]+)\}\{(?P<den>[^{}]+)\}")


# --- extraction ------------------------------------------------------------------------------------
def extract_boxed(text: str | None) -> str | None:
    """The content of the last complete `\\boxed{...}` (or `\\fbox{...}`), nested braces kept."""
    if not text:
        return None
    starts = sorted((i for opener in _BOXED_OPENERS for i in _find_all(text, opener)), reverse=True)
    for start in starts:  # the last one that closes wins
        body_start = text.index("{", start) + 1
        depth = 1
        for pos in range(body_start, len(text)):
            ch = text[pos]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    value = text[body_start:pos].strip()
                    return value or None
    return None


def extract_final_answer(text: str | None) -> str | None:
    """X from the last "The final answer is X" / "Final answer: X" (a `\\boxed{}` in X is opened)."""
    if not text:
        return None
    matches = list(_FINAL_ANSWER.finditer(text))
    if not matches:
        return None
    value = matches[-1].group("value")
    boxed = extract_boxed(value)
    if boxed is not None:
        return boxed
    value = value.strip(" \t*").rstrip(".").strip(" \t*")
    if len(value) >= 2 and value[0] == value[-1] == "$":
        value = value[1:-1].strip()
    return value or None


def extract_last_number(text: str | None) -> str | None:
    """The last number in the text: "-3", "2.5", "1,000" (returned as "1000")."""
    if not text:
        return None
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    return matches[-1].replace(",", "")


DEFAULT_EXTRACTORS: tuple[Extractor, ...] = (extract_boxed, extract_final_answer, extract_last_number)


def extract_answer(text: str | None, extractors: Sequence[Extractor] = DEFAULT_EXTRACTORS) -> str | None:
    """The first answer any extractor finds, tried in order; None when none parses."""
    if not text:
        return None
    for extractor in extractors:
        value = extractor(text)
        if value is not None and value.strip():
            return value.strip()
    return None


# --- equivalence -----------------------------------------------------------------------------------
def parse_number(value: Any) -> Fraction | None:
    """An exact number from "42", "-1,000", "1e3", "0.75", "3/4", "\\frac{3}{4}", "$5$", or int/float/
    Fraction; None when the value is not one number (text, nan, inf, bool, None)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, Fraction)):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(value) if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    s = value.strip().rstrip(".").strip()
    if len(s) >= 2 and s[0] == s[-1] == "$":
        s = s[1:-1].strip()
    s = s.replace(" ", "") if _looks_numeric(s) else s
    if _PLAIN_NUMBER.fullmatch(s):
        return Fraction(s)
    if _THOUSANDS.fullmatch(s):
        return Fraction(s.replace(",", ""))
    for pattern in (_FRACTION, _LATEX_FRAC):
        m = pattern.fullmatch(s)
        if m:
            num, den = parse_number(m.group("num")), parse_number(m.group("den"))
            if num is None or den is None or den == 0:
                return None
            sign = -1 if m.groupdict().get("sign") == "-" else 1
            return sign * num / den
    return None


def numeric_equal(a: Any, b: Any, rel_tol: float = 1e-6, abs_tol: float = 0.0) -> bool:
    """True when both parse as numbers (see `parse_number`) and are close; False otherwise."""
    x, y = parse_number(a), parse_number(b)
    if x is None or y is None:
        return False
    if x == y:
        return True
    return math.isclose(float(x), float(y), rel_tol=rel_tol, abs_tol=abs_tol)


def normalize_string(value: Any) -> str:
    """Case-folded, whitespace collapsed, surrounding `$` and trailing periods removed."""
    s = " ".join(str(value).split()).casefold()
    if len(s) >= 2 and s[0] == s[-1] == "$":
        s = s[1:-1].strip()
    return s.rstrip(".").strip()


def string_equal(a: Any, b: Any) -> bool:
    """Equal after `normalize_string`; None never equals anything."""
    if a is None or b is None:
        return False
    return normalize_string(a) == normalize_string(b)


def numeric_equal_or_string_equal(a: Any, b: Any) -> bool:
    """Numbers compare as numbers ("1,000" == "1e3"); anything else as normalised strings."""
    if parse_number(a) is not None and parse_number(b) is not None:
        return numeric_equal(a, b)
    return string_equal(a, b)


def _looks_numeric(s: str) -> bool:
    return bool(s) and all(ch in "0123456789+-.,/eE " for ch in s)


def _find_all(text: str, needle: str):
    start = text.find(needle)
    while start != -1:
        yield start
        start = text.find(needle, start + 1)
