"""Namespace hopping: work lands in the named namespace and the caller stays put."""

from __future__ import annotations

import os
import threading

import pytest

from banger.errors import InvalidInput, NotFound
from banger.net._ns import call_in_netns
from tests import netns


def _my_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


@pytest.mark.netns
def test_runs_inside_and_leaves_the_caller_alone() -> None:
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(reason)
    before = _my_netns()
    with netns.namespace() as ns:
        inside = call_in_netns(ns, _my_netns)
        assert inside == os.stat(f"/run/netns/{ns}").st_ino != before
        with pytest.raises(ZeroDivisionError):
            call_in_netns(ns, lambda: 1 // 0)
    assert _my_netns() == before


def test_current_namespace_runs_inline_without_a_loop() -> None:
    assert call_in_netns(None, threading.current_thread) is threading.current_thread()


async def test_hops_off_a_running_event_loop() -> None:
    # pyroute2's sync API cannot run on a thread whose event loop is running.
    assert call_in_netns(None, threading.current_thread) is not threading.current_thread()


def test_bad_or_missing_namespace() -> None:
    with pytest.raises(NotFound):
        call_in_netns("bgt-missing-ns", lambda: None)
    with pytest.raises(InvalidInput):
        call_in_netns("../etc", lambda: None)
