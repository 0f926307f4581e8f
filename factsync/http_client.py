"""Posting JSON to remote ends (alert receivers, serving engines)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any


def post_json(url: str, payload: Any, *, timeout: float, token: str | None = None) -> bytes:
    """POST ``payload`` as JSON; the response body. Raises on HTTP errors and timeouts."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        url, data=json.dumps(payload, default=str).encode(), method="POST", headers=headers
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()
