"""The local stack tool against the real servers it starts: each answers, a second start changes
nothing, and stop leaves no process and no bound port behind."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiobotocore.session import get_session
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from stt_common.apikeys import hash_api_key
from stt_common.messages import Topic
from stt_devstack import StackConfig, StackError, start_infra, status, stop
from stt_devstack.procs import is_running, port_is_free
from stt_devstack.state import StackState
from tests.conftest import TEST_PORT_BASE
from tests.helpers import wait_until

# `make up` uses 18000 and the session fixtures STT_TEST_PORT_BASE (20000); these stacks sit 1000 above
# it, so a second test run with its own STT_TEST_PORT_BASE (3000 apart) shares no port with this one.
PORT_BASE = TEST_PORT_BASE + 1000


def make_config(tmp_path: Path, port_base: int, **overrides: bool) -> StackConfig:
    suffix = uuid.uuid4().hex[:8]
    return StackConfig(
        state_dir=tmp_path / "stack",
        port_base=port_base,
        database=f"stt_test_devstack_{suffix}",
        bucket=f"stt-test-{suffix}",
        drop_database_on_stop=True,
        **overrides,
    )


@pytest.fixture
async def config(tmp_path: Path) -> AsyncIterator[StackConfig]:
    config = make_config(tmp_path, PORT_BASE)
    yield config
    await stop(config, purge=True)  # a no-op when the test already stopped it


async def db_scalar(url: str, query: str, **params: object) -> object:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.scalar(text(query), params)
    finally:
        await engine.dispose()


async def test_start_twice_then_stop(config: StackConfig) -> None:
    env = await start_infra(config)

    # Postgres: our own database, migrated, with the dev API key.
    url = env["STT_DATABASE_URL"]
    assert url.endswith(f"/{config.database}")
    assert await db_scalar(url, "SELECT 1") == 1
    assert await db_scalar(url, "SELECT to_regclass('public.jobs') IS NOT NULL") is True
    key_hash = hash_api_key(env["STT_API_KEY"])
    assert await db_scalar(url, "SELECT count(*) FROM api_keys WHERE key_hash = :h", h=key_hash) == 1

    # Redis.
    client = aioredis.Redis.from_url(env["STT_REDIS_URL"])
    try:
        assert await client.ping()
    finally:
        await client.aclose()

    # Kafka: every topic and its DLQ, with the configured partition counts.
    admin = AIOKafkaAdminClient(bootstrap_servers=env["STT_KAFKA_BOOTSTRAP_SERVERS"])
    await admin.start()
    try:
        wanted = {name for topic in Topic for name in (topic.value, topic.dlq)}
        described = await admin.describe_topics(sorted(wanted))
    finally:
        await admin.close()
    partitions = {entry["topic"]: len(entry["partitions"]) for entry in described}
    assert set(partitions) == wanted
    for name, count in partitions.items():
        chunks = name.startswith(Topic.CHUNKS_READY.value)
        assert count == (config.chunks_topic_partitions if chunks else config.topic_partitions), name

    # S3: the bucket exists and the generated credentials are accepted.
    async with get_session().create_client(
        "s3",
        endpoint_url=env["STT_S3_ENDPOINT_URL"],
        region_name=env["STT_S3_REGION"],
        aws_access_key_id=env["STT_S3_ACCESS_KEY_ID"],
        aws_secret_access_key=env["STT_S3_SECRET_ACCESS_KEY"],
    ) as s3:
        await s3.head_bucket(Bucket=config.bucket)

    # The env file is private and says the same.
    assert config.env_file.stat().st_mode & 0o077 == 0
    assert f"export STT_API_KEY={env['STT_API_KEY']}" in config.env_file.read_text()

    first = StackState.load(config.state_file).components
    assert all(component.external or is_running(component) for component in first.values())
    assert await start_infra(config) == env
    assert StackState.load(config.state_file).components == first
    assert all(row.up for row in await status(config) if row.pid is not None or row.external)

    await stop(config)
    ours = [component for component in first.values() if not component.external]
    assert ours, "at least Kafka and S3 are always our own processes"
    assert not any(is_running(component) for component in ours)
    ports = [config.kafka_port, *config.seaweed_ports().values()]
    ports += [component.port for component in ours]
    await wait_until(
        lambda: all(port_is_free(port) for port in ports),
        timeout=15,
        what=f"ports free again: {[port for port in ports if not port_is_free(port)]}",
    )
    assert StackState.load(config.state_file).components == {}
    assert not config.env_file.exists()
    if first["postgres"].external:
        assert (
            await db_scalar(
                url.rsplit("/", 1)[0] + "/postgres",
                "SELECT count(*) FROM pg_database WHERE datname = :d",
                d=config.database,
            )
            == 0
        )


async def test_refuses_a_port_it_did_not_take(tmp_path: Path) -> None:
    config = make_config(tmp_path, PORT_BASE + 500)
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", config.kafka_port))
        stranger.listen()
        with pytest.raises(StackError, match=str(config.kafka_port)):
            await start_infra(config)
    state = StackState.load(config.state_file)
    assert all(component.external for component in state.components.values()), "nothing started"
    await stop(config, purge=True)


async def test_throwaway_postgres_and_redis(tmp_path: Path) -> None:
    """Without the machine's Postgres and Redis the tool runs its own, and stops them again."""
    config = make_config(tmp_path, PORT_BASE + 500, reuse_postgres=False, reuse_redis=False)
    try:
        env = await start_infra(config)
        assert f":{config.postgres_port}/" in env["STT_DATABASE_URL"]
        assert env["STT_REDIS_URL"] == f"redis://127.0.0.1:{config.redis_port}/0"
        assert (
            await db_scalar(env["STT_DATABASE_URL"], "SELECT to_regclass('public.jobs') IS NOT NULL") is True
        )
        components = StackState.load(config.state_file).components
        assert not components["postgres"].external
        assert not components["redis"].external
    finally:
        await stop(config, purge=True)
    assert not any(is_running(component) for component in components.values())
    assert port_is_free(config.postgres_port)
    assert port_is_free(config.redis_port)
    assert not config.pg_root.exists()
