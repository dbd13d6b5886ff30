"""The one-command local stack: real Postgres, Redis, Kafka protocol (Tansu) and S3 (SeaweedFS) plus
the pipeline's services as processes, for development, demos and test sessions.

Tests use the same functions as the CLI:

    config = StackConfig(state_dir=tmp / "stack", port_base=20000, database="stt_test_x", bucket="stt-test")
    env = await start_infra(config)
    await start_services(config, env)
    ...
    await stop(config)
"""

from stt_devstack.config import StackConfig
from stt_devstack.services import SERVICES, Service, start_services
from stt_devstack.stack import (
    ComponentStatus,
    read_env_file,
    render_env,
    stack_settings,
    start_infra,
    status,
    stop,
    up,
)
from stt_devstack.state import StackError

__all__ = [
    "SERVICES",
    "ComponentStatus",
    "Service",
    "StackConfig",
    "StackError",
    "read_env_file",
    "render_env",
    "stack_settings",
    "start_infra",
    "start_services",
    "status",
    "stop",
    "up",
]
