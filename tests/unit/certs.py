"""A few real certificate bundles for tests (made once per run with trustme)."""

from __future__ import annotations

import trustme

from portal_es.domain.models import CertBundle

_CA = trustme.CA()


def bundle(*names: str) -> CertBundle:
    leaf = _CA.issue_cert(*names)
    return CertBundle(
        cert="".join(b.bytes().decode() for b in leaf.cert_chain_pems),
        key=leaf.private_key_pem.bytes().decode(),
    )


BUNDLES = [bundle("a.test"), bundle("b.test", "*.b.test"), bundle("c.test")]
