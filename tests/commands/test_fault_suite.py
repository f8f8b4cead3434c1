"""The fault-injection suite of issue 14 is countable and large enough: at least 60 cases, in every class.

Every fault case carries ``@pytest.mark.fault("<class>")`` (classes in ``tests/support/faults.py``); run them
alone with ``pytest -m fault``. This test collects the suite in a child pytest (nothing runs) and counts it.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.faults import FAULT_CLASSES

REPO = Path(__file__).resolve().parents[2]
#: the fewest cases per class (the issue asks for 60 in all, "covering every class")
AT_LEAST = {"patch": 20, "folder": 15, "text": 20, "outputs": 15, "interruption": 5}


def test_the_fault_suite_has_at_least_60_cases_in_every_class(tmp_path):
    counted = tmp_path / "faults.json"
    env = {**os.environ, "SURGERY_FAULT_COUNT": str(counted)}
    args = ["-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "tests.support.faults"]
    proc = subprocess.run(
        [sys.executable, *args, "-m", "fault", "tests"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cases = json.loads(counted.read_text())
    per_class = collections.Counter(cases.values())
    assert set(per_class) <= set(FAULT_CLASSES), per_class
    assert sum(per_class.values()) >= 60, per_class
    for cls, least in AT_LEAST.items():
        assert per_class[cls] >= least, (cls, per_class)
