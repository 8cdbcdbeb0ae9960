"""The example scripts run end to end (slow tier: they are whole pipelines)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("quickstart.py", ["--n", "12"], "Top heads by emit→reasoning mass"),
        ("planted_heads.py", [], "L3H7"),
        ("intervention_study.py", ["--n", "12"], "answers_correct"),
        ("r2a_evaluation.py", ["--n", "40"], "=== reasoning vs 'finished' ==="),
        ("thought_anchors_study.py", ["--n", "4", "--rollouts", "4"], "ModelComparison("),
    ],
)
def test_example_runs(script, args, expected, tmp_path):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--out", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=600,
        # PYTHONPATH: run this checkout's package, whatever is installed
        env={"HF_HUB_OFFLINE": "1", "PATH": "", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert expected in done.stdout
    assert any(tmp_path.glob("*.png"))
