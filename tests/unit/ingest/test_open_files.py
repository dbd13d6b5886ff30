"""Ingest raises its soft limit on open files to the hard one: each progress stream holds a
descriptor, and the common soft default (1,024) would refuse followers long before
STT_FOLLOW_MAX_STREAMS."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import resource
from stt_ingest.main import _raise_open_files_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
_raise_open_files_limit()
print(*resource.getrlimit(resource.RLIMIT_NOFILE), hard)
"""


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    # In a child process: the test run's own limits stay as they are.
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
    soft, hard, original_hard = (int(value) for value in out.split())
    assert hard == original_hard
    assert soft == (hard if hard > 0 else 1 << 20)
    assert soft > 256
