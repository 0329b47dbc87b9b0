"""The bench's own arithmetic: latency over the run, by window of send times."""

from tests.bench import by_window


def test_latency_by_window_groups_by_send_time_and_sorts_each_window() -> None:
    points = [(0.1, 0.030), (4.9, 0.010), (2.0, 0.020), (5.0, 0.5), (17.2, 0.040)]
    assert by_window(points, 5.0) == [
        {"from_s": 0.0, "alerts": 3, "p50": 0.02, "p99": 0.03, "max": 0.03},
        {"from_s": 5.0, "alerts": 1, "p50": 0.5, "p99": 0.5, "max": 0.5},
        {"from_s": 15.0, "alerts": 1, "p50": 0.04, "p99": 0.04, "max": 0.04},
    ]


def test_latency_by_window_of_nothing_is_empty() -> None:
    assert by_window([], 5.0) == []
