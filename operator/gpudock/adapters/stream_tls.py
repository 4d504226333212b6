"""The agent's serving certificates for its stream endpoint (``kubectl gpudock logs``)
and its migration endpoint: a self-signed one each, made at start with ``openssl`` for
the node's address, its key readable by the agent alone; the certificate is published
in the node's GpuNode (``status.stream.caBundle``, ``status.transfer.caBundle``), so
a client (the plugin, another node's agent) verifies exactly this agent."""

from __future__ import annotations

import ipaddress
import os
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gpudock.errors import TransientError


class CertificateError(TransientError):
    """openssl could not make the serving certificate (tried again at start)."""


@dataclass(frozen=True)
class ServingCertificate:
    pem: str  # the certificate (what clients trust)
    context: ssl.SSLContext  # the server's


def make(directory: Path, address: str, stem: str = "stream") -> ServingCertificate:
    """A new key and certificate for ``address`` (an IP address or a host name), valid
    for a year; made again at every start (a restarted agent publishes the new one)."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / f"{stem}.key", directory / f"{stem}.crt"
    try:
        ipaddress.ip_address(address)
        name = f"IP:{address}"
    except ValueError:
        name = f"DNS:{address}"
    key.unlink(missing_ok=True)
    descriptor = os.open(key, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)  # never readable
    os.close(descriptor)
    done = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days",
         "365", "-subj", "/CN=gpudock-agent", "-addext", f"subjectAltName={name}",
         "-keyout", str(key), "-out", str(cert)], capture_output=True, text=True,
        check=False)
    if done.returncode != 0:
        raise CertificateError(f"openssl could not make the {stem} certificate: "
                               f"{done.stderr.strip()}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return ServingCertificate(cert.read_text(), context)
