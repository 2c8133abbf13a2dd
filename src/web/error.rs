//! Errors as ResultsDB clients expect them: `{"message": "…"}` with a 4xx/5xx status, and for
//! a refused parameter or body field also ResultsDB 2.2's `validation_error` list
//! (`[{"loc": [field], "msg": …, "type": …}]`).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The parameter or body field that failed validation (ResultsDB's `loc`).
    pub field: Option<String>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::status(StatusCode::BAD_REQUEST, message)
    }

    /// A 400 for one parameter or body field: carries `validation_error` as ResultsDB's do.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            field: Some(field.into()),
            ..ApiError::bad_request(message)
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::status(StatusCode::NOT_FOUND, message)
    }

    pub fn status(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            field: None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_not_found() {
            return ApiError::not_found(e.to_string());
        }
        tracing::error!("store: {e}");
        ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match &self.field {
            None => serde_json::json!({ "message": self.message }),
            Some(field) => serde_json::json!({
                "message": self.message,
                "validation_error": [{
                    "loc": [field],
                    "msg": self.message,
                    "type": "value_error",
                }],
            }),
        };
        (self.status, Json(body)).into_response()
    }
}

/// What an unknown route answers (ResultsDB's 404 handler gives the same body).
pub async fn not_found_fallback() -> ApiError {
    ApiError::not_found("Not found")
}

pub type ApiResult<T> = Result<T, ApiError>;
