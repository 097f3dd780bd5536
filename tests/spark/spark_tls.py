"""TLS for the server under test (spark.ssl.rpc.*, Spark 4's RPC TLS; auth.md section 4): certificates made
with the openssl command line, the keys a server and Spark's client take, and starting either server with them.
Used by test_tls.py.

Spark 4.3's client takes TLS keys two ways (TransportConf, SSLFactory), and the tests use both:
  * PEM files with `openSslEnabled` (netty-tcnative): it trusts exactly the `certChain` it is given. Netty 4.2's
    client context checks the peer's host name by default, and Spark makes its engines without one, so Spark's
    launcher gives every driver and executor JVM -Dio.netty.handler.ssl.defaultEndpointVerificationAlgorithm=NONE
    (JavaModuleOptions). Without it every handshake fails, against Spark's own service too, with
    "CertificateException: Hostname or IP address is undefined."; the client here gets it as executors do;
  * JDK keystores (PKCS12): the client needs a keystore of its own (sslRpcEnabledAndKeysAreValid), trusts the
    certificates of its `trustStore`, and every certificate without one."""

from __future__ import annotations

import subprocess
from pathlib import Path

from servers import ServerHandle, find_agent_bin, start_agent, start_jvm_ess

REPO = Path(__file__).resolve().parents[2]


PASSWORD = "changeit"


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


class Cert:
    """A self-signed certificate for 127.0.0.1 / localhost: its unencrypted PKCS#8 key and chain as PEM files,
    both in a PKCS12 keystore, and the certificate alone in a PKCS12 truststore (keytool, the JDK's)."""

    def __init__(self, directory: Path, name: str, days: int = 2):
        directory.mkdir(parents=True, exist_ok=True)
        self.chain, self.key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
        self.keystore, self.truststore = directory / f"{name}-keystore.p12", directory / f"{name}-truststore.p12"
        _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", str(days),
              "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
              "-keyout", str(self.key), "-out", str(self.chain)])
        _run(["openssl", "pkcs12", "-export", "-in", str(self.chain), "-inkey", str(self.key), "-name", name,
              "-out", str(self.keystore), "-passout", f"pass:{PASSWORD}"])
        _run(["keytool", "-importcert", "-noprompt", "-alias", name, "-file", str(self.chain), "-keystore",
              str(self.truststore), "-storetype", "PKCS12", "-storepass", PASSWORD])


def server_conf(cert: Cert) -> dict[str, str]:
    """What a Spark 4 standalone shuffle service (and the agent, with the same keys) is given."""
    return {
        "spark.ssl.rpc.enabled": "true",
        "spark.ssl.rpc.openSslEnabled": "true",
        "spark.ssl.rpc.certChain": str(cert.chain),
        "spark.ssl.rpc.privateKey": str(cert.key),
    }


def client_conf(trusted: Cert, own: Cert) -> dict[str, str]:
    """An executor's TransportConf for TLS through the JDK: it trusts `trusted`'s certificate, and has `own` as its
    keystore (required by Spark, never presented: no client authentication)."""
    return {
        "spark.ssl.rpc.enabled": "true",
        "spark.ssl.rpc.keyStore": str(own.keystore),
        "spark.ssl.rpc.keyStorePassword": PASSWORD,
        "spark.ssl.rpc.keyPassword": PASSWORD,
        "spark.ssl.rpc.trustStore": str(trusted.truststore),
        "spark.ssl.rpc.trustStorePassword": PASSWORD,
    }


# What Spark's launcher adds to every driver and executor JVM (launcher/JavaModuleOptions).
EXECUTOR_JVM_OPTS = ("-Dio.netty.handler.ssl.defaultEndpointVerificationAlgorithm=NONE",)


def pem_client_conf(trusted: Cert) -> dict[str, str]:
    """An executor's TransportConf for TLS with PEM files and OpenSSL: it trusts exactly `trusted`'s chain."""
    return server_conf(trusted)


def keystore_keys(cert: Cert, how: str, directory: Path) -> dict[str, str]:
    """`cert`'s key and chain the other ways Spark's keys may come: `keytool` (a PKCS12 keystore written by the
    JDK with its defaults: PBES2, AES-256, HMAC-SHA256), `openssl` (OpenSSL 3's defaults), `openssl-legacy`
    (SHA1 with 3DES and RC2, the old default), or `encrypted-pem` (a PKCS#8 key encrypted with PBES2)."""
    directory.mkdir(parents=True, exist_ok=True)
    if how == "encrypted-pem":
        key = directory / "key-encrypted.pem"
        _run(["openssl", "pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", str(cert.key), "-out", str(key),
              "-passout", f"pass:{PASSWORD}"])
        return {**server_conf(cert), "spark.ssl.rpc.privateKey": str(key),
                "spark.ssl.rpc.privateKeyPassword": PASSWORD}
    store = directory / f"keystore-{how}.p12"
    if how == "keytool":
        _run(["keytool", "-importkeystore", "-noprompt", "-srckeystore", str(cert.keystore), "-srcstoretype",
              "PKCS12", "-srcstorepass", PASSWORD, "-destkeystore", str(store), "-deststoretype", "PKCS12",
              "-deststorepass", PASSWORD])
    elif how in ("openssl", "openssl-legacy"):
        legacy = ["-legacy"] if how == "openssl-legacy" else []
        _run(["openssl", "pkcs12", "-export", *legacy, "-in", str(cert.chain), "-inkey", str(cert.key),
              "-out", str(store), "-passout", f"pass:{PASSWORD}"])
    else:
        raise ValueError(how)
    return {"spark.ssl.rpc.enabled": "true", "spark.ssl.rpc.keyStore": str(store),
            "spark.ssl.rpc.keyStorePassword": PASSWORD, "spark.ssl.rpc.keyPassword": PASSWORD}


def start_tls_server(kind: str, cert: Cert, work: Path, root: str, pyspark: Path,
                     extra: dict[str, str] | None = None, keys: dict[str, str] | None = None) -> ServerHandle:
    """Either server with TLS: `cert`'s PEM files, or `keys` (keystore_keys) instead."""
    conf = {**(keys or server_conf(cert)), **(extra or {})}
    if kind == "jvm":
        return start_jvm_ess(pyspark, work, root, extra_conf=conf)
    path = work / "agent.conf"
    # The agent has no OpenSSL switch: rustls serves PEM keys either way.
    path.write_text("".join(f"{k} {v}\n" for k, v in conf.items() if k != "spark.ssl.rpc.openSslEnabled"))
    return start_agent(find_agent_bin(REPO), work, [root], extra_args=["--config", str(path)])
