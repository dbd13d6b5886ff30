"""The per-key rate limit across two ingest processes sharing one Redis: for each of several windows,
N concurrent uploads for one key, alternating between the two processes, all within one window;
exactly the key's limit must be admitted (202), the rest refused (429).

Each round starts once the previous round's admissions have left the (sliding) window. Prints and
writes bench/results/limiter.json: per window, allowed vs configured, by process, and how long the
burst took (it must stay shorter than the window for the count to be exact).
Sizes: BENCH_LIMITER_LIMIT (20), BENCH_LIMITER_WINDOW_SECONDS (10), BENCH_LIMITER_REQUESTS (60 per
window), BENCH_LIMITER_ROUNDS (4), BENCH_LIMITER_CLIENTS (20). Run: `make bench-limiter`."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench._load import env_int, start_ingest, upload
from bench._stack import bench_stack, write_result
from stt_ingest import keys
from tests.fixtures.audio import silence_wav

LIMIT = env_int("BENCH_LIMITER_LIMIT", 20)
WINDOW_SECONDS = env_int("BENCH_LIMITER_WINDOW_SECONDS", 10)
REQUESTS = env_int("BENCH_LIMITER_REQUESTS", 60)
ROUNDS = env_int("BENCH_LIMITER_ROUNDS", 4)
CLIENTS = env_int("BENCH_LIMITER_CLIENTS", 20)


async def burst(base_urls: list[str], api_key: str, audio: Path) -> list[Counter[str]]:
    """REQUESTS uploads from CLIENTS concurrent clients, alternating between the processes: the
    responses' status codes counted per process."""
    by_process: list[Counter[str]] = [Counter() for _ in base_urls]
    numbers = iter(range(REQUESTS))

    async def client() -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(60, connect=10)) as http:
            for number in numbers:
                process = number % len(base_urls)
                try:
                    status, _, _ = await upload(http, base_urls[process], api_key, audio)
                except httpx.HTTPError as exc:
                    by_process[process][type(exc).__name__] += 1
                    continue
                by_process[process][str(status)] += 1

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return by_process


async def main() -> None:
    async with bench_stack() as bench:
        audio = silence_wav(bench.work / "one-second.wav", 1.0)
        bench.env.update(STT_RATE_LIMIT_WINDOW_SECONDS=str(WINDOW_SECONDS))
        api_key = (
            await keys.create_key(bench.sessions, name="limited", tenant="bench", rate_limit_per_minute=LIMIT)
        ).api_key
        base_urls = [(await start_ingest(bench))[1] for _ in range(2)]

        rounds: list[dict[str, Any]] = []
        for round_number in range(ROUNDS):
            started = time.perf_counter()
            by_process = await burst(base_urls, api_key, audio)
            seconds = time.perf_counter() - started
            allowed = sum(counts["202"] for counts in by_process)
            rounds.append(
                {
                    "allowed": allowed,
                    "configured": LIMIT,
                    "exact": allowed == LIMIT,
                    "burst_seconds": round(seconds, 2),
                    "within_window": seconds < WINDOW_SECONDS,
                    "by_process": [dict(counts) for counts in by_process],
                }
            )
            print(
                f"window {round_number + 1}: allowed {allowed} of {REQUESTS}, configured {LIMIT}"
                f" (burst {seconds:.2f} s, window {WINDOW_SECONDS} s)"
            )
            await asyncio.sleep(WINDOW_SECONDS + 1)  # every admission of this round leaves the window

        write_result(
            "limiter",
            {
                "ingest_processes": 2,
                "limit_per_window": LIMIT,
                "window_seconds": WINDOW_SECONDS,
                "requests_per_window": REQUESTS,
                "clients": CLIENTS,
                "every_window_exact": all(r["exact"] for r in rounds),
                "windows": rounds,
            },
        )


if __name__ == "__main__":
    asyncio.run(main())
