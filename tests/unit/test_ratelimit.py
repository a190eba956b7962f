import pytest

from pipeline.merchants.ratelimit import MemoryCounter, RateLimiter, window_bounds


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("now", "window", "expected"),
    [(12.3, 10, (1, 8)), (20.0, 10, (2, 10)), (19.999, 10, (1, 1)), (0.0, 60, (0, 60))],
)
def test_window_bounds(now, window, expected):
    assert window_bounds(now, window) == expected


def test_limit_per_window_then_retry_after_the_window_ends():
    clock = Clock(1_000.5)  # window [1000, 1010)
    limiter = RateLimiter(MemoryCounter(), limit=3, window_s=10, clock=clock)
    decisions = [limiter.hit("k1") for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, True]
    assert [d.remaining for d in decisions] == [2, 1, 0]
    clock.now = 1_006.2
    refused = limiter.hit("k1")
    assert not refused.allowed and refused.remaining == 0 and refused.retry_after_s == 4
    assert limiter.hit("k2").allowed  # other keys are counted apart
    clock.now = 1_010.0  # next window
    again = limiter.hit("k1")
    assert again.allowed and again.remaining == 2


def test_invalid_configuration():
    with pytest.raises(ValueError):
        RateLimiter(MemoryCounter(), limit=0, window_s=10)
