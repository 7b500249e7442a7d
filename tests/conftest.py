"""Shared test setup: offline env vars and a loopback-only ICE fixture for WebRTC tests."""
import os

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def loopback_ice(monkeypatch):
    """aioice skips 127.0.0.1 and would advertise real interfaces: offer only loopback host candidates."""
    import aioice.ice
    import aioice.stun

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"])
    monkeypatch.setattr(aioice.stun, "RETRY_MAX", 1)
    yield
