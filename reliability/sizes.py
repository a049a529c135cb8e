"""How much each scenario does, at the two sizes the program runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Size:
    """Counts for one run of the program; see docs/reliability.md for what each drives."""

    name: str
    encoder_examples: int
    delivered_records: int
    rule_examples: int
    path_scale: int  # multiplies the example counts of tests/test_fuzz_paths.py
    atheris_seconds: int  # per target; 0 leaves atheris out
    sanitizer_records: int  # per scenario of tests/c/stress_emitter.c
    crash_repeats: int  # kill runs per (handler, path, boundary)
    load_threads: int
    load_transactions: int  # per thread
    load_roots: int
    fault_batch: int  # transactions per audit-fault batch


FULL = Size(
    name="full",
    encoder_examples=20_000,
    delivered_records=5_000,
    rule_examples=6_000,
    path_scale=10,
    atheris_seconds=60,
    # stress_emitter.c emits about 3.1 x this (plus 3,662) under ASan/UBSan, and a
    # tenth of that again under valgrind: past one million emits in all.
    sanitizer_records=325_000,
    crash_repeats=2,
    load_threads=8,
    load_transactions=1_000,
    load_roots=4,
    fault_batch=300,
)

# The suite's size (tests/test_reliability.py): enough of each kind of case to
# show the program and its claims work; the figures of record come from FULL.
REDUCED = Size(
    name="reduced",
    encoder_examples=500,
    delivered_records=300,
    rule_examples=300,
    path_scale=1,
    atheris_seconds=0,
    sanitizer_records=3_000,
    crash_repeats=1,
    load_threads=8,
    load_transactions=12,
    load_roots=4,
    fault_batch=12,
)

SIZES = {size.name: size for size in (FULL, REDUCED)}
