"""Certificates for tests that speak TLS: a certificate authority made with the
`openssl` command line (not a dependency of the project), and the server and
client certificates it signs, as a cluster's CA signs kube-apiserver's and its
users' (kind, minikube and kubeadm clusters authenticate users by certificate)."""

from __future__ import annotations

import base64
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Authority", "Issued"]

_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*arguments: str) -> None:
    subprocess.run(["openssl", *arguments], check=True, capture_output=True)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files."""

    certificate: Path
    key: Path

    def data(self) -> tuple[str, str]:
        """The certificate and the key base64-encoded, as a kubeconfig's
        `client-certificate-data` and `client-key-data` hold them."""
        return _data(self.certificate), _data(self.key)


@dataclass(frozen=True)
class Authority:
    """A certificate authority in `directory`."""

    directory: Path
    name: str
    certificate: Path
    key: Path

    @classmethod
    def make(cls, directory: Path, name: str = "test-ca") -> Authority:
        directory.mkdir(parents=True, exist_ok=True)
        certificate, key = directory / f"{name}.pem", directory / f"{name}.key"
        _openssl(
            "req", "-x509", *_KEY, "-days", "1", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", str(key), "-out", str(certificate),
        )  # fmt: skip
        return cls(directory, name, certificate, key)

    def data(self) -> str:
        """The CA certificate base64-encoded (`certificate-authority-data`)."""
        return _data(self.certificate)

    def issue(self, subject: str, *, names: tuple[str, ...] = (), client: bool = False) -> Issued:
        """A certificate for `subject` (CN; a client's user name), with the
        subject alternative `names` (e.g. "DNS:kube.internal", "IP:127.0.0.1")."""
        stem = self.directory / f"{self.name}-{subject}"
        certificate, key, request = (
            stem.with_suffix(suffix) for suffix in (".pem", ".key", ".csr")
        )
        extensions = stem.with_suffix(".ext")
        lines = [
            "basicConstraints=CA:FALSE",
            "keyUsage=critical,digitalSignature",
            f"extendedKeyUsage={'clientAuth' if client else 'serverAuth'}",
            "subjectKeyIdentifier=hash",
            "authorityKeyIdentifier=keyid",
        ]
        if names:
            lines.append(f"subjectAltName={','.join(names)}")
        extensions.write_text("\n".join(lines) + "\n")
        _openssl(
            "req", "-new", *_KEY, "-subj", f"/CN={subject}",
            "-keyout", str(key), "-out", str(request),
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(request), "-CA", str(self.certificate),
            "-CAkey", str(self.key), "-CAcreateserial", "-days", "1",
            "-extfile", str(extensions), "-out", str(certificate),
        )  # fmt: skip
        return Issued(certificate, key)

    def server_context(
        self, issued: Issued, *, client_certificates: bool = False
    ) -> ssl.SSLContext:
        """A server's TLS context presenting `issued`; with `client_certificates`,
        it requires of every client a certificate this authority signed."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(issued.certificate, issued.key)
        if client_certificates:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.certificate)
        return context

    def trusting_context(self) -> ssl.SSLContext:
        """A client's TLS context that trusts this authority only."""
        return ssl.create_default_context(cafile=str(self.certificate))


def _data(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()
