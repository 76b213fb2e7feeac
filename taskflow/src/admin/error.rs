//! The admin API's one error type: every failure of a handler becomes a
//! JSON body `{ "error": …, "code": … }` with the status that fits it.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::Error;

/// Why an admin request failed; answered as an [`ErrorBody`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// A query parameter or path segment cannot be read (400).
    #[error("{0}")]
    BadRequest(String),
    /// No credentials, or wrong ones (401).
    #[error("authentication required")]
    Unauthorized,
    /// Authenticated, but the request is refused: a cross-site request or
    /// one without its CSRF token (403).
    #[error("{0}")]
    Forbidden(String),
    /// No task has this id (404).
    #[error("no task with id {0}")]
    NotFound(String),
    /// No route has this path (404).
    #[error("no route for `{0}`")]
    NoRoute(String),
    /// The task is in a state that does not allow this (409).
    #[error("{0}")]
    Conflict(String),
    /// The request body is not what the endpoint takes (422).
    #[error("{0}")]
    InvalidBody(String),
    /// Too many wrong passwords for this user: try again after the
    /// duration, sent as `Retry-After` (429).
    #[error("too many failed logins; try again in {} s", .0.as_secs().max(1))]
    TooManyRequests(std::time::Duration),
    /// The manager failed: the task store cannot be read or written (500).
    #[error("task manager failed")]
    Manager(#[source] Error),
}

impl AdminError {
    /// The HTTP status it answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::Forbidden(_) => StatusCode::FORBIDDEN,
            AdminError::NotFound(_) | AdminError::NoRoute(_) => StatusCode::NOT_FOUND,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::InvalidBody(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AdminError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            AdminError::Manager(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code in its body.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::BadRequest(_) => "bad_request",
            AdminError::Unauthorized => "unauthorized",
            AdminError::Forbidden(_) => "forbidden",
            AdminError::NotFound(_) | AdminError::NoRoute(_) => "not_found",
            AdminError::Conflict(_) => "conflict",
            AdminError::InvalidBody(_) => "invalid_body",
            AdminError::TooManyRequests(_) => "too_many_requests",
            AdminError::Manager(_) => "internal",
        }
    }
}

impl From<Error> for AdminError {
    fn from(error: Error) -> Self {
        match error {
            Error::NotFound(id) => AdminError::NotFound(id.to_string()),
            Error::AlreadyFinished { .. } | Error::NotRetryable { .. } => {
                AdminError::Conflict(error.to_string())
            }
            Error::UnknownTask(_) => AdminError::Conflict(error.to_string()),
            Error::InvalidQueue { .. } => AdminError::BadRequest(error.to_string()),
            other => AdminError::Manager(other),
        }
    }
}

/// The body of every error answer.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// What went wrong, for a program: `bad_request`, `unauthorized`,
    /// `forbidden`, `not_found`, `conflict`, `invalid_body`,
    /// `too_many_requests` or `internal`.
    pub code: String,
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let error = match &self {
            // The manager's error chain, not only its outer message.
            AdminError::Manager(source) => {
                tracing::warn!("admin request failed: {source}");
                format!("task manager failed: {source}")
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            error,
            code: self.code().to_owned(),
        };
        let mut response = (self.status(), Json(body)).into_response();
        if let AdminError::TooManyRequests(wait) = &self {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(value) = axum::http::HeaderValue::from_str(&seconds.to_string()) {
                response
                    .headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, value);
            }
        }
        if matches!(self, AdminError::Unauthorized) {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
