"""Whether the Hugging Face hub can be asked at all: its client retries a dead connection for about a minute, so
kochat asks the environment, then probes the endpoint for a few seconds, before any hub call (models and datasets)."""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse


def hub_offline(*variables: str) -> bool:
    """HF_HUB_OFFLINE (or another of the hub clients' variables, e.g. HF_DATASETS_OFFLINE) says not to try."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in ("HF_HUB_OFFLINE", *variables))


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)), timeout=timeout).close()
    except OSError:
        return False
    return True
