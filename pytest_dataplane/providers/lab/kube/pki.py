"""The cluster's credentials: a CA, the API server's serving certificate, the service-account
key pair, a static token file and kubeconfigs.

Made with the ``cryptography`` package (ECDSA P-256: a key takes microseconds, where RSA
keys would add a noticeable share of the boot time) rather than by shelling out to openssl.
Everything here is computed in memory; :func:`write` puts it on disk with private files
readable by root only.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .plan import Files

VALIDITY = datetime.timedelta(days=7)
ADMIN_USER = "lab-admin"
COMPONENTS_USER = "lab-components"
MASTERS = "system:masters"


@dataclass(frozen=True)
class Token:
    """One line of the API server's static token file."""

    token: str
    user: str
    uid: str
    groups: tuple[str, ...]

    def line(self) -> str:
        groups = ",".join(self.groups)
        return f'{self.token},{self.user},{self.uid},"{groups}"'


@dataclass(frozen=True)
class Pki:
    """PEM-encoded credentials of one cluster."""

    ca_cert: bytes
    serving_cert: bytes
    serving_key: bytes
    sa_key: bytes
    sa_pub: bytes
    admin: Token
    components: Token

    def token_file(self) -> str:
        """The ``--token-auth-file`` contents."""
        return "".join(f"{t.line()}\n" for t in (self.admin, self.components))


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def generate(
    *,
    ips: Iterable[str],
    dns_names: Iterable[str],
    cluster: str = "pytest-dataplane-lab",
    now: datetime.datetime | None = None,
) -> Pki:
    """A new CA, a serving certificate for ``ips`` and ``dns_names`` signed by it, a
    service-account key pair and two tokens (an admin and one for the components), both in
    ``system:masters``: the lab's components need every permission they ask for and carry no
    separate identities worth the extra boot time (per-controller service-account tokens)."""
    start = (now or datetime.datetime.now(datetime.timezone.utc)) - datetime.timedelta(minutes=5)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster}-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    serving_key = _key()
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    serving_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(serving_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    sa_key = _key()
    return Pki(
        ca_cert=ca_cert.public_bytes(serialization.Encoding.PEM),
        serving_cert=serving_cert.public_bytes(serialization.Encoding.PEM),
        serving_key=_private_pem(serving_key),
        sa_key=_private_pem(sa_key),
        sa_pub=sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        admin=Token(secrets.token_hex(24), ADMIN_USER, "lab-admin", (MASTERS,)),
        components=Token(secrets.token_hex(24), COMPONENTS_USER, "lab-components", (MASTERS,)),
    )


def kubeconfig(*, server: str, ca_cert: bytes, token: Token, cluster: str) -> dict[str, Any]:
    """A kubeconfig with one cluster, one token user and one (current) context."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_cert).decode(),
                },
            }
        ],
        "users": [{"name": token.user, "user": {"token": token.token}}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": token.user}}],
        "current-context": cluster,
        "preferences": {},
    }


def _write(path: Path, data: bytes | str, *, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    # Created with its final mode: a private key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(raw)


def write(pki: Pki, files: Files, servers: Mapping[str, str], cluster: str) -> None:
    """Write the credentials and the two kubeconfigs (``servers``: ``admin`` and
    ``components`` API server URLs)."""
    _write(files.ca_cert, pki.ca_cert, private=False)
    _write(files.serving_cert, pki.serving_cert, private=False)
    _write(files.serving_key, pki.serving_key, private=True)
    _write(files.sa_key, pki.sa_key, private=True)
    _write(files.sa_pub, pki.sa_pub, private=False)
    _write(files.token_file, pki.token_file(), private=True)
    for path, token, server in (
        (files.admin_kubeconfig, pki.admin, servers["admin"]),
        (files.components_kubeconfig, pki.components, servers["components"]),
    ):
        config = kubeconfig(server=server, ca_cert=pki.ca_cert, token=token, cluster=cluster)
        _write(path, yaml.safe_dump(config, sort_keys=False), private=True)
