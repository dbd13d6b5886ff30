"""Alembic without an ini file: the database URL comes from settings, the scripts from this package.

`python -m stt_common.db.migrate upgrade|downgrade [revision]` is what the stack tool and the
chart's migrations Job run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alembic import command
from alembic.config import Config

from stt_common.settings import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def main() -> None:
    parser = argparse.ArgumentParser(description="Apply or revert the database schema.")
    parser.add_argument("action", choices=["upgrade", "downgrade"])
    parser.add_argument("revision", nargs="?", help="target revision (default: head / base)")
    args = parser.parse_args()
    settings = Settings()
    if args.action == "upgrade":
        upgrade(settings.database_url, args.revision or "head")
    else:
        downgrade(settings.database_url, args.revision or "base")


if __name__ == "__main__":
    main()
