//! Write access: a token as `Authorization: Bearer T`, as the password of HTTP Basic auth
//! (what `resultsdb_api` sends when built with `request_auth`), or as `_auth_token` in the
//! JSON body (what it sends otherwise).

use axum::http::{HeaderMap, StatusCode, header};

use super::WebState;
use super::error::ApiError;

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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Standard base64 (padding optional); None on anything else.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(base64_decode("dXNlcjpzZWNyZXQ=").unwrap(), b"user:secret");
        assert_eq!(base64_decode("YQ").unwrap(), b"a");
        assert!(base64_decode("a b").is_none());
    }

    #[test]
    fn equal_tokens_only() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
