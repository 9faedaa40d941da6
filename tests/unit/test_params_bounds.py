"""Index ranges from user input are checked in constant memory, never expanded first."""

import tracemalloc
from collections.abc import Callable

import pytest

from container_compute.jobs.model import MAX_RANGE_ITEMS, MAX_TASKS, check_ranges, parse_ranges
from container_compute.jobs.params import GatherResultsParams

SMALL_PEAK_BYTES = 5 * 1024 * 1024


def peak_while_refused(call: Callable[[], object], message: str) -> int:
    """Run ``call``, expect a ValueError containing ``message``; return the peak memory."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=message):
            call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("indexes", "message"),
    [
        # Each range is short enough for a per-range length rule: millions of indexes in all.
        (
            "0-999999,1000000-1999999,2000000-2999999,3000000-3999999",
            "indexes: index 999999 is out of range",
        ),
        ("0-99999999999,0-99999999999,0-99999999999", "indexes: index 99999999999 is out"),
        ("7-" + "9" * 5000, r"indexes: index 99999999999999999\.\.\. is out of range"),
        (",".join(["1"] * (MAX_RANGE_ITEMS + 1)), "indexes: has more than 1000 comma-separated"),
        ("1" + " " * 100_000, "indexes: is over 16384 characters"),
    ],
)
def test_huge_indexes_are_refused_without_expanding(indexes: str, message: str) -> None:
    peak = peak_while_refused(lambda: GatherResultsParams(job="j1", indexes=indexes), message)
    assert peak < SMALL_PEAK_BYTES


def test_indexes_are_bounded_by_the_most_tasks_a_job_can_have() -> None:
    GatherResultsParams(job="j1", indexes=f"0-{MAX_TASKS - 1}")
    with pytest.raises(ValueError, match=f"indexes: index {MAX_TASKS} is out of range"):
        GatherResultsParams(job="j1", indexes=f"0-{MAX_TASKS}")


def test_a_known_job_bounds_indexes_before_any_expansion() -> None:
    peak = peak_while_refused(
        lambda: parse_ranges("0-1,1-99999", task_count=2),
        r"index 99999 is out of range \(the job has 2 tasks: 0-1\)",
    )
    assert peak < SMALL_PEAK_BYTES


@pytest.mark.parametrize(
    ("indexes", "message"),
    [
        ("3-1", "range '3-1' runs backwards"),
        ("x", "'x' is not a list of indexes and ranges"),
        ("1,,2", "'1,,2' is not a list"),
        ("1,", "'1,' is not a list"),
        ("-1", "'-1' is not a list"),
        ("\u0661", "'\u0661' is not a list"),  # an Arabic-Indic digit is not an index
    ],
)
def test_bad_ranges_are_named(indexes: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"indexes: {message}"):
        GatherResultsParams(job="j1", indexes=indexes)


def test_good_ranges_are_read_as_before() -> None:
    assert check_ranges(" 0 - 3 , 7 ") == [(0, 3), (7, 7)]
    assert parse_ranges("7,0-3,2", task_count=8) == [0, 1, 2, 3, 7]
    assert parse_ranges("007", task_count=8) == [7]
