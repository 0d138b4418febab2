"""TLS for the HTTPS listener: SNI picks a cert by CN/SAN (exact, then wildcard), else default.

Each worker holds one `CertStore` reference and replaces it whole on update; the listener's
SNI callback reads the reference at handshake time. Connections already established keep the
SSL context they were handshaken with, so changing certs never drops them. Contexts of certs
that did not change are reused across updates (loading a key costs ~1 ms).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from portal_es.domain.models import CertBundle

log = logging.getLogger(__name__)

DEFAULT_CERT = "proxy-default-cert.pem"
DEFAULT_KEY = "proxy-default-key.pem"
DEFAULT_NAME = "portal-es proxy default"


def default_cert(directory: Path) -> tuple[Path, Path]:
    """The built-in default cert, generated into `directory` on first use, then reused."""
    cert_path, key_path = directory / DEFAULT_CERT, directory / DEFAULT_KEY
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEFAULT_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    # Written to a temporary name and renamed: workers starting together never read half a key.
    for path, data, mode in (
        (key_path, key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()), 0o600),
        (cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644),
    ):
        fd, tmp = tempfile.mkstemp(dir=directory)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    log.info("generated the proxy's default certificate in %s", cert_path)
    return cert_path, key_path


def names_of(cert_pem: str) -> list[str]:
    """The DNS names a certificate serves: its SANs, else its CN (lower-cased)."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    names: list[str] = []
    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names.extend(str(n).lower() for n in san.value.get_values_for_type(x509.DNSName))
    for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attribute.value if isinstance(attribute.value, str) else attribute.value.decode()
        if value.lower() not in names:
            names.append(value.lower())
    return names


def server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])  # this proxy speaks HTTP/1.1 only
    return context


@contextlib.contextmanager
def _pem_paths(cert: str, key: str) -> Iterator[tuple[str, str]]:
    """Paths the ssl module can load PEM text from. memfd: private keys never touch a disk."""
    if hasattr(os, "memfd_create"):
        fds = [os.memfd_create("cert"), os.memfd_create("key")]
        try:
            for fd, text in zip(fds, (cert, key), strict=True):
                os.write(fd, text.encode())
            yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory() as tmp:  # pragma: no cover - non-Linux
        paths = (os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem"))
        for path, text in zip(paths, (cert, key), strict=True):
            with open(path, "w") as f:
                f.write(text)
        yield paths


def context_for(bundle: CertBundle) -> ssl.SSLContext:
    context = server_context()
    with _pem_paths(bundle.cert, bundle.key) as (cert_path, key_path):
        context.load_cert_chain(cert_path, key_path)
    return context


class CertStore:
    """Name -> SSL context, for one set of certs."""

    __slots__ = ("by_fingerprint", "exact", "wildcard")

    def __init__(self, certs: Sequence[CertBundle] = (),
                 previous: CertStore | None = None) -> None:
        self.by_fingerprint: dict[str, ssl.SSLContext] = {}
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcard: dict[str, ssl.SSLContext] = {}  # "example.com" for "*.example.com"
        reuse = previous.by_fingerprint if previous else {}
        for bundle in certs:
            fingerprint = bundle.id
            try:
                context = reuse.get(fingerprint) or context_for(bundle)
                names = names_of(bundle.cert)
            except (ssl.SSLError, ValueError, OSError) as e:
                # The API validated the pair; a failure here is this node's problem: skip it.
                log.error("proxy: cannot load certificate %s: %s", fingerprint[:16], e)
                continue
            self.by_fingerprint[fingerprint] = context
            for name in names:  # the first cert listed for a name wins
                if name.startswith("*."):
                    self.wildcard.setdefault(name[2:], context)
                else:
                    self.exact.setdefault(name, context)

    def lookup(self, server_name: str) -> ssl.SSLContext | None:
        name = server_name.lower().rstrip(".")
        found = self.exact.get(name)
        if found is None:
            _, dot, parent = name.partition(".")
            if dot:
                found = self.wildcard.get(parent)
        return found


class SniListener:
    """The listener's SSL context: default cert, SNI callback into the current `CertStore`."""

    def __init__(self, default_cert_file: Path, default_key_file: Path) -> None:
        self.store = CertStore()
        self.context = server_context()
        self.context.load_cert_chain(default_cert_file, default_key_file)
        self.context.sni_callback = self._select

    def update(self, certs: Sequence[CertBundle]) -> None:
        self.store = CertStore(certs, previous=self.store)  # one assignment: atomic

    def _select(self, ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                _listener: ssl.SSLContext) -> None:
        if server_name:
            context = self.store.lookup(server_name)
            if context is not None:
                ssl_object.context = context
        return None
