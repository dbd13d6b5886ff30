"""What the tool started, recorded in `<state>/state.json` so `down` stops exactly that.

A pid alone is not an identity (pids are recycled), so each record also keeps the process start time
from `/proc/<pid>/stat`; a record whose process is gone or was replaced is treated as not running.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


class StackError(Exception):
    """A failure the user can act on; the CLI prints the message without a traceback."""


@dataclass(frozen=True)
class Component:
    """One running server. `pid is None` means an external server the tool reuses and never stops."""

    name: str
    port: int
    pid: int | None = None
    start_time: int | None = None

    @property
    def external(self) -> bool:
        return self.pid is None


@dataclass
class StackState:
    components: dict[str, Component] = field(default_factory=dict)
    # Databases this tool created (as opposed to found), so that only those are ever dropped.
    created_databases: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> StackState:
        if not path.exists():
            return cls()
        raw = json.loads(path.read_text())
        return cls(
            components={name: Component(**value) for name, value in raw.get("components", {}).items()},
            created_databases=list(raw.get("created_databases", [])),
        )

    def save(self, path: Path) -> None:
        """Write atomically: a crash mid-write must not lose the pids of running servers."""
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "components": {name: asdict(component) for name, component in self.components.items()},
            "created_databases": self.created_databases,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
