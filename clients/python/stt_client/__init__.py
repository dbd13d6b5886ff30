"""Python client of the speech-to-text API (`/api/v1`): `Client` and `AsyncClient`, the API's models as
`TypedDict`s, typed errors, and `verify_webhook` for webhook receivers. Depends on httpx only."""

from stt_client._async import AsyncClient
from stt_client._core import RetryPolicy
from stt_client._sync import Client
from stt_client.errors import (
    ApiConnectionError,
    ApiError,
    ApiTimeoutError,
    SttError,
    WaitTimeoutError,
    WebhookVerificationError,
)
from stt_client.models import (
    RESULT_FORMATS,
    TERMINAL_STATUSES,
    Job,
    JobError,
    JobEvent,
    JobPage,
    JobStatus,
    JobWebhooks,
    Problem,
    Progress,
    ProviderList,
    ResultFormat,
    SubmitOptions,
    Submitted,
    Transcript,
    WebhookDelivery,
    WebhookEvent,
)
from stt_client.webhooks import verify_webhook

__all__ = [
    "RESULT_FORMATS",
    "TERMINAL_STATUSES",
    "ApiConnectionError",
    "ApiError",
    "ApiTimeoutError",
    "AsyncClient",
    "Client",
    "Job",
    "JobError",
    "JobEvent",
    "JobPage",
    "JobStatus",
    "JobWebhooks",
    "Problem",
    "Progress",
    "ProviderList",
    "ResultFormat",
    "RetryPolicy",
    "SttError",
    "SubmitOptions",
    "Submitted",
    "Transcript",
    "WaitTimeoutError",
    "WebhookDelivery",
    "WebhookEvent",
    "WebhookVerificationError",
    "verify_webhook",
]
