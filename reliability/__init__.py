"""kensa's reliability report: hostile input, faults and forks.

``python -m reliability [--full|--reduced]`` runs every scenario below and
writes docs/reliability.md from what it measured; nothing in that file is
written by hand. Each scenario is a module with a ``run(ctx) -> Section``:

- :mod:`reliability.fuzz_encoder`: the audit record encoder, in memory and as
  the kernel logged the records;
- :mod:`reliability.fuzz_rules`: the rule loader on hostile YAML and bytes;
- :mod:`reliability.fuzz_paths`: the confined path resolver (the property in
  tests/test_fuzz_paths.py, at a larger size);
- :mod:`reliability.atheris_runs`: coverage-guided runs of the same targets
  (full size, where atheris is installed);
- :mod:`reliability.sanitizers`: the C emitter under ASan, UBSan and valgrind;
- :mod:`reliability.crash`: SIGKILL at every phase boundary, then recovery;
- :mod:`reliability.load`: threads over several roots, every record counted;
- :mod:`reliability.audit_faults`: auditd killed, stopped, a full backlog, no
  capability, a user namespace, during a batch.

:mod:`reliability.machine` puts the audit configuration back (auditd running
and not stopped, backlog limit, rules) whatever happens, including
KeyboardInterrupt and SIGTERM.
"""
