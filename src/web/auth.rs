//! Write access: a token as `Authorization: Bearer T`, as the password of HTTP Basic auth
//! (what `resultsdb_api` sends when built with `request_auth`), or as `_auth_token` in the
//! JSON body (what it sends otherwise).

use axum::http::{HeaderMap, StatusCode, header};

use super::WebState;
use super::error::ApiError;
use crate::util::{base64_decode, constant_time_eq};

/// Ok when the request carries an accepted token; 403 on a read-only server, 401 otherwise.
pub fn require_token(
    state: &WebState,
    headers: &HeaderMap,
    body_token: Option<&str>,
) -> Result<(), ApiError> {
    check_token(&state.tokens, headers, body_token)
}

/// [`require_token`] against a list of tokens (empty: read-only).
pub fn check_token(
    tokens: &[String],
    headers: &HeaderMap,
    body_token: Option<&str>,
) -> Result<(), ApiError> {
    if tokens.is_empty() {
        return Err(ApiError::status(
            StatusCode::FORBIDDEN,
            "this server is read-only (no API tokens are configured)",
        ));
    }
    let mut offered: Vec<String> = Vec::new();
    if let Some(t) = body_token {
        offered.push(t.to_string());
    }
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            offered.push(rest.trim().to_string());
        } else if scheme.eq_ignore_ascii_case("basic")
            && let Some(decoded) = base64_decode(rest.trim())
            && let Ok(text) = String::from_utf8(decoded)
        {
            let (user, password) = text.split_once(':').unwrap_or((&text, ""));
            offered.push(password.to_string());
            offered.push(user.to_string());
        }
    }
    let ok = offered.iter().filter(|t| !t.is_empty()).any(|t| {
        tokens
            .iter()
            .any(|k| constant_time_eq(k.as_bytes(), t.as_bytes()))
    });
    if ok {
        Ok(())
    } else if offered.iter().all(|t| t.is_empty()) {
        Err(ApiError::status(
            StatusCode::UNAUTHORIZED,
            "authentication required: send a token as `Authorization: Bearer TOKEN`, \
             HTTP Basic auth, or `_auth_token` in the JSON body",
        ))
    } else {
        Err(ApiError::status(
            StatusCode::UNAUTHORIZED,
            "the token is not valid",
        ))
    }
}
