"""How domain values are written into the event store (JSON), and read back.

Values read back from the store were validated when they were written, so they are rebuilt
without validating again (a cert's key pair check costs milliseconds; replay must not).
A cert's private key is encrypted (AES-GCM) before it reaches the store.
"""

from __future__ import annotations

from base64 import b64decode, b64encode
from typing import Any

from eventsourcing.persistence import Cipher, JSONTranscoder, Transcoding

from portal_es.domain.models import CertBundle, ErrorPages, Route, Server, Service, Vip
from portal_es.domain.state import BalancerState


def _server(data: dict[str, Any]) -> Server:
    return Server.model_construct(**data)


class ServiceAsDict(Transcoding):
    type = Service
    name = "service"

    def encode(self, obj: Service) -> dict[str, Any]:
        return obj.model_dump()

    def decode(self, data: dict[str, Any]) -> Service:
        return Service.model_construct(
            **{**data, "servers": tuple(_server(s) for s in data["servers"])}
        )


class ServerAsDict(Transcoding):
    type = Server
    name = "server"

    def encode(self, obj: Server) -> dict[str, Any]:
        return obj.model_dump()

    def decode(self, data: dict[str, Any]) -> Server:
        return _server(data)


class RouteAsDict(Transcoding):
    type = Route
    name = "route"

    def encode(self, obj: Route) -> dict[str, Any]:
        return obj.model_dump()

    def decode(self, data: dict[str, Any]) -> Route:
        return Route.model_construct(**{**data, "targets": tuple(data["targets"])})


class VipAsDict(Transcoding):
    type = Vip
    name = "vip"

    def encode(self, obj: Vip) -> dict[str, Any]:
        return obj.model_dump()

    def decode(self, data: dict[str, Any]) -> Vip:
        return Vip.model_construct(**data)


class ErrorPagesAsDict(Transcoding):
    type = ErrorPages
    name = "error_pages"

    def encode(self, obj: ErrorPages) -> dict[str, Any]:
        return obj.model_dump()

    def decode(self, data: dict[str, Any]) -> ErrorPages:
        return ErrorPages.model_construct(**data)


class CertBundleWithEncryptedKey(Transcoding):
    type = CertBundle
    name = "cert_bundle"

    def __init__(self, cipher: Cipher) -> None:
        self.cipher = cipher

    def encode(self, obj: CertBundle) -> dict[str, Any]:
        sealed = self.cipher.encrypt(obj.key.encode())
        return {"cert": obj.cert, "key_aes_gcm": b64encode(sealed).decode()}

    def decode(self, data: dict[str, Any]) -> CertBundle:
        key = self.cipher.decrypt(b64decode(data["key_aes_gcm"])).decode()
        return CertBundle.model_construct(cert=data["cert"], key=key)


class BalancerStateAsLists(Transcoding):
    """The folded state, for snapshots. JSON objects have string keys only and route keys are
    tuples, so each collection is a list of [key, value] pairs in order; keys are stored
    rather than derived again on load (a cert's id is a fingerprint: parsing it costs)."""

    type = BalancerState
    name = "balancer_state"

    def encode(self, obj: BalancerState) -> dict[str, Any]:
        return {
            "services": [[k, v] for k, v in obj.services.items()],
            "routes": [[list(k), v] for k, v in obj.routes.items()],
            "certs": [[k, v] for k, v in obj.certs.items()],
            "vips": [[k, v] for k, v in obj.vips.items()],
            "error_pages": obj.error_pages,
        }

    def decode(self, data: dict[str, Any]) -> BalancerState:
        return BalancerState(
            services=dict(data["services"]),
            routes={(k[0], k[1], k[2]): v for k, v in data["routes"]},
            certs=dict(data["certs"]),
            vips=dict(data["vips"]),
            error_pages=data["error_pages"],
        )


def register(transcoder: JSONTranscoder, cipher: Cipher) -> None:
    for transcoding in (ServiceAsDict(), ServerAsDict(), RouteAsDict(), VipAsDict(),
                        ErrorPagesAsDict(), CertBundleWithEncryptedKey(cipher),
                        BalancerStateAsLists()):
        transcoder.register(transcoding)
