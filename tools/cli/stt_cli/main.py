"""`stt`: submit audio or video to the speech-to-text API, follow it, fetch the transcript.

    stt submit talk.mp3 --wait -o talk.txt      # upload, show progress, save the transcript
    stt submit https://example.org/a.mp3        # the server fetches the URL; prints the job id
    stt follow JOB --format srt                 # progress until the job ends, then the result
    stt status JOB | events JOB | result JOB | cancel JOB | retry JOB | delete JOB | list

The API and key come from --api-url/--api-key, else STT_API_URL/STT_API_KEY, else the `.stack/env`
file that `make up` writes in the current directory (so it works at once against the local stack).
Progress goes to stderr and the transcript to stdout (or -o), so `stt submit a.wav --wait > a.txt` works.
Exit status: 0 done, 1 the job failed or was cancelled, 2 bad usage, 3 the API refused or is unreachable,
130 interrupted (the job goes on on the server).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from stt_cli.client import explain
from stt_cli.progress import Progress
from stt_client import RESULT_FORMATS, Client, SttError, SubmitOptions

DEFAULT_API_URL = "http://127.0.0.1:18000"
LOCAL_STACK_ENV = Path(".stack/env")

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_API, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _stack_env(path: Path = LOCAL_STACK_ENV) -> dict[str, str]:
    if not path.is_file():
        return {}
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not name.startswith("#"):
            values[name.strip().removeprefix("export ")] = value.strip().strip("'\"")
    return values


def _connection(args: argparse.Namespace) -> tuple[str, str | None]:
    stack = _stack_env()
    url = args.api_url or os.environ.get("STT_API_URL") or stack.get("STT_API_URL") or DEFAULT_API_URL
    key = args.api_key or os.environ.get("STT_API_KEY") or stack.get("STT_API_KEY")
    return url, key


# ------------------------------------------------------------------------------------------ commands


def _options(args: argparse.Namespace) -> SubmitOptions:
    options = SubmitOptions(
        provider=args.provider,
        language=args.language,
        model=args.model,
        context_mode=args.context_mode,
        webhook_url=args.webhook_url,
        prompt=args.prompt,
    )
    if args.vocabulary:
        options["vocabulary"] = args.vocabulary
    if args.fallback:
        options["fallback_providers"] = args.fallback
    if args.task:
        options["task"] = args.task
    if args.chunk_seconds is not None:
        options["chunk_seconds"] = args.chunk_seconds
    return options  # options left None are not sent: the server's defaults apply


def cmd_submit(client: Client, args: argparse.Namespace) -> int:
    progress = Progress(quiet=args.quiet)
    options = _options(args)
    source: str = args.source
    if source.startswith(("http://", "https://")):
        submitted = client.submit_url(source, idempotency_key=args.idempotency_key, **options)
    else:
        path = Path(source)
        if not path.is_file():
            print(f"stt: {source}: no such file (give a file path or an http(s) URL)", file=sys.stderr)
            return EXIT_USAGE
        submitted = client.submit_file(
            path, idempotency_key=args.idempotency_key, on_upload=progress.upload, **options
        )
        progress.end()
    job_id = args.job_id = str(submitted["job_id"])
    if not args.wait:
        print(job_id)
        if not args.quiet:
            hint = f"`stt follow {job_id}` shows its progress"
            print(f"job {job_id} is {submitted['status']}; {hint}", file=sys.stderr)
        return EXIT_OK
    if not args.quiet:
        print(f"job {job_id}", file=sys.stderr)
    return _follow_and_fetch(client, job_id, args, progress)


def cmd_follow(client: Client, args: argparse.Namespace) -> int:
    return _follow_and_fetch(client, args.job_id, args, Progress(quiet=args.quiet))


def _follow_and_fetch(client: Client, job_id: str, args: argparse.Namespace, progress: Progress) -> int:
    try:
        job = client.wait(job_id, on_update=progress.job, poll_interval=args.interval, timeout=args.timeout)
    finally:
        progress.end()
    if job["status"] != "COMPLETED":
        error = job.get("error")
        reason = f": {error['code']}: {error.get('message')}" if error else ""
        print(f"stt: job {job_id} ended {job['status']}{reason}", file=sys.stderr)
        if error and error.get("next_step"):  # the server says what fits this error
            print(f"stt: {error['next_step']}", file=sys.stderr)
        return EXIT_JOB_FAILED
    _write_result(client.result_bytes(job_id, args.format), args.output)
    return EXIT_OK


def _write_result(data: bytes, output: Path | None) -> None:
    if output is None:
        sys.stdout.buffer.write(data if data.endswith(b"\n") else data + b"\n")
        sys.stdout.flush()
    else:
        output.write_bytes(data)
        print(f"saved {output}", file=sys.stderr)


_STATUS_FIELDS = (
    "provider",
    "language",
    "original_filename",
    "source_url",
    "duration_seconds",
    "created_at",
    "finished_at",
)


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    job = client.get_job(args.job_id)
    if args.json:
        print(json.dumps(job, indent=2))
        return EXIT_OK
    progress = job["progress"]
    chunks = f"{progress['chunks_done']}/{progress['chunks_total']} chunks"
    print(f"{job['id']}  {job['status']}  {chunks}")
    fields: Mapping[str, object] = job
    for name in _STATUS_FIELDS:
        if fields.get(name) is not None:
            print(f"  {name}: {fields[name]}")
    error = job["error"]
    if error:
        print(f"  error: {error['code']}: {error.get('message')}")
    return EXIT_OK


def cmd_events(client: Client, args: argparse.Namespace) -> int:
    for event in client.events(args.job_id):
        to_status = event.get("to_status")
        change = f"{event.get('from_status') or '-'} -> {to_status}" if to_status else ""
        detail = json.dumps(event["detail"], sort_keys=True) if event.get("detail") else ""
        print(f"{event['at']}  {event['stage']:<12} {change:<28} {detail}".rstrip())
    return EXIT_OK


def cmd_result(client: Client, args: argparse.Namespace) -> int:
    _write_result(client.result_bytes(args.job_id, args.format), args.output)
    return EXIT_OK


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    print(f"{args.job_id} {client.cancel(args.job_id)['status']}")
    return EXIT_OK


def cmd_retry(client: Client, args: argparse.Namespace) -> int:
    print(f"{args.job_id} {client.retry(args.job_id)['status']}")
    return EXIT_OK


def cmd_delete(client: Client, args: argparse.Namespace) -> int:
    client.delete(args.job_id)
    print(f"{args.job_id} deleted")
    return EXIT_OK


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    for job in client.iter_jobs(status=args.status, max_items=args.limit):
        progress = job.get("progress") or {}
        name = job.get("original_filename") or job.get("source_url") or ""
        chunks = f"{progress.get('chunks_done')}/{progress.get('chunks_total')}"
        print(f"{job['id']}  {job['status']:<12} {chunks:>7}  {job['created_at']}  {name}")
    return EXIT_OK


def cmd_providers(client: Client, args: argparse.Namespace) -> int:
    listing = client.providers()
    if args.json:
        print(json.dumps(listing, indent=2))
        return EXIT_OK
    for item in listing["items"]:
        state = "configured" if item["configured"] else "not configured"
        default = " (default)" if item["default"] else ""
        caps = item["capabilities"]
        times = {"words": "word times", "segments": "segment times", "none": "estimated times"}
        languages = ", ".join(caps["languages"]) if caps["languages"] else "many languages"
        print(
            f"{item['name']:<11} {state:<15} model {item['default_model']}{default}; "
            f"{times[caps['timestamps']]}; {languages}"
        )
    return EXIT_OK


# --------------------------------------------------------------------------------------------- parser


def _add_result_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", "-f", choices=RESULT_FORMATS, default="txt", help="default: txt")
    parser.add_argument("--output", "-o", type=Path, help="write the transcript here (default: stdout)")


def _add_follow_options(parser: argparse.ArgumentParser) -> None:
    _add_result_options(parser)
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds between polls, for servers without progress streams (default 1)",
    )
    parser.add_argument("--timeout", type=float, help="stop following after this many seconds")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--api-url", help=f"default: STT_API_URL, .stack/env, or {DEFAULT_API_URL}")
    parser.add_argument("--api-key", help="default: STT_API_KEY or .stack/env")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser("submit", help="upload a file or submit a URL")
    submit.add_argument("source", help="a local audio/video file, or an http(s) URL for the server to fetch")
    submit.add_argument("--provider", help="e.g. local, openai (default: the server's)")
    submit.add_argument("--language", help="e.g. en, hy (default: detected)")
    submit.add_argument("--model")
    submit.add_argument("--context-mode", choices=("parallel", "chained"))
    submit.add_argument("--webhook-url", help="POSTed a signed notice when the job ends")
    submit.add_argument("--prompt", help="names and terms that help the provider")
    submit.add_argument("--vocabulary", action="append", help="a term; repeat for more")
    submit.add_argument(
        "--fallback",
        action="append",
        metavar="PROVIDER",
        help="a provider tried for a chunk whose provider is down, rate limited or out of quota; "
        "repeat for more, in order",
    )
    submit.add_argument(
        "--task",
        choices=("transcribe", "translate"),
        help="translate: English text whatever the language spoken (local with model base)",
    )
    submit.add_argument(
        "--chunk-seconds",
        type=float,
        help="planned chunk length, 30-900 s: shorter finishes sooner with many transcribers "
        "(default: the server's)",
    )
    submit.add_argument("--idempotency-key", help="resubmitting with the same key returns the same job")
    submit.add_argument("--wait", "-w", action="store_true", help="follow the job and print the result")
    _add_follow_options(submit)
    submit.set_defaults(run=cmd_submit)

    follow = commands.add_parser("follow", help="show a job's progress until it ends, then its result")
    follow.add_argument("job_id")
    _add_follow_options(follow)
    follow.set_defaults(run=cmd_follow)

    status = commands.add_parser("status", help="a job's status, progress and error")
    status.add_argument("job_id")
    status.add_argument("--json", action="store_true", help="the API's whole answer")
    status.set_defaults(run=cmd_status)

    result = commands.add_parser("result", help="download a finished job's transcript")
    result.add_argument("job_id")
    _add_result_options(result)
    result.set_defaults(run=cmd_result)

    simple: dict[str, tuple[str, Callable[[Client, argparse.Namespace], int]]] = {
        "events": ("a job's timeline, oldest first", cmd_events),
        "cancel": ("cancel an active job", cmd_cancel),
        "retry": ("retry a failed job (only unfinished chunks are redone)", cmd_retry),
        "delete": ("delete a job and its files", cmd_delete),
    }
    for name, (help_text, run) in simple.items():
        command = commands.add_parser(name, help=help_text)
        command.add_argument("job_id")
        command.set_defaults(run=run)

    providers = commands.add_parser("providers", help="the providers this server offers, configured or not")
    providers.add_argument("--json", action="store_true", help="the API's whole answer")
    providers.set_defaults(run=cmd_providers)

    listing = commands.add_parser("list", help="your jobs, newest first")
    listing.add_argument("--status", help="only jobs in this status, e.g. FAILED")
    listing.add_argument("--limit", type=int, default=20, help="default: 20")
    listing.set_defaults(run=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    url, key = _connection(args)
    if not key:
        print("stt: no API key: pass --api-key or set STT_API_KEY", file=sys.stderr)
        return EXIT_USAGE
    run: Callable[[Client, argparse.Namespace], int] = args.run
    try:
        with Client(url, key) as client:
            return run(client, args)
    except SttError as error:
        print(f"stt: {explain(error, url)}", file=sys.stderr)
        return EXIT_API
    except KeyboardInterrupt:
        job = getattr(args, "job_id", None)
        again = f"; `stt follow {job}` picks it up again" if job else ""
        print(f"\nstt: interrupted; the job goes on on the server{again}", file=sys.stderr)
        return EXIT_INTERRUPTED
