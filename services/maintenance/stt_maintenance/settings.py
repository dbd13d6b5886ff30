"""Maintenance settings (env prefix `STT_`): staleness thresholds per status, re-drive budget, retention."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field

from stt_common.db.models import JobStatus
from stt_common.settings import Settings

# "STTMAINT" as a number: the advisory lock every maintenance pass takes.
DEFAULT_LOCK_ID = int.from_bytes(b"STTMAINT", "big")


class MaintenanceSettings(Settings):
    service_name: str = "maintenance"
    ops_port: int = 8086

    # A job is stale when neither its status nor its timeline changed for this long.
    stale_pending_seconds: float = Field(
        default=2 * 3600.0,
        gt=0,
        description="PENDING (upload or URL download running in ingest): failed as `stalled` after "
        "this, since there is nothing to re-emit. Longer than any upload or download may take.",
    )
    stale_uploaded_seconds: float = Field(
        default=1800.0, gt=0, description="UPLOADED without activity this long: `stt.jobs.submitted` again."
    )
    stale_chunking_seconds: float = Field(
        default=1800.0, gt=0, description="CHUNKING without activity this long: `stt.jobs.submitted` again."
    )
    stale_transcribing_seconds: float = Field(
        default=1800.0,
        gt=0,
        description="Counts from the last chunk finished; a live chunk lease is progress.",
    )
    stale_merging_seconds: float = Field(
        default=1800.0, gt=0, description="MERGING without activity this long: `stt.jobs.transcribed` again."
    )
    max_redrives: int = Field(
        default=2, ge=0, description="Re-drives without progress before a stale job is failed as `stalled`."
    )
    renotify_after_seconds: float = Field(
        default=900.0,
        gt=0,
        description="A job with a webhook that finished this long ago and has no delivery for its last "
        "terminal state gets its `stt.jobs.finished` trigger again (the notifier de-duplicates).",
    )
    renotify_window_seconds: float = Field(
        default=24 * 3600.0, gt=0, description="Only jobs finished within this window are re-notified."
    )

    retention_days: float = Field(
        default=7.0, gt=0, description="Finished jobs older than this are deleted (S3 prefix, then rows)."
    )
    orphan_chunks_grace_seconds: float = Field(
        default=300.0,
        gt=0,
        description="A job that failed or was cancelled while being chunked has its leftover chunk "
        "objects deleted this long after it ended (the chunker deletes them itself; this catches an "
        "upload that landed after that cleanup).",
    )
    maintenance_batch_size: int = Field(default=500, ge=1, description="Jobs looked at per step per pass.")
    maintenance_interval_seconds: float = Field(
        default=60.0, gt=0, description="Pause between passes in `loop` mode."
    )
    maintenance_lock_id: int = Field(default=DEFAULT_LOCK_ID, description="pg advisory lock key.")

    def stale_after(self, status: JobStatus) -> timedelta:
        seconds = {
            JobStatus.PENDING: self.stale_pending_seconds,
            JobStatus.UPLOADED: self.stale_uploaded_seconds,
            JobStatus.CHUNKING: self.stale_chunking_seconds,
            JobStatus.TRANSCRIBING: self.stale_transcribing_seconds,
            JobStatus.MERGING: self.stale_merging_seconds,
        }[status]
        return timedelta(seconds=seconds)
