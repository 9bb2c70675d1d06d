import pytest
from hypothesis import given, strategies as st

from recsys.durations import format_duration, parse_duration


@pytest.mark.parametrize("text, seconds", [("3600", 3600), ("90s", 90), ("30m", 1800), ("1h", 3600),
                                           ("1h30m", 5400), ("2d", 172800), (" 1H ", 3600), ("0.5h", 1800)])
def test_examples(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1x", "1h 30m", "-5", "m30", "1hh"])
def test_rejects_garbage(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**8))
def test_format_round_trips(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.text(max_size=12))
def test_never_crashes_with_anything_but_value_error(text):
    try:
        assert parse_duration(text) >= 0
    except ValueError:
        pass
