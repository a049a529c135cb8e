"""Building the agent's payload and command from several threads at once (kensa check -H a,b,c --workers 3)."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path
from typing import List

import pytest

from kensa.hosts import payload

BOOTSTRAP = (Path(payload.__file__).parent / "agent" / "bootstrap.py").read_text()


class _SlowFinalizer:
    """Garbage whose finalizer lets other threads run, as subprocess.Popen's and many others' do."""

    def __del__(self) -> None:
        time.sleep(0.0001)


def test_payload_source_transforms_from_several_threads_never_fail() -> None:
    """Four threads transforming agent source while the collector runs finalizers that release the GIL:
    none fails. (CPython before 3.11.9 and 3.12.3 keeps one AST recursion counter per interpreter, and
    ast.parse in two threads at once then raises SystemError: one host's connect would crash the batch.)"""
    failures: List[str] = []

    def transform() -> None:
        for _ in range(150):
            garbage = _SlowFinalizer()
            garbage.cycle = garbage  # type: ignore[attr-defined]  # freed by the collector, not at once
            del garbage
            try:
                payload.for_old_python(BOOTSTRAP)
            except SystemError as exc:
                failures.append(str(exc))

    threshold = gc.get_threshold()
    gc.set_threshold(50)
    try:
        threads = [threading.Thread(target=transform) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        gc.set_threshold(*threshold)
    assert failures == []


def test_payload_is_built_once_when_many_hosts_connect_at_once(monkeypatch: "pytest.MonkeyPatch", tmp_path: Path) -> None:
    """Sixteen threads asking for the payload at the same moment (16 hosts connecting at the start of a
    fleet run) get one and the same payload, built once: each build parses every target-side module, and
    sixteen concurrent builds cost the controller more CPU than the rest of planning. (The controller's
    kept copy is in an empty cache here, so the one build does happen.)"""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(payload, "_BUILT", None)
    builds: List[int] = []
    collect = payload._collect

    def counted() -> object:
        builds.append(1)
        return collect()

    monkeypatch.setattr(payload, "_collect", counted)
    start = threading.Barrier(16)
    found: List[payload.Payload] = []

    def build() -> None:
        start.wait()
        found.append(payload.build_payload())

    threads = [threading.Thread(target=build) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1
    assert len(found) == 16 and all(item is found[0] for item in found)
