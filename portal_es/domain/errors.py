"""Domain errors. Each message is the text Portal clients match on."""


class DomainError(Exception):
    """A command that the domain refuses; nothing is written."""

    status = 400


class ServiceNotFound(DomainError):
    status = 404

    def __init__(self) -> None:
        super().__init__("No Service Found")


class ServerNotFound(DomainError):
    status = 404

    def __init__(self) -> None:
        super().__init__("No Server Found")


class SocketInUse(DomainError):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"Socket in use: '{host}:{port}'")


class VipInUse(DomainError):
    status = 409

    def __init__(self) -> None:
        super().__init__("Ip or alias already in use")


class ServiceConflict(DomainError):
    status = 409

    def __init__(self, service_id: str) -> None:
        super().__init__(f"Service '{service_id}' already exists")


class StaleVersion(DomainError):
    """If-Match named a version that is no longer current."""

    status = 412

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"Stale version: expected {expected}, current is {actual}")
