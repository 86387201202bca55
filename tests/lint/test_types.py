"""``make lint`` type-checks calls between modules: gmcf.* resolves to the source (mypy_path
``typecheck``), so a wrong call from one part into another is an error, not an ``Any``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: file name -> (code, the line mypy must flag: 0 for none). Each calls public code of another
#: module.
SNIPPETS = {
    "cli_to_runtime.py": (
        "from gmcf.runtime.explainer import Explainer\n"
        "ex = Explainer.from_bundle('exported/adult', threads='2')\n",
        2,
    ),
    "trainer_to_runtime.py": (
        "from gmcf.runtime.manifest import Latent\n"
        "latent = Latent(dim='3', u_dim=3, mu=[[0.0]], var=[[1.0]])\n",
        2,
    ),
    "runtime_to_runtime.py": (
        "from gmcf.runtime.settings import batch_size_for\n"
        "size: int = batch_size_for('65536', 21)\n",
        2,
    ),
    "cli_to_trainer.py": (
        "from pathlib import Path\n"
        "from gmcf.datasets import load_dataset\n"
        "from gmcf.trainer.pipeline import train_bundle\n"
        "train_bundle(load_dataset('adult'), 'exported/adult')\n",
        4,
    ),
    "well_typed.py": (
        "from pathlib import Path\n"
        "from gmcf.runtime.explainer import Explainer\n"
        "from gmcf.runtime.settings import batch_size_for\n"
        "ex = Explainer.from_bundle(Path('exported/adult'), threads=2)\n"
        "size: int = batch_size_for(None, ex.bundle.preprocessor.width)\n",
        0,
    ),
}


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("mypy", path=str(Path(sys.executable).parent)) is None,
    reason="needs mypy (dev extra)",
)
def test_a_wrong_call_between_modules_fails_the_type_check(tmp_path: Path) -> None:
    for name, (code, _) in SNIPPETS.items():
        (tmp_path / name).write_text(code)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            "pyproject.toml",
            *[str(tmp_path / n) for n in SNIPPETS],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    report = proc.stdout
    assert proc.returncode == 1, report
    # (file, line) of every error; by file name, since mypy's cache may replay an error of an
    # unchanged snippet under the folder of an earlier run
    errors = [row.split(":")[:2] for row in report.splitlines() if ": error:" in row]
    assert all(
        ": import" not in row and "import-not-found" not in row for row in report.splitlines()
    ), report
    for name, (_, line) in SNIPPETS.items():
        flagged = [int(at) for path, at in errors if Path(path).name == name]
        assert flagged == ([line] if line else []), (name, report)
