"""How much each benchmark measures in a full run and in a quick one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class Sizes:
    """Sample counts and time budgets for one run."""

    name: str
    cheap: int  # samples per scenario for rows that never enter the kernel
    kernel: int  # samples per kernel row with auditd healthy
    stopped_budget_s: float  # time budget of one kernel row with auditd stopped
    hostname: int  # audit_log_user_message with a host name: resolves it every call
    hostname_budget_s: float
    rounds: int  # rows are interleaved in this many rounds so drift hits all alike
    sustained: int  # records for the sender's sustained rate
    paced_rates: Tuple[int, ...]
    paced_seconds: float
    txn_trivial: int  # transactions per emitter variant
    txn_file: int
    batch: int  # transactions per batch
    batch_reps: int


FULL = Sizes(
    name="full",
    cheap=100_000,
    kernel=20_000,
    stopped_budget_s=3.0,
    hostname=200,
    hostname_budget_s=2.0,
    rounds=10,
    sustained=100_000,
    paced_rates=(10_000, 50_000, 100_000, 200_000),
    paced_seconds=1.0,
    txn_trivial=2_000,
    txn_file=400,
    batch=1_000,
    batch_reps=3,
)

QUICK = Sizes(
    name="quick",
    cheap=10_000,
    kernel=1_000,
    stopped_budget_s=0.3,
    hostname=10,
    hostname_budget_s=0.2,
    rounds=4,
    sustained=10_000,
    paced_rates=(10_000, 100_000),
    paced_seconds=0.2,
    txn_trivial=100,
    txn_file=30,
    batch=100,
    batch_reps=1,
)
