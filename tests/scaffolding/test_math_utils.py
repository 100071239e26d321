"""Answer extraction and equivalence (scaffolding/math_utils.py): pure functions tested directly.
Covers boxed/final-answer/last-number extraction, the pluggable chain, and number parsing."""

from __future__ import annotations

from fractions import Fraction

import pytest

from scaffolding.math_utils import (
    DEFAULT_EXTRACTORS, extract_answer, extract_boxed, extract_final_answer, extract_last_number,
    numeric_equal, numeric_equal_or_string_equal, parse_number, string_equal,
)


@pytest.mark.parametrize("text, expected", [
    (r"so \boxed{42}.", "42"),
    (r"first \boxed{1} then \boxed{2}", "2"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed{a{b{c}}d} tail", "a{b{c}}d"),
    (r"\boxed{7} and a broken \boxed{8", "7"),  # the last *complete* one
    (r"\fbox{x+1}", "x+1"),
    (r"\boxed{}", None),
    ("no box here", None),
    ("", None),
    (None, None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Adding them up. The final answer is 42", "42"),
    ("The final answer is 42.", "42"),
    ("The final answer is: -7", "-7"),
    ("Final answer: 1,000.\nThanks", "1,000"),
    ("**Final Answer:** **12**", "12"),
    ("**Final Answer**: 12", "12"),
    ("The final answer is 3.5. Done", "3.5"),
    (r"The final answer is $\boxed{3/4}$.", "3/4"),
    ("The final answer is $x^2$", "x^2"),
    ("The final answer is 1. No wait, the final answer is 2", "2"),
    ("The final answer is", None),
    ("no answer stated, 5 apples", None),
])
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("it costs 12 dollars", "12"),
    ("from 3 to -4.5 degrees", "-4.5"),
    ("a population of 1,234,567 people", "1234567"),
    ("5-3 = 2", "2"),
    ("(2)-3", "3"),  # a binary minus is not a sign
    ("42.", "42"),
    ("value .5", ".5"),
    ("x2 y3", None),  # digits inside identifiers are not numbers
    ("none", None),
])
def test_extract_last_number(text, expected):
    assert extract_last_number(text) == expected


def test_extract_answer_tries_extractors_in_order_and_is_pluggable():
    text = r"maybe \boxed{8}. The final answer is 7. Check: 9"
    assert extract_answer(text) == "8"  # boxed first
    assert extract_answer(text, (extract_final_answer, extract_boxed)) == "7"
    assert extract_answer(text, [extract_last_number]) == "9"
    assert extract_answer("The final answer is 5. Then 6") == "5"
    assert extract_answer("I think 13") == "13"  # last number as the fallback
    assert extract_answer("I do not know") is None
    assert extract_answer(None) is None
    assert extract_answer("anything", [lambda t: None, lambda t: "  "]) is None  # blank is no answer
    assert extract_answer("anything", [lambda t: "custom"]) == "custom"
    assert DEFAULT_EXTRACTORS == (extract_boxed, extract_final_answer, extract_last_number)


@pytest.mark.parametrize("value, expected", [
    ("42", Fraction(42)), ("-1,000", Fraction(-1000)), ("1e3", Fraction(1000)), ("0.75", Fraction(3, 4)),
    ("3/4", Fraction(3, 4)), ("-3 / 4", Fraction(-3, 4)), (r"\frac{3}{4}", Fraction(3, 4)),
    (r"-\dfrac{1}{2}", Fraction(-1, 2)), ("$5$", Fraction(5)), ("7.", Fraction(7)), (2.5, Fraction(5, 2)),
    (3, Fraction(3)), ("1,2", None), ("1/0", None), ("abc", None), ("nan", None), ("inf", None),
    (float("nan"), None), (True, None), (None, None), ([1], None),
])
def test_parse_number(value, expected):
    assert parse_number(value) == expected


@pytest.mark.parametrize("a, b, equal", [
    ("1,000", "1000", True), ("1e3", "1000", True), ("3/4", "0.75", True), ("0.75", r"\frac{3}{4}", True),
    ("42", "42.0", True), ("1", "1.0000001", True), ("1", "1.01", False), ("0", "-0", True),
    ("42", "43", False), ("42", "forty-two", False), (None, "1", False), ("1/3", "0.333333", True),
])
def test_numeric_equal(a, b, equal):
    assert numeric_equal(a, b) is equal


def test_numeric_equal_tolerance_is_adjustable():
    assert not numeric_equal("100", "101")
    assert numeric_equal("100", "101", rel_tol=0.02)
    assert numeric_equal("0", "1e-9", abs_tol=1e-6) and not numeric_equal("0", "1e-9")


def test_string_equal_normalises_whitespace_case_and_trailing_period():
    assert string_equal("  Paris. ", "paris")
    assert string_equal("New   York", "new york")
    assert string_equal("$x^2$", "x^2")
    assert not string_equal("Paris", "London")
    assert not string_equal(None, None)


def test_numbers_compare_as_numbers_and_text_as_text():
    assert numeric_equal_or_string_equal("1,000", "1e3")
    assert not numeric_equal_or_string_equal("1000", "1001")
    assert numeric_equal_or_string_equal("Yes.", "yes")
    assert not numeric_equal_or_string_equal("12", "twelve")
