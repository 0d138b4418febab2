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


def register(transcoder: JSONTranscoder, cipher: Cipher) -> None:
    for transcoding in (ServiceAsDict(), ServerAsDict(), RouteAsDict(), VipAsDict(),
                        ErrorPagesAsDict(), CertBundleWithEncryptedKey(cipher)):
        transcoder.register(transcoding)
