"""The one fixture tests/deploy/ shares: every kustomize target, rendered and validated once.

Helpers (not fixtures) live next to this file in deploy_manifests.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deploy_manifests import DEPLOY, OVERLAYS, REPO  # noqa: E402


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """Runs deploy/validate.sh and returns the objects it rendered, by target name."""
    out = tmp_path_factory.mktemp("rendered")
    env = dict(os.environ, RENDER_DIR=str(out))
    run = subprocess.run(
        ["bash", str(DEPLOY / "validate.sh")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    print(run.stdout)
    print(run.stderr)
    assert run.returncode == 0, f"deploy/validate.sh failed:\n{run.stdout}\n{run.stderr}"
    targets = {}
    for f in sorted(out.glob("*.yaml")):
        targets[f.stem] = [d for d in yaml.safe_load_all(f.read_text()) if d]
    assert set(OVERLAYS) <= set(targets), f"missing renders: {sorted(targets)}"
    return targets
