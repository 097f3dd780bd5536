"""The licence Cargo.toml declares is the one the repository ships.

Cargo.toml says `license = "Apache-2.0"` (an SPDX id); LICENSE must then be the Apache License 2.0,
word for word. The digest below is that of https://www.apache.org/licenses/LICENSE-2.0.txt (11358
bytes), so an edited, truncated or different licence text fails here, not in a legal review.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
APACHE_2_0_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def cargo_licence() -> str:
    return tomllib.loads((REPO / "Cargo.toml").read_text())["package"]["license"]


def test_cargo_declares_apache_2_0():
    assert cargo_licence() == "Apache-2.0"


def test_license_file_is_the_apache_2_0_text_unchanged():
    text = (REPO / "LICENSE").read_bytes()
    assert b"Apache License\n                           Version 2.0, January 2004" in text
    assert hashlib.sha256(text).hexdigest() == APACHE_2_0_SHA256, "LICENSE differs from the Apache-2.0 text"
