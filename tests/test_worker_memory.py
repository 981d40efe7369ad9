"""The worker caps glibc's malloc arenas (agents/worker.py) unless the operator set MALLOC_ARENA_MAX."""
from __future__ import annotations

import platform

import pytest

from agents.worker import limit_malloc_arenas


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_arenas_are_capped_on_glibc(monkeypatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas()


def test_an_operators_malloc_arena_max_is_left_to_glibc(monkeypatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not limit_malloc_arenas()
