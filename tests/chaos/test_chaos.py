"""The chaos suite, short and seeded, inside `make test`: one private stack (port base
STT_CHAOS_PORT_BASE), a soak with a few kill -9s, then a transcriber frozen past its lease. The full
version, every scenario on a stack of its own, is `make test-chaos` (tests/chaos/driver.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.chaos.driver import Report, Stack, chaos_stack, explain, run_scenario, write_table

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

reports: list[Report] = []


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[Stack]:
    async with chaos_stack("test") as started:
        yield started
    if reports:
        print("\n" + write_table(reports))


def assert_promise_kept(report: Report) -> None:
    reports.append(report)
    assert report.jobs > 0, explain(report)
    assert not report.problems, explain(report)
    assert report.completed + report.cancelled + sum(report.failed.values()) == report.jobs, explain(report)


async def test_soak_with_kill_9s_loses_and_duplicates_nothing(stack: Stack) -> None:
    report = await run_scenario("soak", stack, jobs=6)
    assert_promise_kept(report)
    assert report.restarts >= 3, report.notes  # the kills happened, and were restarted


async def test_a_transcriber_frozen_past_its_lease_writes_no_second_result(stack: Stack) -> None:
    report = await run_scenario("transcriber_sigstop", stack, jobs=3)
    assert_promise_kept(report)
    # The frozen transcriber's chunk was claimed again by the other one: the lease did lapse.
    assert report.reclaimed_chunks >= 1, explain(report)


class _DriverError(Exception):
    """Stands in for asyncpg's errors, which carry the SQLSTATE."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def _wrapped(cause: BaseException) -> BaseException:
    try:
        raise RuntimeError("as SQLAlchemy wraps it") from cause
    except RuntimeError as error:
        return error


@pytest.mark.parametrize(
    ("cause", "unavailable"),
    [
        (ConnectionRefusedError(111, "Connection refused"), True),
        (_DriverError("57P03"), True),  # the database system is starting up
        (_DriverError("08003"), True),  # connection was closed in the middle of operation
        (_DriverError("23505"), False),  # a unique violation is a bug, not an outage
        (ValueError("anything else"), False),
    ],
)
def test_postgres_restarting_is_a_503_not_a_500(cause: BaseException, unavailable: bool) -> None:
    """Regression (found by the postgres_restart scenario): ingest answered 500 internal_error while
    Postgres restarted; the middleware now tells an outage (503, Retry-After) from a bug (500)."""
    from stt_ingest.middleware import dependency_unavailable

    assert dependency_unavailable(_wrapped(cause)) is unavailable
