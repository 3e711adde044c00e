"""Coordination for a fleet of layer instances: the config store (the coordinator's state:
published phase, epochs, acknowledgements and leases) and the layer's durable state, both
shared by every instance and the one controller.

    open_config_store(url)           sqlite:///PATH (one machine) | postgresql://... (a fleet)
    StoreCoordinator(store)          a Coordinator whose decisions run in the store
    open_shared_state(url, init=...) the repair log, intents and checkpoint, shared

See `base` for the port and which clock judges leases in each backend.
"""

from __future__ import annotations

from .base import (
    ConfigStore,
    ConfigStoreError,
    ConfigStoreExists,
    ConfigStoreMissing,
    is_postgres,
    open_config_store,
    redact,
)
from .coordinator import StoreCoordinator
from .shared import open_shared_state

__all__ = [
    "ConfigStore",
    "ConfigStoreError",
    "ConfigStoreExists",
    "ConfigStoreMissing",
    "StoreCoordinator",
    "is_postgres",
    "open_config_store",
    "open_shared_state",
    "redact",
]
