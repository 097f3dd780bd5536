"""Tests of the agent's metrics port against the real binary (see test_agent_metrics.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
