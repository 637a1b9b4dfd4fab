"""The fault tests' log invariants (fault_checks.check_log) must fail on the faults they exist to catch: a
duplicate, a reordering, a record at another offset or partition than reported, a lost success, a
foreign record, a handle settled twice. Plain functions over made-up logs; no broker."""
from __future__ import annotations

import pytest

from aiokprod.metadata import RecordMetadata
from fault_checks import Ledger, check_log, value_of


class FakeHandle:
    """Just enough of a delivery handle for the Ledger: done-callbacks, run when the test says."""

    def __init__(self) -> None:
        self.callbacks = []

    def add_done_callback(self, fn) -> None:
        self.callbacks.append(fn)

    def fire(self) -> None:
        for fn in self.callbacks:
            fn(self)


def ledger_of(places) -> Ledger:
    """One success per (partition, offset) in ``places``, settled once."""
    ledger = Ledger()
    for partition, offset in places:
        handle = FakeHandle()
        sent = ledger.add(handle)
        sent.outcome = RecordMetadata("t", partition, offset, 0)
        handle.fire()
    return ledger


GOOD = {0: [(0, value_of(0)), (1, value_of(2))], 1: [(0, value_of(1))]}


def test_a_consistent_log_passes():
    ledger = ledger_of([(0, 0), (1, 0), (0, 1)])
    ledger.assert_settled_once()
    check_log(ledger, GOOD, idempotent=True)


@pytest.mark.parametrize("log, message", [
    ({0: [(0, value_of(0)), (1, value_of(2)), (2, value_of(2))], 1: [(0, value_of(1))]}, "written 2 times"),
    ({0: [(0, value_of(2)), (1, value_of(0))], 1: [(0, value_of(1))]}, "out of send order"),
    ({0: [(0, value_of(0)), (5, value_of(2))], 1: [(0, value_of(1))]}, "reported offset 1"),
    ({0: [(0, value_of(0)), (1, value_of(2)), (2, value_of(1))], 1: []}, "reported partition 1"),
    ({0: [(0, value_of(0))], 1: [(0, value_of(1))]}, "not in the log"),
    ({0: [(0, value_of(0)), (1, value_of(2)), (2, value_of(9))], 1: [(0, value_of(1))]}, "never sent"),
])
def test_each_violation_is_caught(log, message):
    ledger = ledger_of([(0, 0), (1, 0), (0, 1)])
    with pytest.raises(AssertionError, match=message):
        check_log(ledger, log, idempotent=True)


def test_duplicates_are_allowed_without_idempotence_but_order_still_holds():
    ledger = ledger_of([(0, 0), (1, 0), (0, 2)])
    duplicated = {0: [(0, value_of(0)), (1, value_of(0)), (2, value_of(2))], 1: [(0, value_of(1))]}
    check_log(ledger, duplicated, idempotent=False)
    with pytest.raises(AssertionError, match="written 2 times"):
        check_log(ledger, duplicated, idempotent=True)
    reordered = {0: [(0, value_of(0)), (1, value_of(2)), (2, value_of(0))], 1: [(0, value_of(1))]}
    check_log(ledger_of([(0, 0), (1, 0), (0, 1)]), reordered, idempotent=False)  # a later copy is no reorder
    swapped = {0: [(0, value_of(2)), (1, value_of(0)), (2, value_of(2))], 1: [(0, value_of(1))]}
    with pytest.raises(AssertionError, match="out of send order"):
        check_log(ledger_of([(0, 1), (1, 0), (0, 2)]), swapped, idempotent=False)


def test_settled_twice_or_never_is_caught():
    ledger = ledger_of([(0, 0), (1, 0)])
    ledger.records[0].handle.fire()
    with pytest.raises(AssertionError, match="more than once"):
        ledger.assert_settled_once()
    ledger = Ledger()
    ledger.add(FakeHandle())
    with pytest.raises(AssertionError, match="never settled"):
        ledger.assert_settled_once()
