"""The --where filter language: what it accepts, what it refuses, and how it says so."""

from __future__ import annotations

import pytest

from nas.errors import ConfigError
from nas.where import MAX_EXPR_CHARS, compile_where

NAMES = ("energy_per_sample_j", "weight_bits", "attention", "is_estimate", "accuracy", "params")
ROW = {"energy_per_sample_j": 1.5e-3, "weight_bits": 8, "attention": "local", "is_estimate": False,
       "accuracy": 0.87, "params": None}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("energy_per_sample_j < 0.002 and weight_bits <= 8", True),
        ("energy_per_sample_j < 2e-3", True),
        ("energy_per_sample_j < 1.5E-3", False),
        ("energy_per_sample_j <= .0015", True),
        ('attention == "linear" or attention in ("local","lowrank")', True),
        ("attention in ['local']", True),
        ("attention not in ('local',)", False),
        ("attention != 'local'", False),
        ("not is_estimate", True),
        ("is_estimate", False),
        ("is_estimate == false", True),
        ("NOT (accuracy > 0.9 OR weight_bits > 8)", True),
        ("0.8 <= accuracy < 0.9", True),
        ("0.9 <= accuracy < 1", False),
        ("weight_bits > -1", True),
        ("params > 0 or params <= 0", False),  # None compares False
        ("not params > 0", True),
        ("params in (1, 2)", False),
        ("attention < 3", False),  # incomparable types compare False
        ("weight_bits == true", False),  # bools and numbers are kept apart
        ('attention == "lo\\"cal"', False),
        ("((weight_bits == 8))", True),
        ("weight_bits in ()", False),
    ],
)
def test_valid_expressions(expr: str, expected: bool) -> None:
    pred = compile_where(expr, NAMES)
    assert pred(ROW) is expected
    assert pred.expr == expr


def test_names_and_missing_keys() -> None:
    pred = compile_where("accuracy > 0.5 and not is_estimate", NAMES)
    assert pred.names == {"accuracy", "is_estimate"}
    assert pred({}) is False  # absent values are None


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('x')",
        "accuracy.__class__",
        "(lambda: 1)()",
        "lambda x: x",
        "accuracy if 1 else 2",
        "accuracy + 1 > 2",
        "accuracy ** 2",
        "open('/etc/passwd')",
        "[x for x in accuracy]",
        "accuracy > 0.5;",
        "accuracy = 1",
        "accuracy > ",
        "",
        "   ",
        "(accuracy > 0.5",
        "accuracy in 'abc'",
        "accuracy > 0.5 accuracy",
        "'unterminated",
        "{}",
    ],
)
def test_malicious_or_malformed_input_is_refused(expr: str) -> None:
    with pytest.raises(ConfigError):
        compile_where(expr, NAMES)


def test_syntax_error_points_at_the_column() -> None:
    with pytest.raises(ConfigError) as err:
        compile_where("accuracy > > 1", NAMES)
    msg = str(err.value)
    assert "column 12" in msg and "accuracy > > 1" in msg
    assert "\n             ^" in msg  # caret under column 12, after the two-space indent
    with pytest.raises(ConfigError, match="column 11.*not a function"):
        compile_where("__import__('os')", ["__import__"])
    with pytest.raises(ConfigError, match="attribute access"):
        compile_where("accuracy.real > 0", NAMES)


def test_unknown_name_lists_allowed_names() -> None:
    with pytest.raises(ConfigError) as err:
        compile_where("acuracy > 0.5", NAMES)
    msg = str(err.value)
    assert "unknown name 'acuracy'" in msg and "did you mean 'accuracy'" in msg
    assert "allowed names: accuracy, attention, energy_per_sample_j, is_estimate, params, weight_bits" in msg
    with pytest.raises(ConfigError, match="unknown name 'system'"):
        compile_where("system", NAMES)


def test_length_and_depth_caps() -> None:
    long = " or ".join(["accuracy > 0.5"] * 40)
    assert len(long) > MAX_EXPR_CHARS
    with pytest.raises(ConfigError, match="at most 500"):
        compile_where(long, NAMES)
    with pytest.raises(ConfigError, match="nesting deeper"):
        compile_where("(" * 40 + "accuracy > 0" + ")" * 40, NAMES)
    with pytest.raises(ConfigError, match="nesting deeper"):
        compile_where("not " * 60 + "is_estimate", NAMES)
    assert compile_where("(" * 10 + "accuracy > 0" + ")" * 10, NAMES)(ROW) is True
