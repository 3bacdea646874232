"""A throwaway self-signed certificate for the gateway's TLS listener (dev stack and tests).

EC P-256, valid for a few days, with every given name in the subjectAltName (clients ignore the
common name). The key is written with mode 0600 from the start, never readable by others for a
moment. By hand::

    python -m policy_service.gateway.certs envoy/certs
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_FILE_NAME = "tls.crt"
KEY_FILE_NAME = "tls.key"


def generate_self_signed(
    directory: Path,
    hostnames: Sequence[str] = ("localhost", "127.0.0.1"),
    *,
    valid_for: datetime.timedelta = datetime.timedelta(days=7),
) -> tuple[Path, Path]:
    """Write ``tls.crt`` and ``tls.key`` into ``directory``; return (cert path, key path).

    Names that parse as IP addresses become IP SANs, the rest DNS SANs. Existing files are
    replaced.
    """
    if not hostnames:
        raise ValueError("generate_self_signed needs at least one hostname")
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # A little slack backwards for clocks that disagree by a minute.
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + valid_for)
        .add_extension(x509.SubjectAlternativeName(_san(hostnames)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / CERT_FILE_NAME
    key_path = directory / KEY_FILE_NAME
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(key_path, key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _san(hostnames: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _write_private(path: Path, data: bytes) -> None:
    # Remove first: os.open's mode only applies when the file is created.
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m policy_service.gateway.certs DIRECTORY", file=sys.stderr)
        return 2
    cert_path, key_path = generate_self_signed(Path(args[0]))
    print(f"wrote {cert_path} and {key_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
