"""Fault injection for `biojepac features check`, `demo` and `bench` (cases in `fault_cases`)."""

import pytest

from fault_cases import CASES
from fault_harness import run_case

COMMANDS = ('features check', 'demo', 'bench',)


@pytest.mark.parametrize("case", [c for cmd in COMMANDS for c in CASES.get(cmd, [])], ids=lambda c: c.id)
def test_fault(case, world, tmp_path):
    problems = run_case(case, world, tmp_path)
    assert not problems, "; ".join(problems)
