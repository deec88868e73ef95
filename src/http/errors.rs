//! The one place that maps errors to HTTP statuses and JSON bodies.
//!
//! Every error answers `{"error": "<reason>"}`. Client mistakes say what
//! was wrong; backend failures are logged in full and answered with a
//! short reason (and `Retry-After` when waiting helps), never leaking
//! internals.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use tracing::{error, warn};

use crate::queue::QueueError;
use crate::store::StoreError;

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_SECS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid API key: send `Authorization: Bearer <api key>` (or sign in on the dashboard)")]
    Unauthorized,
    /// Credentials that were sent but do not hold (or none, where the
    /// endpoint also takes HTTP Basic); the reason says which.
    #[error("{0}")]
    BadCredentials(String),
    /// Signed in, but the request came from another origin (CSRF).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request body made no progress for too long.
    #[error("request body stalled: send it without pauses of 10 s or more")]
    Timeout,
    /// Past a per-address limit (`RATE_LIMIT_PER_IP`, sign-in attempts)
    /// or a cap (live streams); the client may retry after the duration.
    #[error("too many requests; retry after {} s", retry_secs(.0))]
    TooManyRequests(std::time::Duration),
    /// A backend cannot take the request now; the client should retry.
    #[error("{0}")]
    Unavailable(String),
    /// The configured backend does not offer this (yet); the message
    /// says which.
    #[error("{0}")]
    NotImplemented(String),
    /// A fault of ours; the detail is logged, not sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A short label for the `hits_rejected_total{reason}` counter.
    pub fn reason_label(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized | ApiError::BadCredentials(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::TooLarge(_) => "too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Timeout => "timeout",
            ApiError::TooManyRequests(_) => "rate_limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::NotImplemented(_) => "not_implemented",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::BadCredentials(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        match self {
            ApiError::Internal(detail) => error!(detail, "Internal error."),
            ApiError::Unavailable(detail) => {
                warn!(detail, "Backend unavailable; answering 503.");
                res.insert_header((header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS)));
            }
            ApiError::Unauthorized => {
                res.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            }
            // Basic too, so a scheduled fetch (or a browser) knows it may
            // send the API key as a password.
            ApiError::BadCredentials(_) => {
                res.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"tally\", charset=\"UTF-8\""),
                ));
            }
            ApiError::TooManyRequests(wait) => {
                res.insert_header((header::RETRY_AFTER, HeaderValue::from(retry_secs(wait))));
            }
            // The body is left unread: the connection cannot be reused.
            ApiError::Timeout => {
                res.force_close();
            }
            _ => {}
        }
        res.json(serde_json::json!({ "error": self.to_string() }))
    }
}

/// Whole seconds to wait (`Retry-After` has no fractions), at least 1.
fn retry_secs(wait: &std::time::Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => ApiError::Unavailable(format!("store unavailable: {m}")),
            StoreError::Unsupported(m) => ApiError::NotImplemented(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Closed => ApiError::Unavailable("shutting down; retry shortly".into()),
            QueueError::Corrupt(m) | QueueError::Config(m) => ApiError::Internal(m),
            other => ApiError::Unavailable(format!("hit could not be made durable: {other}")),
        }
    }
}
