"""Small helpers shared by the test suites (the polling and port helpers live with the harness)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections.abc import AsyncIterator

from stt_common.kafka import ensure_topics
from stt_common.settings import Settings
from stt_devstack.harness import wait_until
from stt_devstack.infra import tansu_binary
from stt_devstack.procs import free_port

__all__ = ["broker_processes", "free_port", "private_broker", "wait_until"]

broker_processes: dict[str, subprocess.Popen[bytes]] = {}
"""The running private brokers by address, for tests that freeze one (SIGSTOP)."""


@contextlib.asynccontextmanager
async def private_broker(settings: Settings) -> AsyncIterator[str]:
    """A Kafka-protocol broker (in-memory Tansu) of our own, with the pipeline's topics: a notifier
    on it hears only the triggers these tests produce, never the rest of the suite's."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            f"tcp://{address}",
            "--advertised-listener-url",
            f"tcp://{address}",
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    async def accepting() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    try:
        await wait_until(accepting, timeout=10, what="tansu accepts connections")
        await ensure_topics(settings.model_copy(update={"kafka_bootstrap_servers": address}))
        broker_processes[address] = proc
        yield address
    finally:
        broker_processes.pop(address, None)
        proc.send_signal(signal.SIGCONT)  # a test may have left it frozen
        proc.terminate()
        proc.wait(10)
