"""Process tuning applied by `serve` (ai_gateway/_runtime.py)."""

from __future__ import annotations

import platform
import sys

import pytest

from ai_gateway._runtime import limit_malloc_arenas, prefer_the_event_loop


def test_the_arena_cap_applies_on_glibc_and_yields_to_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    if platform.libc_ver()[0] == "glibc":
        assert limit_malloc_arenas() is True
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False  # the operator's own setting wins


def test_the_event_loop_gets_the_gil_back_within_half_a_millisecond() -> None:
    before = sys.getswitchinterval()
    try:
        prefer_the_event_loop()
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(before)
