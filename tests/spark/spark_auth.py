"""spark.authenticate for the server under test: the one shared secret, the two modes, and starting either
server with them. Used by test_auth.py and test_hostile.py (a plain module, not a test module, so no test
module imports another's fixtures)."""

from __future__ import annotations

from pathlib import Path

from servers import ServerHandle, find_agent_bin, start_agent, start_jvm_ess

REPO = Path(__file__).resolve().parents[2]
SECRET = "4f1c0a7d9e2b6c3a8d5e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e"
# Per mode, the keys a server and its clients must agree on (none of them is negotiated): SASL DIGEST-MD5
# (Spark's default), the AuthEngine with AES-CTR, and the AuthEngine with AES-GCM.
MODES = {
    "sasl": {"spark.network.crypto.enabled": "false"},
    "crypto": {"spark.network.crypto.enabled": "true"},
    "gcm": {"spark.network.crypto.enabled": "true", "spark.network.crypto.cipher": "AES/GCM/NoPadding"},
}


def auth_conf(mode: str) -> dict[str, str]:
    return {
        "spark.authenticate": "true",
        "spark.authenticate.secret": SECRET,
        **MODES[mode],
    }


def client_conf(server) -> dict[str, str]:
    """What an executor of the same app has: the server's crypto setting (it is not negotiated)."""
    return dict(MODES[server.auth_mode])


def start_auth_server(kind: str, mode: str, work: Path, root: str, pyspark: Path) -> ServerHandle:
    """A server of `kind` (agent | jvm) with authentication on, in SASL or AuthEngine mode; `h.auth_mode`."""
    conf = auth_conf(mode)
    if kind == "jvm":
        h = start_jvm_ess(pyspark, work, root, extra_conf=conf)
    else:
        path = work / "agent.conf"
        path.write_text("".join(f"{k} {v}\n" for k, v in conf.items()))
        h = start_agent(find_agent_bin(REPO), work, [root], extra_args=["--config", str(path)])
    h.auth_mode = mode
    return h
