"""Pure checks of PEM certificate bundles (parsing only, no I/O)."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa


def _certs(cert_pem: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(cert_pem.encode())
    except ValueError:
        raise ValueError("invalid cert: not a PEM certificate") from None
    return certs


def check_pair(cert_pem: str, key_pem: str) -> None:
    """Raise ValueError unless the cert parses and the key is its private key."""
    leaf = _certs(cert_pem)[0]
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError("invalid key: not an unencrypted PEM private key") from None
    if not isinstance(
        key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
              ed448.Ed448PrivateKey)
    ):
        raise ValueError("invalid key: unsupported key type")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise ValueError("invalid cert bundle: the key does not match the certificate")


def fingerprint(cert_pem: str) -> str:
    """SHA-256 of the leaf certificate's DER: a cert bundle's identity."""
    from cryptography.hazmat.primitives.serialization import Encoding

    leaf = _certs(cert_pem)[0]
    return hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest()
