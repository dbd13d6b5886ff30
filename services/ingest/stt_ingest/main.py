"""Entry point: `python -m stt_ingest [serve]` runs the API; `python -m stt_ingest keys …` manages keys.

python -m stt_ingest keys create --name NAME --tenant TENANT [--rate-limit N] [--json]
python -m stt_ingest keys revoke PREFIX_OR_ID
python -m stt_ingest keys rotate-webhook-secret PREFIX_OR_ID
python -m stt_ingest keys list [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
from collections.abc import Sequence

from stt_common.db.engine import make_engine, make_sessionmaker
from stt_common.logs import configure_logging
from stt_ingest import keys
from stt_ingest.settings import IngestSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stt_ingest", description="The STT ingest REST API.")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the HTTP API (the default)")
    keys_parser = commands.add_parser("keys", help="manage API keys")
    key_commands = keys_parser.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key; prints the key and webhook secret once")
    create.add_argument("--name", required=True)
    create.add_argument("--tenant", required=True)
    create.add_argument("--rate-limit", type=int, default=None, help="submissions per minute (0 = unlimited)")
    create.add_argument(
        "--max-audio-hours",
        type=float,
        default=None,
        help="the longest recording this key may submit (default: the chunker's STT_MAX_AUDIO_SECONDS, 8 h)",
    )
    create.add_argument("--json", action="store_true", help="print JSON")
    revoke = key_commands.add_parser("revoke", help="revoke a key by id or prefix")
    revoke.add_argument("key", metavar="PREFIX_OR_ID")
    rotate = key_commands.add_parser(
        "rotate-webhook-secret", help="replace a key's webhook signing secret; prints the new one once"
    )
    rotate.add_argument("key", metavar="PREFIX_OR_ID")
    listing = key_commands.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    return parser


async def _keys(settings: IngestSettings, args: argparse.Namespace) -> int:
    engine = make_engine(settings.database_url, pool_size=1)
    sessionmaker = make_sessionmaker(engine)
    try:
        if args.keys_command == "create":
            created = await keys.create_key(
                sessionmaker,
                name=args.name,
                tenant=args.tenant,
                rate_limit_per_minute=args.rate_limit,
                max_audio_seconds=args.max_audio_hours * 3600 if args.max_audio_hours else None,
            )
            record = {
                "id": str(created.id),
                "name": created.name,
                "tenant": created.tenant,
                "prefix": created.prefix,
                "rate_limit_per_minute": created.rate_limit_per_minute,
                "max_audio_seconds": created.max_audio_seconds,
                "api_key": created.api_key,
                "webhook_secret": created.webhook_secret,
            }
            if args.json:
                print(json.dumps(record))
            else:
                for name, value in record.items():
                    print(f"{name}: {value}")
                print("Store the api_key and webhook_secret now: they are not shown again.", file=sys.stderr)
            return 0
        if args.keys_command == "revoke":
            try:
                info = await keys.revoke_key(sessionmaker, args.key)
            except LookupError as exc:
                print(f"error: {exc.args[0]}", file=sys.stderr)
                return 1
            print(f"revoked {info.id} ({info.prefix}, {info.name})")
            return 0
        if args.keys_command == "rotate-webhook-secret":
            try:
                secret = await keys.rotate_webhook_secret(sessionmaker, args.key)
            except LookupError as exc:
                print(f"error: {exc.args[0]}", file=sys.stderr)
                return 1
            print(f"webhook_secret: {secret}")
            print("Store it now: it is not shown again; receivers must switch to it.", file=sys.stderr)
            return 0
        rows = await keys.list_keys(sessionmaker)
        if args.json:
            print(json.dumps([
                {"id": str(row.id), "name": row.name, "tenant": row.tenant, "prefix": row.prefix,
                 "rate_limit_per_minute": row.rate_limit_per_minute,
                 "max_audio_seconds": row.max_audio_seconds, "created_at": row.created_at.isoformat(),
                 "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None}
                for row in rows
            ]))  # fmt: skip
        else:
            for row in rows:
                state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
                limit = "default" if row.rate_limit_per_minute is None else str(row.rate_limit_per_minute)
                longest = "default" if row.max_audio_seconds is None else f"{row.max_audio_seconds / 3600:g}h"
                print(
                    f"{row.id}  {row.prefix}  {row.name}  tenant={row.tenant}  limit={limit}  "
                    f"max_audio={longest}  {state}"
                )
        return 0
    finally:
        await engine.dispose()


def _raise_open_files_limit() -> None:
    """Every progress stream holds a connection, one descriptor each (STT_FOLLOW_MAX_STREAMS, 5,000):
    a soft limit left at the common 1,024 would refuse connections near 1,000 followers. The hard
    limit is the operator's (ulimit, the container runtime); the soft one is ours to raise to it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):  # not allowed here: keep the soft limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def serve(settings: IngestSettings) -> None:
    # Imported here so that `keys …` does not pay for the web stack's imports.
    import uvicorn

    from stt_ingest.app import create_app

    _raise_open_files_limit()
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(settings.http_graceful_shutdown_seconds),
        proxy_headers=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = IngestSettings()
    configure_logging(settings.log_level, service="ingest")
    if args.command == "keys":
        return asyncio.run(_keys(settings, args))
    serve(settings)
    return 0
