"""A stdio child that takes longer to start than a call may take (npx or uvx fetching its package, a JVM) is given
the time to answer `initialize`: it comes up, where it used to be killed at the upstream's `timeout_s` and started
again, for good (each attempt cut off just as short); calls made meanwhile still end at their own timeout."""

from __future__ import annotations

import sys

import pytest

from gateway.config.model import UpstreamConfig
from gateway.errors import GatewayError
from gateway.transport.stdio import StdioUpstream
from tests.support.feature_server import FEATURE_SERVER_PATH
from tests.transport.conftest import CLIENT_CAPS, Inbox, call, eventually, text_of

pytestmark = pytest.mark.asyncio

# Starts (imports, fetches ...) for 3 s before it reads anything: three times the upstream's timeout_s.
SLOW_CHILD = "import runpy, sys, time\ntime.sleep(3)\nrunpy.run_path(sys.argv[1], run_name='__main__')\n"


async def test_a_child_slower_to_start_than_a_call_comes_up() -> None:
    upstream = StdioUpstream(UpstreamConfig(name="slow", timeout_s=1, command=(
        sys.executable, "-c", SLOW_CHILD, FEATURE_SERVER_PATH)), restart_cap_s=0.05)
    await upstream.start()
    try:
        with pytest.raises(GatewayError) as early:  # a session asked for meanwhile waits its timeout_s, as before
            await upstream.connect(CLIENT_CAPS, Inbox())
        assert early.value.reason == "upstream_unavailable" and "initializing" in early.value.message
        # (on the old code it never came up: killed after 1 s and restarted, again and again)
        await eventually(lambda: upstream.health().ready, within=30)
        assert upstream.health().restarts == 0
        view = await upstream.connect(CLIENT_CAPS, Inbox())
        assert text_of(await view.request(call("echo", {"value": "up"}))) == "up"
    finally:
        await upstream.stop()
