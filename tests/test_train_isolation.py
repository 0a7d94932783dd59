"""The training tests leave the test process as they found it: thread count, random states, default dtype,
working directory, environment and the 'train' logger (which a Trainer gives its own handlers and stops from
propagating: left so, it hides train.data's warnings from later tests' caplog). Checked in a fresh pytest process
by a probe test that records the state before a selection of the training tests and compares it after them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = '''
import logging, os, pickle, random
import numpy as np
import torch
import torch._dynamo  # noqa: F401 - its first import sets TORCHINDUCTOR_CACHE_DIR (torch's, not a test's doing)

_before = {}


def _state():
    lg = logging.getLogger("train")
    return {
        "threads": torch.get_num_threads(),
        "torch_rng": bytes(torch.get_rng_state().numpy()),
        "numpy_rng": pickle.dumps(np.random.get_state()),
        "python_rng": random.getstate(),
        "default_dtype": torch.get_default_dtype(),
        "cwd": os.getcwd(),
        "env": {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"},
        "train_logger": (list(lg.handlers), lg.propagate, lg.level),
        "root_logger": [h for h in logging.getLogger().handlers if not type(h).__module__.startswith("_pytest")],
    }


def test_record():
    _before.update(_state())


def test_compare():
    after = _state()
    changed = [k for k in _before if after[k] != _before[k]]
    env = {k for k in {**_before["env"], **after["env"]} if _before["env"].get(k) != after["env"].get(k)}
    assert not changed, (changed, sorted(env))
'''

# a training test that sets the thread count and seeds, two that construct Trainers which fail, the
# discriminators (global seeds), then a test whose caplog needs train.data's records to propagate
SELECTION = [
    "tests/test_train.py::test_resume_equals_an_uninterrupted_run[psnr]",
    "tests/test_train.py::test_states_are_pruned_and_runs_are_not_overwritten",
    "tests/test_train_rundir.py::test_resume_passes_over_an_unreadable_newest_state[empty]",
    "tests/test_train_cli.py::test_bad_validation_data",
    "tests/test_discriminators.py",
    "tests/test_data.py::test_val_dataset_shapes_modcrop_and_skip",
]


def test_training_tests_leave_the_process_as_they_found_it(tmp_path: Path) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    # one thread by default, so that a test setting any other count is seen
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", f"--rootdir={REPO}",
           f"{probe}::test_record", *SELECTION, f"{probe}::test_compare"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    ran = [line.split(" ")[0] for line in result.stdout.splitlines() if " PASSED" in line]
    assert ran[0].endswith("::test_record") and ran[-1].endswith("::test_compare") and len(ran) > 10, ran
