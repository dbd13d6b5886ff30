"""System packages from Debian: checked first so that a warm machine does nothing at all."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from stt_devstack.infra import postgres_bin
from stt_devstack.state import StackError

# (package, binary that proves it is installed; None = ask dpkg)
ALWAYS: tuple[tuple[str, str | None], ...] = (
    ("ffmpeg", "ffmpeg"),
    ("espeak-ng", "espeak-ng"),
    ("prometheus", "promtool"),
    ("sox", "sox"),
    ("pocketsphinx-testdata", None),
)
_LOCK_MESSAGES = ("Could not get lock", "Unable to acquire the dpkg", "is held by process")
_NO_LISTS_MESSAGES = ("Unable to locate package", "has no installation candidate", "Failed to fetch")
_LOCK_WAIT_SECONDS = 600.0


def dpkg_installed(package: str) -> bool:
    if shutil.which("dpkg-query") is None:
        return False
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and result.stdout.strip() == "install ok installed"


def _has_postgres() -> bool:
    try:
        postgres_bin("initdb")
        postgres_bin("pg_ctl")
    except StackError:
        return False
    return True


def missing_packages() -> list[str]:
    missing = [
        package
        for package, binary in ALWAYS
        if (shutil.which(binary) is None if binary else not dpkg_installed(package))
    ]
    # Only needed for a throwaway cluster/server; a machine may provide them another way.
    if not _has_postgres():
        missing.append("postgresql")
    if shutil.which("redis-server") is None:
        missing.append("redis-server")
    return missing


def ensure_system_packages() -> list[str]:
    """Install what is missing with apt-get; returns what it installed (empty on a warm machine).

    Waits while another apt/dpkg holds the lock, and runs `apt-get update` only when the install
    failed for lack of package lists."""
    missing = missing_packages()
    if not missing:
        return []
    if shutil.which("apt-get") is None:
        raise StackError(f"missing system packages ({', '.join(missing)}) and no apt-get to install them")
    sudo: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise StackError(f"missing system packages ({', '.join(missing)}); install them as root")
        sudo = ["sudo", "-n"]
    print(f"installing {', '.join(missing)} with apt-get", file=sys.stderr)
    deadline = time.monotonic() + _LOCK_WAIT_SECONDS
    updated = False
    while True:
        install = _apt(sudo, ["install", "-y", "-q", *missing])
        if install.returncode == 0:
            return missing
        if _locked(install) and time.monotonic() < deadline:
            print("apt/dpkg is locked by another process; waiting", file=sys.stderr)
            time.sleep(5)
            continue
        if not updated and any(message in install.stdout + install.stderr for message in _NO_LISTS_MESSAGES):
            update = _apt(sudo, ["update", "-q"])
            if update.returncode == 0:
                updated = True
            elif not (_locked(update) and time.monotonic() < deadline):
                raise StackError(f"apt-get update failed:\n{update.stderr[-2000:]}")
            continue
        raise StackError(
            f"apt-get install {' '.join(missing)} failed:\n{(install.stdout + install.stderr)[-3000:]}"
        )


def _apt(sudo: list[str], args: list[str]) -> subprocess.CompletedProcess[str]:
    # DPkg::Lock::Timeout makes apt itself wait a while for the lock before giving up.
    return subprocess.run(
        [*sudo, "apt-get", "-o", "DPkg::Lock::Timeout=60", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        check=False,
    )


def _locked(result: subprocess.CompletedProcess[str]) -> bool:
    return any(message in result.stdout + result.stderr for message in _LOCK_MESSAGES)
