"""Certificates for tests, made with the openssl command line (as an operator would).

    ca = CertificateAuthority(tmp_path / "ca")
    server = ca.issue("server", "/CN=etcd test server", sans=["IP:127.0.0.1"], server=True)
    client = ca.issue("client", "/O=ecs-ipam/OU=client")
    ... ca.cert, server.cert, server.key ...

EC P-256 keys: quick to make, and what etcd's Go TLS stack handles natively.

With client certificates, auth and the JSON gateway all on, etcd refuses any client
certificate that has a Common Name (it could not tell which user the name means through
the gateway): give clients a subject without CN.  etcd's own certificate is also the
client certificate of its gateway: its CN must name no etcd user.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

OPENSSL = shutil.which("openssl")
NOT_INSTALLED = "openssl is not installed (Debian: apt-get install openssl)"
KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


class Issued(NamedTuple):
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    if OPENSSL is None:
        raise RuntimeError(NOT_INSTALLED)
    done = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


class CertificateAuthority:
    """A self-signed CA in *directory* that issues server and client certificates."""

    def __init__(self, directory: Path, name: str = "ecs-ipam test CA") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.cert = self.directory / "ca.pem"
        self.key = self.directory / "ca.key"
        _openssl(
            "req",
            "-x509",
            *KEY,
            "-keyout",
            str(self.key),
            "-out",
            str(self.cert),
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            cwd=self.directory,
        )

    def issue(
        self, stem: str, subject: str, sans: list[str] | None = None, server: bool = False, usage: str | None = None
    ) -> Issued:
        """A certificate and its key, ``<stem>.pem`` and ``<stem>.key``, signed by this CA.

        :param subject: as openssl writes it (``/O=ecs-ipam/OU=client``).
        :param sans: subjectAltName entries (``IP:127.0.0.1``, ``DNS:localhost``).
        :param server: also good for serving TLS (etcd's server certificate is also the
            client certificate of its own gateway, so it needs both uses).
        :param usage: the extendedKeyUsage instead (``serverAuth``: the mistake of a
            server certificate without ``clientAuth``).
        """
        cert, key, request = (self.directory / f"{stem}.{ext}" for ext in ("pem", "key", "csr"))
        extensions = self.directory / f"{stem}.ext"
        lines = ["keyUsage=critical,digitalSignature,keyEncipherment"]
        lines.append(f"extendedKeyUsage={usage or ('serverAuth,clientAuth' if server else 'clientAuth')}")
        if sans:
            lines.append(f"subjectAltName={','.join(sans)}")
        extensions.write_text("\n".join(lines) + "\n")
        _openssl("req", *KEY, "-keyout", str(key), "-out", str(request), "-subj", subject, cwd=self.directory)
        _openssl(
            "x509",
            "-req",
            "-in",
            str(request),
            "-CA",
            str(self.cert),
            "-CAkey",
            str(self.key),
            "-CAcreateserial",
            "-out",
            str(cert),
            "-days",
            "2",
            "-extfile",
            str(extensions),
            cwd=self.directory,
        )
        return Issued(cert, key)
