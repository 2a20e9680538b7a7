"""Settings of the HTTP endpoint: a part of the fleet's one settings model (``core.settings``,
``FleetSettings.api``), named here for the serve package. Variables are ``FLEET_API_*``."""

from core.settings import ServeSettings

__all__ = ["ServeSettings"]
