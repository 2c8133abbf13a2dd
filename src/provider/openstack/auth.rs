//! Keystone v3 and the one HTTP client every call goes through.
//!
//! - Tokens: password or application-credential authentication, renewed before expiry
//!   (and once more if a service answers 401), shared by concurrent calls.
//! - Endpoints: from the token's service catalog, by service type, interface and region,
//!   unless clouds.yaml overrides them.
//! - Faults: 429 and 5xx are retried with exponential backoff and jitter (honouring
//!   `Retry-After`); a POST only when the service cannot have acted on it (429, 503, no
//!   connection). Every error names the cloud, the method and the URL.

use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::config::{AuthMethod, CloudConfig, NameOrId, Named};

/// One failed exchange with the cloud.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub cloud: String,
    pub method: Method,
    pub url: String,
    /// `None` when no answer came (connection refused, timeout).
    pub status: Option<StatusCode>,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cloud `{}`: {} {}: ", self.cloud, self.method, self.url)?;
        match self.status {
            Some(s) => write!(f, "{s}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn is_not_found(&self) -> bool {
        self.status == Some(StatusCode::NOT_FOUND)
    }

    /// Nova says 403 (or 413 on old releases) with a message naming the quota.
    pub fn is_quota(&self) -> bool {
        matches!(self.status.map(|s| s.as_u16()), Some(403 | 413))
            && self.message.to_ascii_lowercase().contains("quota")
    }

    /// Whether asking again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self.status {
            None => true,
            Some(s) => {
                self.is_quota() || s.is_server_error() || matches!(s.as_u16(), 408 | 409 | 429)
            }
        }
    }
}

