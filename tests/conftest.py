"""Session infrastructure for every test: real PostgreSQL, Redis, Kafka protocol (Tansu) and S3
(SeaweedFS), started by the same stack tool as `make up`, on their own ports, database and bucket,
so tests never touch a developer's `make up` data."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.engine import make_engine, make_sessionmaker
from stt_common.s3 import ObjectStore
from stt_common.settings import Settings
from stt_devstack.config import StackConfig
from stt_devstack.infra import autocommit_engine
from stt_devstack.stack import stack_settings, start_infra, stop
from tests.helpers import private_broker

TEST_PORT_BASE = int(os.environ.get("STT_TEST_PORT_BASE", "20000"))


@pytest.fixture(scope="session")
def stack_config() -> Iterator[StackConfig]:
    with tempfile.TemporaryDirectory(prefix="stt-test-stack-") as state_dir:
        yield StackConfig(
            state_dir=Path(state_dir),
            port_base=TEST_PORT_BASE,
            database=f"stt_test_{os.getpid()}",
            bucket="stt-test",
            drop_database_on_stop=True,
        )


@pytest.fixture(scope="session")
async def infra_env(stack_config: StackConfig) -> AsyncIterator[dict[str, str]]:
    """STT_* variables of a fresh, migrated database, Redis, a broker with topics and a bucket."""
    try:
        env = await start_infra(stack_config)
        yield env
    finally:
        await stop(stack_config, purge=True)


@pytest.fixture(scope="session")
def settings(stack_config: StackConfig, infra_env: dict[str, str]) -> Settings:
    return stack_settings(stack_config, infra_env)


@pytest.fixture(scope="session")
async def sessionmaker_(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(settings.database_url)
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[ObjectStore]:
    async with ObjectStore.from_settings(settings) as opened:
        yield opened


@pytest.fixture
async def scratch_database(settings: Settings) -> AsyncIterator[str]:
    """An empty database of its own, for tests that apply and revert migrations."""
    name = f"scratch_{uuid.uuid4().hex[:12]}"
    admin_url = settings.database_url.rsplit("/", 1)[0] + "/postgres"
    async with autocommit_engine(admin_url) as engine, engine.connect() as conn:
        await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield settings.database_url.rsplit("/", 1)[0] + f"/{name}"
    async with autocommit_engine(admin_url) as engine, engine.connect() as conn:
        await conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def fresh_kafka(settings: Settings) -> AsyncIterator[str]:
    """A broker of the test's own (in-memory) with the pipeline's topics: no offsets or messages
    left over from other tests."""
    async with private_broker(settings) as address:
        yield address
