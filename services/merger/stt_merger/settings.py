from __future__ import annotations

from stt_common.settings import Settings


class MergerSettings(Settings):
    service_name: str = "merger"
    ops_port: int = 8084
