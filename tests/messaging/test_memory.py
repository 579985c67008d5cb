"""The contract suite on the in-process broker, plus what only the memory broker can show."""

from __future__ import annotations

import uuid

from .contract import BackendContract


class TestMemoryContract(BackendContract):
    """Every contract test against ``memory://``."""

    def make_backend_url(self) -> str:
        return f"memory://{uuid.uuid4().hex}"
