"""The OpenAPI 3.1 document of the REST API (served at /openapi.json)."""

from __future__ import annotations

from typing import Any


def document() -> dict[str, Any]:
    return {"openapi": "3.1.0", "info": {"title": "portal-es", "version": "0.1.0"}, "paths": {}}
