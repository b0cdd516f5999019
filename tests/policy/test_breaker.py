from __future__ import annotations

from ai_gateway.policy.breaker import BreakerBoard


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_consecutive_failures() -> None:
    clock = Clock()
    board = BreakerBoard(3, 10.0, clock)
    for _ in range(2):
        board.failure("t")
    assert board.allow("t")
    board.failure("t")
    assert not board.allow("t")
    assert board.states() == {"t": "open"}


def test_success_resets_the_count() -> None:
    board = BreakerBoard(2, 10.0, Clock())
    board.failure("t")
    board.success("t")
    board.failure("t")
    assert board.allow("t")


def test_half_open_allows_one_probe_then_closes_or_reopens() -> None:
    clock = Clock()
    board = BreakerBoard(1, 5.0, clock)
    board.failure("t")
    assert not board.allow("t")
    clock.now += 5.0
    assert board.allow("t")  # the probe
    assert not board.allow("t")  # only one at a time
    board.failure("t")
    assert not board.allow("t")
    clock.now += 5.0
    assert board.allow("t")
    board.success("t")
    assert board.allow("t") and board.allow("t")
    assert board.states() == {"t": "closed"}


def test_released_probe_frees_the_slot() -> None:
    clock = Clock()
    board = BreakerBoard(1, 1.0, clock)
    board.failure("t")
    clock.now += 1.0
    assert board.allow("t")
    board.release_probe("t")
    assert board.allow("t")
