"""Durations and sizes as users write them."""

import math

import pytest

from jupyter_llm_manager.support.units import bytes_text, format_bytes, format_duration, parse_duration, parse_size


@pytest.mark.parametrize("text, seconds", [
    ("30m", 1800), ("90s", 90), ("1h30m", 5400), ("2h 5m 10s", 7510), ("1.5h", 5400), ("250ms", 0.25),
    ("1d", 86400), (45, 45), (0, 0), ("0", 0), ("12", 12), (None, None),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["never", "forever", -1, "-1", "inf"])
def test_never(text):
    assert math.isinf(parse_duration(text))


@pytest.mark.parametrize("text", ["30 minutes", "m30", "1h junk", "", True, "5x"])
def test_bad_durations_say_what_is_accepted(text):
    with pytest.raises(ValueError, match="30m"):
        parse_duration(text)


@pytest.mark.parametrize("text, size", [
    ("14GB", 14 * 1000**3), ("16GiB", 16 * 1024**3), ("512 MiB", 512 * 1024**2), ("1.5 gb", 1_500_000_000),
    (1024, 1024), ("2048", 2048), ("3T", 3 * 1000**4), ("10kb", 10_000),
])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["14 gigs", "-1", -5, "GB", True])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_formatting():
    assert format_bytes(13_200_000_000) == "13.2 GB"
    assert format_bytes(512) == "512 B" and format_bytes(None) == "?"
    assert format_duration(125) == "2m 05s" and format_duration(math.inf) == "never"
    assert format_duration(3.25) == "3.2s" and format_duration(7300) == "2h 01m"


def test_bytes_text_shows_a_field_in_units_and_a_placeholder_for_none():
    class Report:
        def __init__(self, size):
            self.size_bytes = size

        size_str = bytes_text("size_bytes", missing="n/a")

    assert Report(13_200_000_000).size_str == "13.2 GB"
    assert Report(None).size_str == "n/a"
    with pytest.raises(AttributeError):
        Report(1).size_str = "1 B"  # read-only


def test_an_excerpt_keeps_short_text_and_cuts_long_text_to_the_limit_keeping_its_end():
    from jupyter_llm_manager.support.units import excerpt

    assert excerpt("what to do") == "what to do"
    long = "x" * 10_000_000 + " run pip install foo"
    cut = excerpt(long)
    assert len(cut) == 500 and cut.endswith("run pip install foo") and " … " in cut
    assert len(excerpt("y" * 100, 40)) == 40
