"""Behaviour contract of the redesign: patches on tiny pairs are identical to those recorded before it.

The digests in ``tests/fixtures/golden_patches.json`` were written by ``python -m tests.support.golden
write`` on the code before the typed-stage redesign; every tensor and every manifest field but the
local paths must come out the same. Float rounding of the solves depends on the CPU kind (vendor and
instruction set: MKL and torch pick other kernels), so the file holds one set per kind of machine
(``sha256_by_machine``, added from the same contract code) and a run must equal its machine's set.
"""

import json
import sys

import pytest

from tests.support import golden


@pytest.mark.tiny
def test_patches_on_tiny_pairs_equal_the_recorded_ones(tmp_path):
    recorded = json.loads(golden.FILE.read_text())
    if recorded["versions"] != golden.versions():
        pytest.skip(f"digests were recorded with {recorded['versions']}; weight init differs across versions")
    got = golden.compute(tmp_path)
    assert set(got) == set(recorded["sha256"])
    sets = golden.expected_sets(recorded)
    changed = min((sorted(k for k in got if got[k] != want[k]) for want in sets), key=len)
    assert not changed, f"patch content changed for {changed} (machine {golden.machine()})"
    assert sys.modules.get("surgery.hcnr.pipeline") is not None
