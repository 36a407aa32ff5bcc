"""Fault injection for `biojepac train state | biojepac | stream-pretrain`: screens, shards and options (cases in `fault_cases`)."""

import pytest

from fault_cases import CASES
from fault_harness import run_case

COMMANDS = ('train state', 'train biojepac', 'train stream-pretrain', 'train state-stream',)


@pytest.mark.parametrize("case", [c for cmd in COMMANDS for c in CASES.get(cmd, [])], ids=lambda c: c.id)
def test_fault(case, world, tmp_path):
    problems = run_case(case, world, tmp_path)
    assert not problems, "; ".join(problems)
