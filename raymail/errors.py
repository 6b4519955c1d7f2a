"""The one error vocabulary of raymail.

    RaymailError
    ├── ConfigError            configuration is invalid; message names the subsystem
    ├── ApiError               an error a client caused or can act on; carries
    │   │                      an HTTP status and a stable machine code
    │   ├── BadRequest         400 malformed JSON / query parameters
    │   ├── Unauthorized       401 missing or invalid token
    │   ├── Forbidden          403 acting for somebody else
    │   ├── NotFound           404 no such resource for this user
    │   ├── Gone               410 an event cursor older than what is kept
    │   ├── PayloadTooLarge    413 message or body over the configured limit
    │   ├── Unprocessable      422 well-formed but not acceptable
    │   ├── RateLimited        429 with retry_after_s
    │   └── Unavailable        503 a backend did not answer in time
    ├── StorageError           blob storage failed (mapped from fsspec/OS errors)
    └── SmtpClientError        an outbound SMTP session failed (mapped from OS/TLS errors)
        ├── ConnectFailed      no session: connect, greeting or EHLO/HELO refused
        └── ConnectionLost     the session broke: closed, timed out, or not SMTP

Third-party errors are mapped to these at the boundary (``raise X from exc``).
"""

from __future__ import annotations


class RaymailError(Exception):
    """Base of every error raymail raises on purpose."""


class ConfigError(RaymailError):
    """The configuration is invalid. The message starts with ``[subsystem]``."""


class StorageError(RaymailError):
    """Blob storage could not complete an operation."""


class SmtpClientError(RaymailError):
    """An outbound SMTP session failed."""


class ConnectFailed(SmtpClientError):
    """No SMTP session could be opened with the server."""


class ConnectionLost(SmtpClientError):
    """The session broke mid-way. ``replies`` holds the recipients' replies already
    known when it broke (each refused RCPT); the rest have none."""

    def __init__(self, message: str, replies: dict | None = None) -> None:
        super().__init__(message)
        self.replies = replies or {}


class ApiError(RaymailError):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Gone(ApiError):
    status = 410
    code = "gone"


class PayloadTooLarge(ApiError):
    status = 413
    code = "too_large"


class Unprocessable(ApiError):
    status = 422
    code = "unprocessable"


class RateLimited(ApiError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(ApiError):
    status = 503
    code = "unavailable"
