"""A gateway's config: a sidecar's keys (identity, discovery, mTLS, limits, timeouts) plus
the gateway's own (ingress listeners, routes, auth, limits, cache, compression)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from mesh.gateway.config import GatewaySection
from sidecar.config import SidecarConfig


class GatewayConfig(SidecarConfig, GatewaySection):
    #: The gateway's own mesh service name: the identity upstream sidecars authorize.
    service: str = Field("gateway", min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

    @model_validator(mode="after")
    def _no_local_app(self) -> GatewayConfig:
        if self.listen is not None or self.app_port is not None:
            raise ValueError(
                "a gateway has no local app: use ingress.listen instead of listen/app_port"
            )
        return self

    def redacted(self) -> dict[str, Any]:
        data = super().redacted()
        for key_set in data.get("api_keys", {}).values():
            key_set["keys"] = {consumer: "<redacted>" for consumer in key_set.get("keys", {})}
        return data
