"""What users need to test their own services without real time or real servers."""

from interlink.testing.clock import FakeClock

__all__ = ["FakeClock"]
