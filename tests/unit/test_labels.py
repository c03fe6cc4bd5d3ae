"""Tests for outrider.labels: parsing and printing label expressions."""

from __future__ import annotations

import pytest

from outrider.labels import describe_value, format_label_expr, label_expr_problem, parse_label_expr
from outrider.v1 import common_pb2
from tests.helpers.specs import expr


@pytest.mark.parametrize(
    ("text", "key", "op", "values", "canonical"),
    [
        ("tier = edge", "tier", "=", ["edge"], "tier = edge"),
        ("tier=edge", "tier", "=", ["edge"], "tier = edge"),
        ("tier != edge", "tier", "!=", ["edge"], "tier != edge"),
        ("site in (plant-7, plant-9)", "site", "in", ["plant-7", "plant-9"], "site in (plant-7, plant-9)"),
        ("site in(plant-7,plant-9)", "site", "in", ["plant-7", "plant-9"], "site in (plant-7, plant-9)"),
        ("site not in (lab)", "site", "not in", ["lab"], "site not in (lab)"),
        ("site NOT  In (lab)", "site", "not in", ["lab"], "site not in (lab)"),
        ("gpu exists", "gpu", "exists", [], "gpu exists"),
        ("gpu not exists", "gpu", "not exists", [], "gpu not exists"),
        ("cuda >= 12.1", "cuda", ">=", ["12.1"], "cuda >= 12.1"),
        ("mem_gb <= 64", "mem_gb", "<=", ["64"], "mem_gb <= 64"),
        ("t <= -3.5e2", "t", "<=", ["-3.5e2"], "t <= -3.5e2"),
        ("  example.com/zone-a_1 = x  ", "example.com/zone-a_1", "=", ["x"], "example.com/zone-a_1 = x"),
        ('gpu_name = "NVIDIA H100"', "gpu_name", "=", ["NVIDIA H100"], 'gpu_name = "NVIDIA H100"'),
        ("note = ''", "note", "=", [""], 'note = ""'),
        ("v in ('a, b', \"c)\")", "v", "in", ["a, b", "c)"], 'v in ("a, b", "c)")'),
        (r'v = "say \"hi\" \\ bye"', "v", "=", ['say "hi" \\ bye'], r'v = "say \"hi\" \\ bye"'),
        ("v = in", "v", "=", ["in"], "v = in"),  # keywords are plain values after an operator
        ("v = plant:7@x", "v", "=", ["plant:7@x"], "v = plant:7@x"),
    ],
)
def test_parse_label_expr(text: str, key: str, op: str, values: list[str], canonical: str) -> None:
    parsed = parse_label_expr(text)
    assert isinstance(parsed, common_pb2.LabelExpr)
    assert (parsed.key, parsed.op, list(parsed.values)) == (key, op, values)
    assert format_label_expr(parsed) == canonical
    assert parse_label_expr(format_label_expr(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "the expression is empty"),
        ("   ", "the expression is empty"),
        ("tier", "the key 'tier' needs an operator: one of =, !=, in, not in, exists, not exists, >=, <="),
        ("tier == edge",
         "unknown operator '==' (use =, !=, in, not in, exists, not exists, >=, <=); did you mean '='?"),
        ("cuda > 12", "unknown operator '>' (use =, !=, in, not in, exists, not exists, >=, <=); did you mean '>='?"),
        ("cuda => 12", "unknown operator '=>'"),
        ("tier is edge", "unknown operator 'is'"),
        ("my key = x", "unknown operator 'key' (use =, !=, in, not in, exists, not exists, >=, <=); "
                       "label keys cannot contain spaces"),
        ("= edge", "expected a label key first, got '='"),
        ("(a) exists", "expected a label key first, got '('"),
        ("'tier' = edge", "expected a label key first, got 'tier'"),
        ("ti~er = edge", "invalid label key 'ti~er': use letters, digits, '.', '_', '/' and '-'"),
        ("tier =", "'=' needs a value after it"),
        ("tier = (edge)", "expected a value after '=', got '('"),
        ("tier = edge core", "'=' takes one value, got more after 'edge' (quote a value that has spaces; "
                             "for several values use 'KEY in (A, B)')"),
        ("cuda >= 12 13", "'>=' takes one value, got more after '12'"),
        ("cuda >= new", "'>=' compares numbers, got 'new' (write a number such as 12.1 or -3)"),
        ("mem_gb <= 64GB", "'<=' compares numbers, got '64GB'"),
        ("cuda >= 12.1.3", "'>=' compares numbers, got '12.1.3'"),
        ("cuda >= inf", "'>=' compares numbers, got 'inf'"),
        ("cuda >= ''", "'>=' compares numbers, got ''"),
        ("gpu exists yes", "'exists' takes no value, got 'yes'"),
        ("gpu not exists (a)", "'not exists' takes no value, got '('"),
        ("gpu not", "'not' must be followed by 'in' or 'exists', got nothing"),
        ("gpu not = a", "'not' must be followed by 'in' or 'exists', got '='"),
        ("site in plant-7", "'in' needs a list of values in parentheses, like 'KEY in (A, B)'"),
        ("site not in", "'not in' needs a list of values in parentheses"),
        ("site in ()", "'in' needs at least one value in its list"),
        ("site in (a,)", "expected a value after 'a', got ')'"),
        ("site in (, a)", "expected a value after '(', got ','"),
        ("site in (a b)", "expected ',' or ')' after 'a', got 'b'; quote a value that has spaces"),
        ("site in (a", "missing ')' at the end of the list"),
        ("site in (a,", "missing ')' at the end of the list"),
        ("site in (a) b", "unexpected 'b' after the list"),
        ("site in ('it''s')", "expected ',' or ')' after 'it', got 's'"),  # no '' escape: use "it's"
        ("tier = 'edge", "unterminated quoted value starting at \"'edge\""),
        ("tier = a\0b", "must not contain NUL characters"),
    ],
)
def test_parse_label_expr_errors_name_the_text(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_label_expr(text)
    assert str(info.value).startswith(f"invalid label expression {text!r}: {reason}")


def test_parse_label_expr_refuses_non_strings() -> None:
    with pytest.raises(ValueError, match="a label expression must be a string, got 3 \\(a number\\)"):
        parse_label_expr(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value", ["", " ", "a b", "a,b", "(x)", "it's", 'say "hi"', "back\\slash", "=", "<=x", "naïve", "tab\there"]
)
def test_format_label_expr_quotes_what_needs_it_and_round_trips(value: str) -> None:
    for op in ("=", "!=", "in", "not in"):
        e = expr("k", op, value, "plain") if op in ("in", "not in") else expr("k", op, value)
        assert parse_label_expr(format_label_expr(e)) == e


def test_format_label_expr_never_raises_on_bad_wire_values() -> None:
    assert format_label_expr(expr("k", "~", "a", "b c")) == 'k ~ (a, "b c")'
    assert format_label_expr(expr("k", "", "a")) == "k ? a"
    assert format_label_expr(expr("k", "==", "a b")) == 'k == "a b"'
    assert format_label_expr(expr("k", "exists", "a")) == "k exists (a)"
    assert format_label_expr(expr("k", "=")) == "k = ()"
    assert format_label_expr(common_pb2.LabelExpr()) == " ? ()"


@pytest.mark.parametrize(
    ("key", "op", "values", "problem"),
    [
        ("tier", "=", ["edge"], None),
        ("site", "not in", ["a", ""], None),
        ("gpu", "exists", [], None),
        ("cuda", ">=", ["-1.5e3"], None),
        ("", "exists", [], "the label key must not be empty"),
        ("a b", "exists", [], "invalid label key 'a b'"),
        ("tier", "==", ["x"], "unknown operator '==' (use =, !=, in, not in, exists, not exists, >=, <=)"),
        ("tier", "=", [], "'=' takes exactly one value, got 0"),
        ("site", "in", [], "'in' needs at least one value"),
        ("gpu", "exists", ["yes"], "'exists' takes no value, got 1"),
        ("cuda", "<=", ["nan"], "'<=' compares numbers, got 'nan'"),
        ("tier", "=", ["a\0"], "values must not contain NUL characters"),
    ],
)
def test_label_expr_problem_is_the_one_definition_of_valid(
    key: str, op: str, values: list[str], problem: str | None
) -> None:
    found = label_expr_problem(key, op, values)
    if problem is None:
        assert found is None
        # What is valid on the wire is what the text form reads back.
        assert parse_label_expr(format_label_expr(expr(key, op, *values))) == expr(key, op, *values)
    else:
        assert found is not None and found.startswith(problem), found


def test_describe_value() -> None:
    assert [describe_value(v) for v in (None, True, 3, 2.5, "x", [1], {"a": 1}, (1,))] == [
        "null", "true (a boolean)", "3 (a number)", "2.5 (a number)", "'x'", "a list", "a mapping", "a tuple"]