/// The message in an OpenStack error body: Nova's `{"forbidden": {"message": …}}`,
/// Keystone's `{"error": {"message": …}}`, Neutron's `{"NeutronError": {…}}`, Glance's
/// plain text, or the body itself, shortened.
pub fn error_message(body: &str) -> String {
    if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(body) {
        for v in m.values() {
            if let Some(msg) = v.get("message").and_then(Value::as_str) {
                return msg.to_string();
            }
        }
        if let Some(msg) = m.get("message").and_then(Value::as_str) {
            return msg.to_string();
        }
    }
    let text: String = body
        .replace(['\n', '\r'], " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let text = strip_tags(&text);
    if text.len() > 300 {
        format!("{}…", crate::util::truncate_at(&text, 300))
    } else if text.is_empty() {
        "(empty body)".into()
    } else {
        text
    }
}

fn strip_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut inside = false;
    for c in s.chars() {
        match c {
            '<' => inside = true,
            '>' if inside => inside = false,
            c if !inside => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[derive(Debug, Clone, Deserialize)]
pub struct CatalogEntry {
    #[serde(rename = "type")]
    pub service_type: String,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Endpoint {
    pub interface: String,
    #[serde(default)]
    pub region_id: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    pub url: String,
}

/// The endpoint of `service` for `interface` in `region` (any region when `None`).
pub fn pick_endpoint(
    catalog: &[CatalogEntry],
    service: &str,
    interface: &str,
    region: Option<&str>,
) -> Result<String, String> {
    let entries: Vec<&CatalogEntry> = catalog
        .iter()
        .filter(|e| e.service_type == service)
        .collect();
    if entries.is_empty() {
        let mut types: Vec<&str> = catalog.iter().map(|e| e.service_type.as_str()).collect();
        types.sort_unstable();
        types.dedup();
        return Err(format!(
            "the service catalog has no `{service}` service (it has: {})",
            types.join(", ")
        ));
    }
    let found = entries.iter().flat_map(|e| &e.endpoints).find(|ep| {
        ep.interface == interface
            && region.is_none_or(|r| {
                ep.region_id.as_deref() == Some(r) || ep.region.as_deref() == Some(r)
            })
    });
    match found {
        Some(ep) => Ok(ep.url.trim_end_matches('/').to_string()),
        None => {
            let have: Vec<String> = entries
                .iter()
                .flat_map(|e| &e.endpoints)
                .map(|ep| {
                    format!(
                        "{} in {}",
                        ep.interface,
                        ep.region_id
                            .as_deref()
                            .or(ep.region.as_deref())
                            .unwrap_or("no region")
                    )
                })
                .collect();
            Err(format!(
                "no `{service}` endpoint with interface {interface}{} (the catalog has: {})",
                region
                    .map(|r| format!(" in region {r}"))
                    .unwrap_or_default(),
                have.join(", ")
            ))
        }
    }
}

/// The base URL a client of `service` uses, given the catalog's (often unversioned) URL.
pub fn versioned(service: &str, url: &str) -> String {
    let url = url.trim_end_matches('/');
    let has = |v: &str| url.split('/').any(|seg| seg == v);
    match service {
        "compute" if !url.split('/').any(|s| s.starts_with("v2")) => format!("{url}/v2.1"),
        "image" if !has("v2") => format!("{url}/v2"),
        "network" if !has("v2.0") => format!("{url}/v2.0"),
        _ => url.to_string(),
    }
}

struct Token {
    value: String,
    expires_at: OffsetDateTime,
    /// Renew when less than this is left.
    margin: time::Duration,
    catalog: Vec<CatalogEntry>,
}

/// Renew at the latest 5 minutes before expiry, earlier for short-lived tokens.
fn renewal_margin(issued: OffsetDateTime, expires: OffsetDateTime) -> time::Duration {
    let lifetime = expires - issued;
    let quarter: time::Duration = lifetime / 4;
    quarter.clamp(time::Duration::ZERO, time::Duration::minutes(5))
}

pub struct Client {
    pub cloud: CloudConfig,
    http: reqwest::Client,
    token: tokio::sync::Mutex<Option<Token>>,
    identity: tokio::sync::OnceCell<String>,
    /// How many times a token was obtained (for tests and logs).
    pub auths: std::sync::atomic::AtomicUsize,
}

/// Compute API version sent with every Nova request: the base 2.1 has all ferrotron uses.
pub const COMPUTE_MICROVERSION: &str = "2.1";

const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Exponential backoff with "equal jitter": between half and all of base·2ⁿ, capped.
pub fn backoff(attempt: u32) -> Duration {
    let full = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP);
    let half = full / 2;
    half + half.mul_f64(rand::random::<f64>())
}

impl Client {
    pub fn new(cloud: CloudConfig) -> Result<Client, String> {
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("ferrotron/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .timeout(Duration::from_secs(cloud.settings.request_timeout.max(1)));
        if !cloud.verify {
            b = b.danger_accept_invalid_certs(true);
        }
        if let Some(ca) = &cloud.cacert {
            let pem = std::fs::read(ca).map_err(|e| {
                format!(
                    "cloud `{}`: reading cacert {}: {e}",
                    cloud.name,
                    ca.display()
                )
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("cloud `{}`: cacert {}: {e}", cloud.name, ca.display()))?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b
            .build()
            .map_err(|e| format!("cloud `{}`: HTTP client: {e}", cloud.name))?;
        Ok(Client {
            cloud,
            http,
            token: tokio::sync::Mutex::new(None),
            identity: tokio::sync::OnceCell::new(),
            auths: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn err(
        &self,
        method: &Method,
        url: &str,
        status: Option<StatusCode>,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            cloud: self.cloud.name.clone(),
            method: method.clone(),
            url: url.to_string(),
            status,
            message: message.into(),
        }
    }

    /// The Keystone v3 base URL: auth_url itself when it names v3, else found through
    /// version discovery, else auth_url + `/v3`.
    async fn identity(&self) -> Result<String, ApiError> {
        self.identity
            .get_or_try_init(|| async {
                let base = self.cloud.auth_url.trim_end_matches('/').to_string();
                if base.rsplit('/').next().is_some_and(|s| s.starts_with("v3")) {
                    return Ok(base);
                }
                let r = self
                    .http
                    .get(&base)
                    .header("Accept", "application/json")
                    .send()
                    .await
                    .map_err(|e| self.err(&Method::GET, &base, None, e.to_string()))?;
                let doc: Value = r.json().await.unwrap_or(Value::Null);
                let versions = doc
                    .pointer("/versions/values")
                    .or_else(|| doc.get("versions"))
                    .and_then(Value::as_array)
                    .cloned()
                    .or_else(|| doc.get("version").map(|v| vec![v.clone()]))
                    .unwrap_or_default();
                let found = versions.iter().find_map(|v| {
                    let id = v.get("id")?.as_str()?;
                    if !id.starts_with("v3") {
                        return None;
                    }
                    v.get("links")?.as_array()?.iter().find_map(|l| {
                        (l.get("rel")?.as_str()? == "self").then(|| {
                            l.get("href")?
                                .as_str()
                                .map(|h| h.trim_end_matches('/').to_string())
                        })?
                    })
                });
                Ok(found.unwrap_or_else(|| format!("{base}/v3")))
            })
            .await
            .cloned()
    }

    fn auth_body(&self) -> Value {
        fn named(n: &Named) -> Value {
            let mut v = match &n.which {
                NameOrId::Id(id) => json!({ "id": id }),
                NameOrId::Name(name) => json!({ "name": name }),
            };
            if let Some(d) = &n.domain {
                v["domain"] = match d {
                    NameOrId::Id(id) => json!({ "id": id }),
                    NameOrId::Name(name) => json!({ "name": name }),
                };
            }
            v
        }
        match &self.cloud.auth {
            AuthMethod::Password {
                user,
                password,
                project,
            } => {
                let mut u = named(user);
                u["password"] = json!(password);
                let mut body = json!({"auth": {"identity": {
                    "methods": ["password"],
                    "password": {"user": u},
                }}});
                if let Some(p) = project {
                    body["auth"]["scope"] = json!({ "project": named(p) });
                }
                body
            }
            AuthMethod::ApplicationCredential {
                id,
                name,
                user,
                secret,
            } => {
                let mut cred = json!({ "secret": secret });
                if let Some(id) = id {
                    cred["id"] = json!(id);
                } else {
                    cred["name"] = json!(name);
                    if let Some(u) = user {
                        cred["user"] = named(u);
                    }
                }
                json!({"auth": {"identity": {
                    "methods": ["application_credential"],
                    "application_credential": cred,
                }}})
            }
        }
    }

    async fn authenticate(&self) -> Result<Token, ApiError> {
        let url = format!("{}/auth/tokens", self.identity().await?);
        let body = self.auth_body();
        let mut attempt = 0;
        let resp = loop {
            let r = self.http.post(&url).json(&body).send().await;
            let retry = match &r {
                Err(e) => e.is_connect() || e.is_timeout(),
                Ok(r) => matches!(r.status().as_u16(), 429 | 502 | 503 | 504),
            };
            if !retry || attempt >= self.cloud.settings.http_retries {
                break r.map_err(|e| self.err(&Method::POST, &url, None, e.to_string()))?;
            }
            tokio::time::sleep(retry_after(r.as_ref().ok()).unwrap_or_else(|| backoff(attempt)))
                .await;
            attempt += 1;
        };
        let status = resp.status();
        let subject = resp
            .headers()
            .get("X-Subject-Token")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let who = match &self.cloud.auth {
                AuthMethod::Password { user, .. } => match &user.which {
                    NameOrId::Name(n) | NameOrId::Id(n) => format!("user `{n}`"),
                },
                AuthMethod::ApplicationCredential { id, name, .. } => format!(
                    "application credential `{}`",
                    id.as_deref().or(name.as_deref()).unwrap_or("?")
                ),
            };
            return Err(self.err(
                &Method::POST,
                &url,
                Some(status),
                format!("authenticating {who}: {}", error_message(&text)),
            ));
        }
        let Some(value) = subject else {
            return Err(self.err(
                &Method::POST,
                &url,
                Some(status),
                "no X-Subject-Token in the answer",
            ));
        };
        #[derive(Deserialize)]
        struct Body {
            token: TokenBody,
        }
        #[derive(Deserialize)]
        struct TokenBody {
            expires_at: String,
            #[serde(default)]
            issued_at: Option<String>,
            #[serde(default)]
            catalog: Vec<CatalogEntry>,
        }
        let b: Body = serde_json::from_str(&text).map_err(|e| {
            self.err(
                &Method::POST,
                &url,
                Some(status),
                format!("unexpected token body: {e}"),
            )
        })?;
        let parse =
            |s: &str| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339);
        let expires_at = parse(&b.token.expires_at).map_err(|e| {
            self.err(
                &Method::POST,
                &url,
                Some(status),
                format!("token expires_at `{}`: {e}", b.token.expires_at),
            )
        })?;
        let issued = b
            .token
            .issued_at
            .as_deref()
            .and_then(|s| parse(s).ok())
            .unwrap_or_else(OffsetDateTime::now_utc);
        self.auths
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Token {
            value,
            expires_at,
            margin: renewal_margin(issued, expires_at),
            catalog: b.token.catalog,
        })
    }

    /// A token valid for a while yet, and the URL of `service`.
    async fn token_for(
        &self,
        service: &str,
        force_new: bool,
    ) -> Result<(String, String), ApiError> {
        let mut guard = self.token.lock().await;
        let fresh = guard
            .as_ref()
            .is_some_and(|t| !force_new && OffsetDateTime::now_utc() + t.margin < t.expires_at);
        if !fresh {
            *guard = Some(self.authenticate().await?);
        }
        let t = guard.as_ref().expect("token just set");
        let url = match self.cloud.endpoint_overrides.get(service) {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => pick_endpoint(
                &t.catalog,
                service,
                &self.cloud.interface,
                self.cloud.region.as_deref(),
            )
            .map_err(|m| self.err(&Method::GET, &self.cloud.auth_url, None, m))?,
        };
        Ok((t.value.clone(), versioned(service, &url)))
    }

    /// The base URL of `service` (authenticating if needed).
    pub async fn endpoint(&self, service: &str) -> Result<String, ApiError> {
        Ok(self.token_for(service, false).await?.1)
    }

    /// Sends one request to `service` at `path` (relative to its versioned base URL, or
    /// absolute), retrying as the module explains. `build` adds the body each attempt.
    pub async fn send(
        &self,
        service: &str,
        method: Method,
        path: &str,
        build: &(dyn Fn(RequestBuilder) -> Result<RequestBuilder, String> + Sync),
    ) -> Result<Response, ApiError> {
        let idempotent = method != Method::POST;
        let mut attempt = 0u32;
        let mut reauthed = false;
        loop {
            let (token, base) = self.token_for(service, false).await?;
            let url = if path.starts_with("http://") || path.starts_with("https://") {
                path.to_string()
            } else {
                format!("{base}{path}")
            };
            let mut rb = self
                .http
                .request(method.clone(), &url)
                .header("X-Auth-Token", &token)
                .header("Accept", "application/json");
            if service == "compute" {
                rb = rb
                    .header("X-OpenStack-Nova-API-Version", COMPUTE_MICROVERSION)
                    .header(
                        "OpenStack-API-Version",
                        format!("compute {COMPUTE_MICROVERSION}"),
                    );
            }
            let rb = build(rb).map_err(|m| self.err(&method, &url, None, m))?;
            let started = Instant::now();
            let r = rb.send().await;
            tracing::debug!(
                "{} {method} {url} -> {:?} in {:?}",
                self.cloud.name,
                r.as_ref().map(|r| r.status().as_u16()),
                started.elapsed()
            );
            let retry = match &r {
                Err(e) => idempotent || e.is_connect(),
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !reauthed => {
                    // Revoked or expired early: one fresh token, then the same request.
                    reauthed = true;
                    let mut g = self.token.lock().await;
                    if g.as_ref().is_some_and(|t| t.value == token) {
                        *g = None;
                    }
                    continue;
                }
                Ok(resp) => match resp.status().as_u16() {
                    429 | 503 => true,
                    500 | 502 | 504 => idempotent,
                    _ => false,
                },
            };
            if retry && attempt < self.cloud.settings.http_retries {
                let wait = retry_after(r.as_ref().ok()).unwrap_or_else(|| backoff(attempt));
                tracing::info!(
                    "cloud `{}`: {method} {url}: {}; retrying in {wait:?}",
                    self.cloud.name,
                    match &r {
                        Ok(resp) => resp.status().to_string(),
                        Err(e) => e.to_string(),
                    }
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
                continue;
            }
            return match r {
                Ok(resp) => Ok(resp),
                Err(e) => Err(self.err(&method, &url, None, error_chain(&e))),
            };
        }
    }

    /// [`Client::send`], then a JSON answer or an [`ApiError`] carrying the service's
    /// message.
    pub async fn json(
        &self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let build = |rb: RequestBuilder| -> Result<RequestBuilder, String> {
            Ok(match body {
                Some(b) => rb.json(b),
                None => rb,
            })
        };
        let resp = self.send(service, method.clone(), path, &build).await?;
        self.read(method, resp).await
    }

    /// The JSON of a successful answer (`null` when empty), else its error.
    pub async fn read(&self, method: Method, resp: Response) -> Result<Value, ApiError> {
        let status = resp.status();
        let url = resp.url().to_string();
        let text = resp.text().await.map_err(|e| {
            self.err(
                &method,
                &url,
                Some(status),
                format!("reading the answer: {e}"),
            )
        })?;
        if !status.is_success() {
            return Err(self.err(&method, &url, Some(status), error_message(&text)));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| {
            self.err(
                &method,
                &url,
                Some(status),
                format!("answer is not JSON: {e}"),
            )
        })
    }
}

fn retry_after(resp: Option<&Response>) -> Option<Duration> {
    parse_retry_after(resp?.headers().get("Retry-After")?.to_str().ok()?)
}

/// Seconds from a `Retry-After` value, at most a minute. `NaN` parses as an f64 and would
/// panic in `Duration::from_secs_f64`: a server's header must not take the daemon down.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let secs: f64 = v.trim().parse().ok()?;
    if secs.is_nan() {
        return None;
    }
    Some(Duration::from_secs_f64(secs.clamp(0.0, 60.0)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_values_from_a_server_never_panic() {
        assert_eq!(parse_retry_after(" 5 "), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("-3"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("inf"), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("1e400"), Some(Duration::from_secs(60)));
        for bad in ["NaN", "nan", "-NaN", "soon", ""] {
            assert_eq!(parse_retry_after(bad), None, "{bad}");
        }
    }

    fn catalog() -> Vec<CatalogEntry> {
        serde_json::from_value(json!([
            {"type": "compute", "endpoints": [
                {"interface": "public", "region_id": "R1", "url": "https://nova.r1/v2.1/"},
                {"interface": "internal", "region_id": "R1", "url": "http://nova.int.r1/v2.1"},
                {"interface": "public", "region_id": "R2", "url": "https://nova.r2/v2.1"},
            ]},
            {"type": "image", "endpoints": [
                {"interface": "public", "region": "R2", "url": "https://glance.r2:9292"},
            ]},
        ]))
        .unwrap()
    }

    #[test]
    fn endpoints_by_type_interface_and_region() {
        let c = catalog();
        assert_eq!(
            pick_endpoint(&c, "compute", "public", Some("R2")).unwrap(),
            "https://nova.r2/v2.1"
        );
        assert_eq!(
            pick_endpoint(&c, "compute", "internal", None).unwrap(),
            "http://nova.int.r1/v2.1"
        );
        assert_eq!(
            pick_endpoint(&c, "image", "public", Some("R2")).unwrap(),
            "https://glance.r2:9292"
        );
        let e = pick_endpoint(&c, "compute", "admin", Some("R1")).unwrap_err();
        assert!(
            e.contains("interface admin in region R1") && e.contains("public in R2"),
            "{e}"
        );
        let e = pick_endpoint(&c, "network", "public", None).unwrap_err();
        assert!(
            e.contains("no `network` service") && e.contains("compute, image"),
            "{e}"
        );
        assert_eq!(
            versioned("image", "https://glance.r2:9292"),
            "https://glance.r2:9292/v2"
        );
        assert_eq!(
            versioned("image", "https://g/image/v2/"),
            "https://g/image/v2"
        );
        assert_eq!(
            versioned("network", "https://n:9696"),
            "https://n:9696/v2.0"
        );
        assert_eq!(
            versioned("compute", "https://n/v2.1/abc"),
            "https://n/v2.1/abc"
        );
        assert_eq!(
            versioned("compute", "https://n/compute"),
            "https://n/compute/v2.1"
        );
    }

    #[test]
    fn error_bodies_and_classes() {
        assert_eq!(
            error_message(
                r#"{"forbidden": {"message": "Quota exceeded for instances", "code": 403}}"#
            ),
            "Quota exceeded for instances"
        );
        assert_eq!(
            error_message(r#"{"NeutronError": {"type": "X", "message": "no net", "detail": ""}}"#),
            "no net"
        );
        assert_eq!(
            error_message(
                "<html><body><h1>503 Service Unavailable</h1>\nNo server is available</body></html>"
            ),
            "503 Service Unavailable No server is available"
        );
        let long = "é".repeat(400);
        assert!(error_message(&long).ends_with('…'));
        let e = |status: u16, message: &str| ApiError {
            cloud: "c".into(),
            method: Method::POST,
            url: "http://x/servers".into(),
            status: Some(StatusCode::from_u16(status).unwrap()),
            message: message.into(),
        };
        assert!(e(403, "Quota exceeded for cores").is_quota());
        assert!(e(413, "quota exceeded").is_quota());
        assert!(!e(403, "Policy doesn't allow").is_quota());
        assert!(!e(403, "Policy doesn't allow").is_transient());
        assert!(e(503, "x").is_transient() && e(429, "x").is_transient());
        assert!(!e(400, "bad").is_transient());
        assert_eq!(
            e(404, "not here").to_string(),
            "cloud `c`: POST http://x/servers: 404 Not Found: not here"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        for n in 0..20 {
            let full = BACKOFF_BASE.saturating_mul(1 << n.min(16)).min(BACKOFF_CAP);
            let b = backoff(n);
            assert!(b >= full / 2 && b <= full, "{n}: {b:?}");
        }
        let m = renewal_margin(
            OffsetDateTime::UNIX_EPOCH,
            OffsetDateTime::UNIX_EPOCH + time::Duration::hours(1),
        );
        assert_eq!(m, time::Duration::minutes(5));
        let m = renewal_margin(
            OffsetDateTime::UNIX_EPOCH,
            OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(8),
        );
        assert_eq!(m, time::Duration::seconds(2));
    }
}
