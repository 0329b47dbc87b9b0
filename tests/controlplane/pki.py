"""The local cluster's certificates: one CA, and a key pair for each identity.

Every party authenticates with a certificate of this CA: the admin (kubectl, the
tests), kube-apiserver (serving, and as a client of the kubelet), and the real
node's kubelet (as ``system:node:<name>``, and serving its own API on the node IP,
which the API server verifies).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey


def _key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _certificate(
    subject: x509.Name,
    key: Key,
    issuer: tuple[x509.Certificate, Key] | None,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _write_pair(folder: Path, name: str, cert: x509.Certificate, key: Key) -> None:
    for path, data in ((folder / f"{name}.crt", _pem_cert(cert)),
                       (folder / f"{name}.key", _pem_key(key))):
        path.write_bytes(data)
        path.chmod(0o600)


@dataclass(frozen=True)
class Authority:
    """The cluster's CA, read from (or written to) a folder of PEM files."""

    folder: Path

    @classmethod
    def create(cls, folder: Path) -> Authority:
        folder.mkdir(parents=True)
        key = _key()
        cert = _certificate(_name("firebreak-local-ca"), key, None, ca=True)
        _write_pair(folder, "ca", cert, key)
        return cls(folder)

    def _ca(self) -> tuple[x509.Certificate, Key]:
        cert = x509.load_pem_x509_certificate((self.folder / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((self.folder / "ca.key").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key

    @property
    def certificate(self) -> Path:
        return self.folder / "ca.crt"

    def issue(self, name: str, common_name: str, *, organization: str | None = None,
              server: bool = False, dns: tuple[str, ...] = (), ips: tuple[str, ...] = (),
              into: Path | None = None) -> tuple[Path, Path]:
        """Write ``<name>.crt`` and ``<name>.key`` (into the CA's folder unless told
        otherwise): a client certificate, or a serving one for the given names and
        addresses. Returns their paths."""
        key = _key()
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        cert = _certificate(_name(common_name, organization), key, self._ca(),
                            usage=usage, sans=sans or None)
        folder = into or self.folder
        _write_pair(folder, name, cert, key)
        return folder / f"{name}.crt", folder / f"{name}.key"

    def kubeconfig(self, path: Path, server: str, name: str, common_name: str,
                   organization: str | None = None) -> Path:
        """A kubeconfig for a client-certificate identity, its files beside it."""
        cert, key = self.issue(name, common_name, organization=organization, into=path.parent)
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": name,
            "clusters": [{"name": "local", "cluster": {
                "server": server, "certificate-authority": str(self.certificate)}}],
            "users": [{"name": name, "user": {"client-certificate": str(cert),
                                              "client-key": str(key)}}],
            "contexts": [{"name": name, "context": {"cluster": "local", "user": name}}],
        }))
        path.chmod(0o600)
        return path


def write_control_plane_pki(folder: Path, service_ip: str) -> Authority:
    """The CA and every certificate the control plane needs, in ``folder``."""
    authority = Authority.create(folder)
    authority.issue(
        "apiserver", "kube-apiserver", server=True,
        dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
             "kubernetes.default.svc.cluster.local"),
        ips=("127.0.0.1", service_ip),
    )
    authority.issue("admin", "admin", organization="system:masters")
    # What kube-apiserver presents to a kubelet (logs, exec): kubelets refuse anonymous
    # callers and ask the API server whether this identity may use their API.
    authority.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                    organization="system:masters")
    sa_key = _key()
    (folder / "sa.key").write_bytes(_pem_key(sa_key))
    (folder / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    for name in ("sa.key", "sa.pub"):
        (folder / name).chmod(0o600)
    return authority
