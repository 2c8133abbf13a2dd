//! A test double of an OpenStack cloud: Keystone v3, Nova, Glance and a sliver of Neutron,
//! on one loopback HTTP port, speaking the real wire protocol (version documents, service
//! catalog, microversion headers, pagination, error bodies) for the calls ferrotron and
//! openstacksdk make.
//!
//! Servers are real: with [`Backing::Libvirt`] each one is a local libvirt guest created by
//! ferrotron's own `LibvirtProvider`. The double translates what Nova would hand the guest:
//! it decodes the server's cloud-init `user_data`, takes its `ssh_authorized_keys` and
//! `ssh_keys.ed25519_*`, and writes them into a NoCloud seed (`provider::seed`), which the
//! tiny image reads. Glance images are booted as Nova's libvirt driver boots them: a disk
//! with `kernel_id` / `ramdisk_id` / `os_command_line` properties boots that kernel directly.
//!
//! Addresses: each server gets its own loopback address (127.a.b.c) as its fixed IP, and
//! each floating IP is another one. The double listens on `address:ssh_port` (one port for
//! the whole double, [`Double::ssh_port`]) and forwards to the guest's passt port on
//! 127.0.0.1 — as a cloud's network would route to the guest's port 22. A client reaches
//! any server at its Nova address and the cloud's SSH port (ferrotron's `ssh_port`
//! setting), nothing else is special.
//!
//! Tests steer it in-process: quotas, boots that end in ERROR, injected 429/5xx answers,
//! revoked tokens, servers deleted behind the client's back.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use ferrotron::provider::libvirt::{LibvirtConfig, LibvirtProvider};
use ferrotron::provider::{Access, InstanceMeta, InstanceSpec, Provider};
use serde_json::{Value, json};

pub const USER: &str = "ferrotron";
pub const PASSWORD: &str = "secret";
pub const PROJECT: &str = "ci";
pub const APP_CRED_ID: &str = "appcred-1";
pub const APP_CRED_SECRET: &str = "appsecret";
pub const PROJECT_ID: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
pub const USER_ID: &str = "9a8b7c6d5e4f30211203f4e5d6c7b8a9";
pub const PRIVATE_NET: &str = "5b8e2d1c-0000-4000-8000-00000000000a";
pub const PUBLIC_NET: &str = "5b8e2d1c-0000-4000-8000-00000000000b";
/// Highest compute microversion advertised.
pub const MAX_MICROVERSION: &str = "2.96";

/// What stands behind a server.
pub enum Backing {
    /// Nothing: servers go ACTIVE with an address nobody answers on (API checks).
    None,
    /// A real libvirt guest per server, files under `state_dir` (reachable by qemu).
    Libvirt { state_dir: PathBuf },
}

#[derive(Clone)]
struct Flavor {
    id: &'static str,
    name: &'static str,
    vcpus: u32,
    ram: u64,
    disk: u64,
}

const FLAVORS: &[Flavor] = &[
    Flavor {
        id: "1",
        name: "m1.tiny",
        vcpus: 1,
        ram: 256,
        disk: 1,
    },
    Flavor {
        id: "2",
        name: "m1.small",
        vcpus: 1,
        ram: 512,
        disk: 2,
    },
];

#[derive(Clone, Debug)]
pub struct ServerView {
    pub id: String,
    pub name: String,
    pub status: String,
    pub metadata: BTreeMap<String, String>,
    pub fixed_ip: Option<String>,
    /// The libvirt domain backing it, if any.
    pub domain: Option<String>,
}

struct ServerRec {
    id: String,
    name: String,
    status: String,
    task_state: Option<String>,
    created: String,
    updated: String,
    image_id: String,
    flavor: Flavor,
    metadata: BTreeMap<String, String>,
    user_data: Option<String>,
    network: String,
    fixed_ip: Option<Ipv4Addr>,
    floating: Vec<String>,
    fault: Option<(String, u16)>,
    domain: Option<String>,
    /// The guest's SSH port on 127.0.0.1 (passt).
    guest_port: Option<u16>,
    forwarders: Vec<tokio::task::JoinHandle<()>>,
    deleting: bool,
}

struct ImageRec {
    id: String,
    name: Option<String>,
    status: String,
    disk_format: Option<String>,
    container_format: Option<String>,
    visibility: String,
    created: String,
    updated: String,
    size: Option<u64>,
    file: Option<PathBuf>,
    /// Every other attribute the client set (properties).
    extra: serde_json::Map<String, Value>,
    min_ram: u64,
    min_disk: u64,
}

struct FloatingRec {
    id: String,
    address: Ipv4Addr,
    network: String,
    port: Option<String>,
    description: String,
    forwarder: Option<tokio::task::JoinHandle<()>>,
}

struct Injected {
    method: Option<Method>,
    path_contains: String,
    status: u16,
    times: u32,
    retry_after: Option<u32>,
}

#[derive(Default)]
struct State {
    tokens: HashMap<String, Instant>,
    servers: Vec<ServerRec>,
    images: Vec<ImageRec>,
    floating: Vec<FloatingRec>,
    quota_instances: i64,
    fail_next_boots: u32,
    injected: Vec<Injected>,
    log: Vec<(String, String, u16)>,
    /// The compute microversion of every Nova request.
    microversions: Vec<String>,
    auths: usize,
}

struct Shared {
    st: Mutex<State>,
    base: String,
    dir: PathBuf,
    token_ttl: Duration,
    ssh_port: u16,
    backing: Option<LibvirtProvider>,
}

pub struct Double {
    rt: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The port every server's addresses answer SSH on.
    pub ssh_port: u16,
}

pub struct Options {
    pub backing: Backing,
    /// Where uploaded image data and per-server boot files go.
    pub dir: PathBuf,
    pub token_ttl: Duration,
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn iso_micro(t: time::OffsetDateTime) -> String {
    // Keystone's format: 2024-01-01T00:00:00.000000Z
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

fn random_loopback() -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        rand::random_range(100..=250),
        rand::random_range(0..=255),
        rand::random_range(2..=254),
    )
}

impl Double {
    pub fn start(opts: Options) -> Double {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        std::fs::create_dir_all(&opts.dir).expect("double dir");
        let backing = match &opts.backing {
            Backing::None => None,
            Backing::Libvirt { state_dir } => {
                std::fs::create_dir_all(state_dir).expect("state dir");
                // The KVM probe's verdict for this host, if the machine has one already.
                let probe = Path::new("/var/lib/ferrotron/instances/accel-probe");
                if let Ok(v) = std::fs::read(probe) {
                    let _ = std::fs::write(state_dir.join("accel-probe"), v);
                }
                Some(LibvirtProvider::new(LibvirtConfig {
                    max_instances: 16,
                    ..LibvirtConfig::new("qemu:///system", state_dir.clone())
                }))
            }
        };
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let base = format!("http://127.0.0.1:{port}");
        let ssh_port = rand::random_range(20000..60000);
        let shared = Arc::new(Shared {
            st: Mutex::new(State {
                quota_instances: 10,
                ..Default::default()
            }),
            base: base.clone(),
            dir: opts.dir.clone(),
            token_ttl: opts.token_ttl,
            ssh_port,
            backing,
        });
        let s2 = shared.clone();
        let app = axum::Router::new()
            .fallback(move |req: Request<Body>| {
                let s = s2.clone();
                async move { handle(s, req).await }
            })
            .layer(axum::extract::DefaultBodyLimit::disable());
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Double {
            rt: Some(rt),
            shared,
            url: base,
            ssh_port,
        }
    }

    /// Keystone's public URL (unversioned: clients discover v3).
    pub fn auth_url(&self) -> String {
        format!("{}/identity", self.url)
    }

    /// A clouds.yaml entry for this double (password auth), with ferrotron's settings.
    pub fn clouds_yaml(&self, name: &str, ferrotron: &str) -> String {
        format!(
            "clouds:\n  {name}:\n    auth:\n      auth_url: {}\n      username: {USER}\n      \
             password: {PASSWORD}\n      project_name: {PROJECT}\n      user_domain_name: Default\n      \
             project_domain_name: Default\n    region_name: RegionOne\n    interface: public\n    \
             identity_api_version: 3\n{ferrotron}",
            self.auth_url()
        )
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.st.lock().expect("double state")
    }

    pub fn set_quota_instances(&self, n: i64) {
        self.st().quota_instances = n;
    }

    /// The next `n` servers go to ERROR instead of booting.
    pub fn fail_next_boots(&self, n: u32) {
        self.st().fail_next_boots = n;
    }

    /// The next `times` requests whose path contains `path_contains` (and with `method`,
    /// when given) are answered `status`.
    pub fn inject(
        &self,
        method: Option<Method>,
        path_contains: &str,
        status: u16,
        times: u32,
        retry_after: Option<u32>,
    ) {
        self.st().injected.push(Injected {
            method,
            path_contains: path_contains.into(),
            status,
            times,
            retry_after,
        });
    }

    pub fn revoke_tokens(&self) {
        self.st().tokens.clear();
    }

    /// The compute microversions clients asked for, in order.
    pub fn microversions(&self) -> Vec<String> {
        self.st().microversions.clone()
    }

    pub fn auth_count(&self) -> usize {
        self.st().auths
    }

    /// Requests seen: (method, path with query, status).
    pub fn log(&self) -> Vec<(String, String, u16)> {
        self.st().log.clone()
    }

    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.st()
            .log
            .iter()
            .filter(|(m, p, _)| m == method && p.contains(path_contains))
            .count()
    }

    pub fn servers(&self) -> Vec<ServerView> {
        self.st()
            .servers
            .iter()
            .map(|s| ServerView {
                id: s.id.clone(),
                name: s.name.clone(),
                status: s.status.clone(),
                metadata: s.metadata.clone(),
                fixed_ip: s.fixed_ip.map(|i| i.to_string()),
                domain: s.domain.clone(),
            })
            .collect()
    }

    /// Adds a server record as another tool would have created it (no guest behind it).
    pub fn insert_server(&self, name: &str, metadata: &[(&str, &str)]) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.st().servers.push(ServerRec {
            id: id.clone(),
            name: name.into(),
            status: "ACTIVE".into(),
            task_state: None,
            created: now(),
            updated: now(),
            image_id: String::new(),
            flavor: FLAVORS[0].clone(),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            user_data: None,
            network: "private".into(),
            fixed_ip: Some(random_loopback()),
            floating: vec![],
            fault: None,
            domain: None,
            guest_port: None,
            forwarders: vec![],
            deleting: false,
        });
        id
    }

    /// Deletes a server as someone else would (an operator, another tool): no client sees
    /// it coming.
    pub fn delete_behind_the_back(&self, id: &str) {
        let shared = self.shared.clone();
        let id = id.to_string();
        if let Some(rt) = &self.rt {
            // Spawned, and waited for on this thread, so that it works from inside
            // `block_on` too.
            let (tx, rx) = std::sync::mpsc::channel();
            rt.spawn(async move {
                destroy_server(&shared, &id).await;
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_secs(120));
        }
    }

    /// Waits until `f` holds for the server list, or `timeout` passes.
    pub fn wait_for(&self, timeout: Duration, f: impl Fn(&[ServerView]) -> bool) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if f(&self.servers()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        f(&self.servers())
    }

    /// Runs `fut` on the double's runtime (for tests that call ferrotron's library).
    pub fn block_on<T>(&self, fut: impl std::future::Future<Output = T>) -> T {
        self.rt.as_ref().expect("runtime").block_on(fut)
    }
}

impl Drop for Double {
    fn drop(&mut self) {
        // Every guest goes, whatever the test did.
        let ids: Vec<String> = self.st().servers.iter().map(|s| s.id.clone()).collect();
        let shared = self.shared.clone();
        if let Some(rt) = self.rt.take() {
            rt.block_on(async {
                for id in ids {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(60), destroy_server(&shared, &id))
                            .await;
                }
            });
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

// ------------------------------------------------------------------------------ HTTP

fn json_resp(status: StatusCode, v: Value) -> Response {
    (
        status,
        [("Content-Type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn nova_error(status: StatusCode, kind: &str, message: &str) -> Response {
    json_resp(
        status,
        json!({ kind: { "message": message, "code": status.as_u16() } }),
    )
}

fn keystone_error(status: StatusCode, message: &str) -> Response {
    json_resp(
        status,
        json!({"error": {"message": message, "code": status.as_u16(),
            "title": status.canonical_reason().unwrap_or("")}}),
    )
}

fn not_found(what: &str) -> Response {
    nova_error(
        StatusCode::NOT_FOUND,
        "itemNotFound",
        &format!("{what} could not be found."),
    )
}

fn query(uri: &axum::http::Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn q<'a>(qs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    qs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

async fn handle(s: Arc<Shared>, req: Request<Body>) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let headers = req.headers().clone();
    let path = uri.path().trim_end_matches('/').to_string();
    let body = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let resp = route(&s, &method, &uri, &path, &headers, body).await;
    let full = match uri.query() {
        Some(qs) => format!("{path}?{qs}"),
        None => path.clone(),
    };
    s.st.lock()
        .expect("state")
        .log
        .push((method.to_string(), full, resp.status().as_u16()));
    resp
}

fn injected(s: &Shared, method: &Method, path: &str) -> Option<Response> {
    let mut st = s.st.lock().expect("state");
    let hit = st.injected.iter_mut().find(|i| {
        i.times > 0
            && path.contains(&i.path_contains)
            && i.method.as_ref().is_none_or(|m| m == method)
    })?;
    hit.times -= 1;
    let status = StatusCode::from_u16(hit.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = if status == StatusCode::TOO_MANY_REQUESTS {
        nova_error(status, "overLimit", "Rate limit exceeded (injected)")
    } else {
        (
            status,
            "<html><body><h1>Service Unavailable</h1>injected by the double</body></html>",
        )
            .into_response()
    };
    if let Some(secs) = hit.retry_after {
        r.headers_mut()
            .insert("Retry-After", HeaderValue::from(secs));
    }
    Some(r)
}

fn authorized(s: &Shared, headers: &HeaderMap) -> bool {
    let Some(tok) = headers.get("X-Auth-Token").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let st = s.st.lock().expect("state");
    st.tokens.get(tok).is_some_and(|exp| Instant::now() < *exp)
}

async fn route(
    s: &Arc<Shared>,
    method: &Method,
    uri: &axum::http::Uri,
    path: &str,
    headers: &HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = injected(s, method, path) {
        return r;
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let base = &s.base;
    match segs.as_slice() {
        // ------------------------------------------------------------- Keystone
        ["identity"] if method == Method::GET => json_resp(
            StatusCode::MULTIPLE_CHOICES,
            json!({"versions": {"values": [identity_version(base)]}}),
        ),
        ["identity", "v3"] if method == Method::GET => {
            json_resp(StatusCode::OK, json!({ "version": identity_version(base) }))
        }
        ["identity", "v3", "auth", "tokens"] if method == Method::POST => issue_token(s, &body),
        ["identity", "v3", ..] => {
            if !authorized(s, headers) {
                return keystone_error(
                    StatusCode::UNAUTHORIZED,
                    "The request you have made requires authentication.",
                );
            }
            match segs.as_slice() {
                ["identity", "v3", "auth", "tokens"] if method == Method::GET => json_resp(
                    StatusCode::OK,
                    json!({"token": token_body(s, Instant::now() + s.token_ttl)}),
                ),
                _ => keystone_error(
                    StatusCode::NOT_FOUND,
                    "Could not find the requested resource.",
                ),
            }
        }
        // ------------------------------------------------------------- Nova
        ["compute"] if method == Method::GET => {
            json_resp(StatusCode::OK, json!({"versions": [compute_version(base)]}))
        }
        ["compute", "v2.1"] if method == Method::GET => {
            json_resp(StatusCode::OK, json!({"version": compute_version(base)}))
        }
        ["compute", "v2.1", rest @ ..] => {
            if !authorized(s, headers) {
                return nova_error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "The request you have made requires authentication.",
                );
            }
            let mv = microversion(headers);
            s.st.lock().expect("state").microversions.push(mv.clone());
            let mut r = compute(s, method, uri, rest, &body, &mv).await;
            for h in ["OpenStack-API-Version", "X-OpenStack-Nova-API-Version"] {
                let v = if h.starts_with("OpenStack") {
                    format!("compute {mv}")
                } else {
                    mv.clone()
                };
                if let Ok(v) = HeaderValue::from_str(&v) {
                    r.headers_mut().insert(h, v);
                }
            }
            r.headers_mut().insert(
                "Vary",
                HeaderValue::from_static("OpenStack-API-Version, X-OpenStack-Nova-API-Version"),
            );
            r
        }
        // ------------------------------------------------------------- Glance
        ["image"] if method == Method::GET => json_resp(
            StatusCode::MULTIPLE_CHOICES,
            json!({"versions": [
                {"id": "v2.16", "status": "CURRENT", "links": [{"rel": "self", "href": format!("{base}/image/v2/")}]},
                {"id": "v2.0", "status": "SUPPORTED", "links": [{"rel": "self", "href": format!("{base}/image/v2/")}]},
            ]}),
        ),
        ["image", "v2", rest @ ..] => {
            if !authorized(s, headers) {
                return (StatusCode::UNAUTHORIZED, "401 Unauthorized\n\nThis server could not verify that you are authorized to access the document you requested.").into_response();
            }
            glance(s, method, uri, rest, headers, body).await
        }
        // ------------------------------------------------------------- Neutron
        ["network"] if method == Method::GET => json_resp(
            StatusCode::OK,
            json!({"versions": [{"id": "v2.0", "status": "CURRENT",
                "links": [{"rel": "self", "href": format!("{base}/network/v2.0/")}]}]}),
        ),
        ["network", "v2.0", rest @ ..] => {
            if !authorized(s, headers) {
                return json_resp(
                    StatusCode::UNAUTHORIZED,
                    json!({"error": {"message": "Authentication required"}}),
                );
            }
            neutron(s, method, uri, rest, &body).await
        }
        _ => (StatusCode::NOT_FOUND, "404 Not Found").into_response(),
    }
}

// ------------------------------------------------------------------------------ Keystone

fn identity_version(base: &str) -> Value {
    json!({
        "id": "v3.14",
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": format!("{base}/identity/v3/")}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}]
    })
}

fn catalog(base: &str) -> Value {
    let svc = |ty: &str, name: &str, url: String| {
        let endpoints: Vec<Value> = ["public", "internal"]
            .iter()
            .map(|i| {
                json!({
                    "id": format!("{ty}-{i}"), "interface": i, "region_id": "RegionOne",
                    "region": "RegionOne", "url": url,
                })
            })
            .collect();
        json!({"type": ty, "name": name, "id": format!("{ty}-svc"), "endpoints": endpoints})
    };
    json!([
        svc("identity", "keystone", format!("{base}/identity")),
        svc("compute", "nova", format!("{base}/compute/v2.1")),
        svc("image", "glance", format!("{base}/image")),
        svc("network", "neutron", format!("{base}/network")),
    ])
}

fn token_body(s: &Shared, expires: Instant) -> Value {
    let left = expires.saturating_duration_since(Instant::now());
    let now = time::OffsetDateTime::now_utc();
    let exp = now + left;
    json!({
        "methods": ["password"],
        "expires_at": iso_micro(exp),
        "issued_at": iso_micro(now),
        "audit_ids": ["double"],
        "user": {"id": USER_ID, "name": USER, "domain": {"id": "default", "name": "Default"}, "password_expires_at": null},
        "project": {"id": PROJECT_ID, "name": PROJECT, "domain": {"id": "default", "name": "Default"}},
        "roles": [{"id": "r1", "name": "member"}, {"id": "r2", "name": "reader"}],
        "is_domain": false,
        "catalog": catalog(&s.base),
    })
}

fn issue_token(s: &Shared, body: &[u8]) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return keystone_error(
            StatusCode::BAD_REQUEST,
            "Expecting to find auth in request body.",
        );
    };
    let ident = &v["auth"]["identity"];
    let methods: Vec<&str> = ident["methods"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let ok = if methods.contains(&"password") {
        let u = &ident["password"]["user"];
        let name_ok = u["name"].as_str() == Some(USER) || u["id"].as_str() == Some(USER_ID);
        let domain_ok = u["id"].is_string()
            || u["domain"]["name"]
                .as_str()
                .is_some_and(|d| d.eq_ignore_ascii_case("default"))
            || u["domain"]["id"].as_str() == Some("default");
        let scope = &v["auth"]["scope"]["project"];
        let scope_ok = scope["id"].as_str() == Some(PROJECT_ID)
            || (scope["name"].as_str() == Some(PROJECT)
                && (scope["domain"]["name"]
                    .as_str()
                    .is_some_and(|d| d.eq_ignore_ascii_case("default"))
                    || scope["domain"]["id"].as_str() == Some("default")));
        if !scope_ok {
            return keystone_error(
                StatusCode::UNAUTHORIZED,
                "The request you have made requires authentication (project scope).",
            );
        }
        name_ok && domain_ok && u["password"].as_str() == Some(PASSWORD)
    } else if methods.contains(&"application_credential") {
        if v["auth"].get("scope").is_some() {
            return keystone_error(
                StatusCode::UNAUTHORIZED,
                "Application credentials cannot request a scope.",
            );
        }
        let c = &ident["application_credential"];
        c["id"].as_str() == Some(APP_CRED_ID) && c["secret"].as_str() == Some(APP_CRED_SECRET)
    } else {
        false
    };
    if !ok {
        return keystone_error(
            StatusCode::UNAUTHORIZED,
            "The request you have made requires authentication.",
        );
    }
    let token = format!("gAAAA{}", uuid::Uuid::new_v4().simple());
    let expires = Instant::now() + s.token_ttl;
    {
        let mut st = s.st.lock().expect("state");
        st.tokens.insert(token.clone(), expires);
        st.auths += 1;
    }
    let mut r = json_resp(
        StatusCode::CREATED,
        json!({"token": token_body(s, expires)}),
    );
    r.headers_mut().insert(
        "X-Subject-Token",
        HeaderValue::from_str(&token).expect("token header"),
    );
    r
}

// ------------------------------------------------------------------------------ Nova

fn compute_version(base: &str) -> Value {
    json!({
        "id": "v2.1", "status": "CURRENT", "version": MAX_MICROVERSION, "min_version": "2.1",
        "updated": "2013-07-23T11:33:21Z",
        "links": [{"rel": "self", "href": format!("{base}/compute/v2.1/")}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2.1"}]
    })
}

fn microversion(headers: &HeaderMap) -> String {
    let from = |h: &str| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
    };
    let v = from("OpenStack-API-Version")
        .and_then(|v| v.strip_prefix("compute").map(|x| x.trim().to_string()))
        .or_else(|| from("X-OpenStack-Nova-API-Version"))
        .unwrap_or_else(|| "2.1".into());
    match v.as_str() {
        "latest" => MAX_MICROVERSION.into(),
        _ => v,
    }
}

fn mv_at_least(mv: &str, minor: u32) -> bool {
    mv.split_once('.')
        .and_then(|(_, m)| m.parse::<u32>().ok())
        .is_some_and(|m| m >= minor)
}

fn server_json(s: &Shared, r: &ServerRec, mv: &str) -> Value {
    let base = &s.base;
    let mut addresses = serde_json::Map::new();
    if let Some(ip) = r.fixed_ip {
        let mut list = vec![
            json!({"addr": ip.to_string(), "version": 4, "OS-EXT-IPS:type": "fixed",
            "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:01"}),
        ];
        for f in &r.floating {
            list.push(
                json!({"addr": f, "version": 4, "OS-EXT-IPS:type": "floating",
                "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:01"}),
            );
        }
        addresses.insert(r.network.clone(), Value::Array(list));
    }
    let flavor = if mv_at_least(mv, 47) {
        json!({"original_name": r.flavor.name, "vcpus": r.flavor.vcpus, "ram": r.flavor.ram,
            "disk": r.flavor.disk, "ephemeral": 0, "swap": 0, "extra_specs": {}})
    } else {
        json!({"id": r.flavor.id, "links": [{"rel": "bookmark", "href": format!("{base}/compute/flavors/{}", r.flavor.id)}]})
    };
    let vm_state = match r.status.as_str() {
        "ACTIVE" => "active",
        "ERROR" => "error",
        _ => "building",
    };
    let mut v = json!({
        "id": r.id, "name": r.name, "status": r.status,
        "tenant_id": PROJECT_ID, "user_id": USER_ID,
        "metadata": r.metadata, "hostId": if r.status == "ACTIVE" { "c0ffee" } else { "" },
        "image": {"id": r.image_id, "links": [{"rel": "bookmark", "href": format!("{base}/compute/images/{}", r.image_id)}]},
        "flavor": flavor,
        "created": r.created, "updated": r.updated,
        "addresses": addresses,
        "accessIPv4": "", "accessIPv6": "",
        "links": [
            {"rel": "self", "href": format!("{base}/compute/v2.1/servers/{}", r.id)},
            {"rel": "bookmark", "href": format!("{base}/compute/servers/{}", r.id)},
        ],
        "OS-DCF:diskConfig": "MANUAL", "progress": 0,
        "OS-EXT-AZ:availability_zone": "nova", "config_drive": "",
        "key_name": null,
        "OS-SRV-USG:launched_at": null, "OS-SRV-USG:terminated_at": null,
        "OS-EXT-STS:task_state": r.task_state, "OS-EXT-STS:vm_state": vm_state,
        "OS-EXT-STS:power_state": if r.status == "ACTIVE" { 1 } else { 0 },
        "os-extended-volumes:volumes_attached": [],
        "security_groups": [{"name": "default"}],
    });
    if mv_at_least(mv, 9) {
        v["locked"] = json!(false);
    }
    if mv_at_least(mv, 19) {
        v["description"] = Value::Null;
    }
    if mv_at_least(mv, 26) {
        v["tags"] = json!([]);
    }
    if let Some((msg, code)) = &r.fault {
        v["fault"] = json!({"message": msg, "code": code, "created": r.updated});
    }
    v
}

fn flavor_json(base: &str, f: &Flavor, detail: bool) -> Value {
    let mut v = json!({"id": f.id, "name": f.name, "links": [
        {"rel": "self", "href": format!("{base}/compute/v2.1/flavors/{}", f.id)},
        {"rel": "bookmark", "href": format!("{base}/compute/flavors/{}", f.id)}]});
    if detail {
        v["vcpus"] = json!(f.vcpus);
        v["ram"] = json!(f.ram);
        v["disk"] = json!(f.disk);
        v["OS-FLV-EXT-DATA:ephemeral"] = json!(0);
        v["OS-FLV-DISABLED:disabled"] = json!(false);
        v["swap"] = json!("");
        v["rxtx_factor"] = json!(1.0);
        v["os-flavor-access:is_public"] = json!(true);
        v["description"] = Value::Null;
        v["extra_specs"] = json!({});
    }
    v
}

async fn compute(
    s: &Arc<Shared>,
    method: &Method,
    uri: &axum::http::Uri,
    rest: &[&str],
    body: &[u8],
    mv: &str,
) -> Response {
    let base = &s.base;
    let qs = query(uri);
    match (method.clone(), rest) {
        (Method::GET, ["flavors"]) | (Method::GET, ["flavors", "detail"]) => {
            let detail = rest.len() == 2;
            json_resp(
                StatusCode::OK,
                json!({"flavors": FLAVORS.iter().map(|f| flavor_json(base, f, detail)).collect::<Vec<_>>()}),
            )
        }
        (Method::GET, ["flavors", id]) => match FLAVORS.iter().find(|f| f.id == *id) {
            Some(f) => json_resp(
                StatusCode::OK,
                json!({"flavor": flavor_json(base, f, true)}),
            ),
            None => not_found(&format!("Flavor {id}")),
        },
        (Method::GET, ["flavors", _, "os-extra_specs"]) => {
            json_resp(StatusCode::OK, json!({"extra_specs": {}}))
        }
        (Method::GET, ["limits"]) => {
            let st = s.st.lock().expect("state");
            let live: Vec<&ServerRec> = st.servers.iter().collect();
            let cores: u32 = live.iter().map(|r| r.flavor.vcpus).sum();
            let ram: u64 = live.iter().map(|r| r.flavor.ram).sum();
            json_resp(
                StatusCode::OK,
                json!({"limits": {"rate": [], "absolute": {
                    "maxTotalInstances": st.quota_instances, "totalInstancesUsed": live.len(),
                    "maxTotalCores": 20, "totalCoresUsed": cores,
                    "maxTotalRAMSize": 51200, "totalRAMUsed": ram,
                    "maxServerMeta": 128, "maxImageMeta": 128, "maxPersonality": 5, "maxPersonalitySize": 10240,
                    "maxTotalKeypairs": 100, "maxServerGroups": 10, "maxServerGroupMembers": 10,
                    "totalServerGroupsUsed": 0, "maxSecurityGroups": -1, "totalSecurityGroupsUsed": 0,
                    "maxTotalFloatingIps": -1, "totalFloatingIpsUsed": 0, "maxSecurityGroupRules": -1,
                }}}),
            )
        }
        (Method::GET, ["servers"]) | (Method::GET, ["servers", "detail"]) => {
            let detail = rest.len() == 2;
            let st = s.st.lock().expect("state");
            let name_re = q(&qs, "name");
            let status = q(&qs, "status");
            let mut list: Vec<&ServerRec> = st
                .servers
                .iter()
                .filter(|r| name_re.is_none_or(|n| name_matches(n, &r.name)))
                .filter(|r| status.is_none_or(|x| x.eq_ignore_ascii_case(&r.status)))
                .collect();
            // Newest first, as Nova sorts by default.
            list.reverse();
            if let Some(m) = q(&qs, "marker") {
                match list.iter().position(|r| r.id == m) {
                    Some(i) => list.drain(..=i).for_each(drop),
                    None => {
                        return nova_error(
                            StatusCode::BAD_REQUEST,
                            "badRequest",
                            &format!("marker [{m}] not found"),
                        );
                    }
                }
            }
            let limit: usize = q(&qs, "limit").and_then(|l| l.parse().ok()).unwrap_or(1000);
            let more = list.len() > limit;
            list.truncate(limit);
            let items: Vec<Value> = list
                .iter()
                .map(|r| {
                    if detail {
                        server_json(s, r, mv)
                    } else {
                        json!({"id": r.id, "name": r.name, "links": server_json(s, r, mv)["links"].clone()})
                    }
                })
                .collect();
            let mut v = json!({ "servers": items });
            if more && let Some(last) = list.last() {
                let path = if detail { "servers/detail" } else { "servers" };
                v["servers_links"] = json!([{"rel": "next", "href": format!("{base}/compute/v2.1/{path}?limit={limit}&marker={}", last.id)}]);
            }
            json_resp(StatusCode::OK, v)
        }
        (Method::POST, ["servers"]) => create_server(s, body, mv).await,
        (Method::GET, ["servers", id]) => {
            let st = s.st.lock().expect("state");
            match st.servers.iter().find(|r| r.id == *id) {
                Some(r) => json_resp(StatusCode::OK, json!({"server": server_json(s, r, mv)})),
                None => not_found(&format!("Instance {id}")),
            }
        }
        (Method::GET, ["servers", id, "metadata"]) => {
            let st = s.st.lock().expect("state");
            match st.servers.iter().find(|r| r.id == *id) {
                Some(r) => json_resp(StatusCode::OK, json!({"metadata": r.metadata})),
                None => not_found(&format!("Instance {id}")),
            }
        }
        (Method::DELETE, ["servers", id]) => {
            {
                let mut st = s.st.lock().expect("state");
                let Some(r) = st.servers.iter_mut().find(|r| r.id == *id) else {
                    return not_found(&format!("Instance {id}"));
                };
                if r.deleting {
                    return StatusCode::NO_CONTENT.into_response();
                }
                r.deleting = true;
                r.task_state = Some("deleting".into());
                r.updated = now();
            }
            let s2 = s.clone();
            let id = id.to_string();
            tokio::spawn(async move { destroy_server(&s2, &id).await });
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, ["os-availability-zone"]) => json_resp(
            StatusCode::OK,
            json!({"availabilityZoneInfo": [{"zoneName": "nova", "zoneState": {"available": true}, "hosts": null}]}),
        ),
        (Method::GET, ["os-keypairs"]) => json_resp(StatusCode::OK, json!({"keypairs": []})),
        (Method::GET, ["extensions"]) => json_resp(StatusCode::OK, json!({"extensions": []})),
        _ => not_found(&format!("{method} {}", rest.join("/"))),
    }
}

/// Nova's `name` filter is a regular expression; the double knows `^`, `$` and literals.
fn name_matches(pattern: &str, name: &str) -> bool {
    let anchored_start = pattern.starts_with('^');
    let anchored_end = pattern.ends_with('$');
    let lit = pattern.trim_start_matches('^').trim_end_matches('$');
    match (anchored_start, anchored_end) {
        (true, true) => name == lit,
        (true, false) => name.starts_with(lit),
        (false, true) => name.ends_with(lit),
        (false, false) => name.contains(lit),
    }
}

async fn create_server(s: &Arc<Shared>, body: &[u8], mv: &str) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return nova_error(
            StatusCode::BAD_REQUEST,
            "badRequest",
            "Malformed request body",
        );
    };
    let sv = &v["server"];
    let Some(name) = sv["name"].as_str().filter(|n| !n.is_empty()) else {
        return nova_error(
            StatusCode::BAD_REQUEST,
            "badRequest",
            "Invalid input for field/attribute server. 'name' is a required property",
        );
    };
    let image_id = sv["imageRef"].as_str().unwrap_or_default().to_string();
    let flavor_ref = sv["flavorRef"]
        .as_str()
        .map(String::from)
        .or_else(|| sv["flavorRef"].as_u64().map(|n| n.to_string()))
        .unwrap_or_default();
    let flavor_ref = flavor_ref
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let Some(flavor) = FLAVORS.iter().find(|f| f.id == flavor_ref).cloned() else {
        return nova_error(
            StatusCode::BAD_REQUEST,
            "badRequest",
            &format!("Flavor {flavor_ref} could not be found."),
        );
    };
    let mut metadata = BTreeMap::new();
    if let Some(m) = sv["metadata"].as_object() {
        for (k, v) in m {
            let Some(v) = v.as_str() else {
                return nova_error(
                    StatusCode::BAD_REQUEST,
                    "badRequest",
                    &format!(
                        "Invalid input for field/attribute metadata. Value: {v} is not of type 'string'"
                    ),
                );
            };
            if k.len() > 255 || v.len() > 255 {
                return nova_error(
                    StatusCode::BAD_REQUEST,
                    "badRequest",
                    "Invalid input for field/attribute metadata: longer than 255",
                );
            }
            metadata.insert(k.clone(), v.to_string());
        }
    }
    let user_data = sv["user_data"].as_str().map(String::from);
    if let Some(u) = &user_data
        && base64::engine::general_purpose::STANDARD.decode(u).is_err()
    {
        return nova_error(
            StatusCode::BAD_REQUEST,
            "badRequest",
            "User data needs to be valid base 64.",
        );
    }
    let network = match &sv["networks"] {
        Value::Array(a) => match a.first().and_then(|n| n["uuid"].as_str()) {
            Some(PRIVATE_NET) | None => "private",
            Some(PUBLIC_NET) => "public",
            Some(other) => {
                return nova_error(
                    StatusCode::BAD_REQUEST,
                    "badRequest",
                    &format!("Network {other} could not be found."),
                );
            }
        },
        _ => "private",
    };
    let id = uuid::Uuid::new_v4().to_string();
    {
        let mut st = s.st.lock().expect("state");
        if !st
            .images
            .iter()
            .any(|i| i.id == image_id && i.status == "active")
        {
            return nova_error(
                StatusCode::BAD_REQUEST,
                "badRequest",
                &format!("Image {image_id} could not be found."),
            );
        }
        let used = st.servers.len() as i64;
        if st.quota_instances >= 0 && used + 1 > st.quota_instances {
            let msg = format!(
                "Quota exceeded for instances: Requested 1, but already used {used} of {} instances",
                st.quota_instances
            );
            return nova_error(StatusCode::FORBIDDEN, "forbidden", &msg);
        }
        let fail = st.fail_next_boots > 0;
        if fail {
            st.fail_next_boots -= 1;
        }
        st.servers.push(ServerRec {
            id: id.clone(),
            name: name.to_string(),
            status: "BUILD".into(),
            task_state: Some("scheduling".into()),
            created: now(),
            updated: now(),
            image_id: image_id.clone(),
            flavor: flavor.clone(),
            metadata,
            user_data: user_data.clone(),
            network: network.into(),
            fixed_ip: None,
            floating: vec![],
            fault: None,
            domain: None,
            guest_port: None,
            forwarders: vec![],
            deleting: false,
        });
        let s2 = s.clone();
        let id2 = id.clone();
        tokio::spawn(async move { boot(s2, id2, fail).await });
    }
    let _ = mv;
    json_resp(
        StatusCode::ACCEPTED,
        json!({"server": {
            "id": id,
            "links": [{"rel": "self", "href": format!("{}/compute/v2.1/servers/{id}", s.base)}],
            "OS-DCF:diskConfig": "MANUAL",
            "security_groups": [{"name": "default"}],
            "adminPass": "double-admin-pass",
        }}),
    )
}

fn set_status(s: &Shared, id: &str, f: impl FnOnce(&mut ServerRec)) -> bool {
    let mut st = s.st.lock().expect("state");
    match st.servers.iter_mut().find(|r| r.id == id) {
        Some(r) if !r.deleting => {
            f(r);
            r.updated = now();
            true
        }
        _ => false,
    }
}

/// The keys the server's cloud-init user data delivers.
fn keys_from_user_data(b64: Option<&str>) -> Result<(String, String, String), String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.ok_or("no user_data")?)
        .map_err(|e| format!("user_data is not base64: {e}"))?;
    let text = String::from_utf8(raw).map_err(|_| "user_data is not UTF-8")?;
    let doc: Value =
        serde_norway::from_str(&text).map_err(|e| format!("user_data is not YAML: {e}"))?;
    let client = doc["ssh_authorized_keys"][0]
        .as_str()
        .ok_or("user_data has no ssh_authorized_keys")?;
    let private = doc["ssh_keys"]["ed25519_private"]
        .as_str()
        .ok_or("user_data has no ssh_keys.ed25519_private")?;
    let public = doc["ssh_keys"]["ed25519_public"]
        .as_str()
        .ok_or("user_data has no ssh_keys.ed25519_public")?;
    Ok((client.to_string(), private.to_string(), public.to_string()))
}

/// Lays out `image` as ferrotron's image directory format (disk + sidecar + kernel) for the
/// flavor, the way Nova's libvirt driver honours kernel_id/ramdisk_id/os_command_line.
fn boot_files(
    s: &Shared,
    server: &str,
    image: &ImageRec,
    kernel: Option<PathBuf>,
    ramdisk: Option<PathBuf>,
    flavor: &Flavor,
) -> Result<PathBuf, String> {
    let dir = s.dir.join("boot").join(server);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let stem = "260101_0000-double-1-boot-x86_64";
    let disk = dir.join(format!("{stem}.qcow2"));
    let file = image.file.as_ref().ok_or("image has no data")?;
    std::os::unix::fs::symlink(file, &disk).map_err(|e| e.to_string())?;
    let mut sidecar =
        json!({"user": "root", "memory_mib": flavor.ram, "vcpus": flavor.vcpus, "timeout_s": 300});
    if let Some(k) = kernel {
        std::os::unix::fs::symlink(&k, dir.join(format!("{stem}.vmlinux")))
            .map_err(|e| e.to_string())?;
        sidecar["kernel"] = json!(format!("{stem}.vmlinux"));
    }
    if let Some(r) = ramdisk {
        std::os::unix::fs::symlink(&r, dir.join(format!("{stem}.initrd")))
            .map_err(|e| e.to_string())?;
        sidecar["initrd"] = json!(format!("{stem}.initrd"));
    }
    if let Some(c) = image.extra.get("os_command_line").and_then(Value::as_str) {
        sidecar["cmdline"] = json!(c);
    }
    std::fs::write(dir.join(format!("{stem}.json")), sidecar.to_string())
        .map_err(|e| e.to_string())?;
    Ok(disk)
}

async fn forward(listener: tokio::net::TcpListener, to: u16) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            }
        });
    }
}

/// A loopback address of its own, listening on the SSH port and forwarding to `to`.
async fn expose(
    ssh_port: u16,
    to: Option<u16>,
) -> Result<(Ipv4Addr, Option<tokio::task::JoinHandle<()>>), String> {
    let Some(to) = to else {
        return Ok((random_loopback(), None));
    };
    for _ in 0..20 {
        let ip = random_loopback();
        if let Ok(l) = tokio::net::TcpListener::bind((ip, ssh_port)).await {
            return Ok((ip, Some(tokio::spawn(forward(l, to)))));
        }
    }
    Err("no free loopback address".into())
}

async fn boot(s: Arc<Shared>, id: String, fail: bool) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    set_status(&s, &id, |r| r.task_state = Some("spawning".into()));
    if fail {
        tokio::time::sleep(Duration::from_millis(300)).await;
        set_status(&s, &id, |r| {
            r.status = "ERROR".into();
            r.task_state = None;
            r.fault = Some((
                "No valid host was found. There are not enough hosts available.".into(),
                500,
            ));
        });
        return;
    }
    let r = boot_guest(&s, &id).await;
    match r {
        Ok((domain, port)) => match expose(s.ssh_port, port).await {
            Ok((ip, fwd)) => {
                let fwd_abort = fwd.as_ref().map(|f| f.abort_handle());
                let placed = {
                    let mut st = s.st.lock().expect("state");
                    match st.servers.iter_mut().find(|r| r.id == id) {
                        Some(r) if !r.deleting => {
                            r.fixed_ip = Some(ip);
                            r.domain = domain.clone();
                            r.guest_port = port;
                            r.forwarders.extend(fwd);
                            r.status = "ACTIVE".into();
                            r.task_state = None;
                            r.updated = now();
                            true
                        }
                        _ => false,
                    }
                };
                if !placed {
                    // Deleted while building: the guest goes too.
                    if let (Some(b), Some(d)) = (&s.backing, domain) {
                        let _ = b.delete(&d).await;
                    }
                    if let Some(f) = fwd_abort {
                        f.abort();
                    }
                }
            }
            Err(e) => fault(&s, &id, &e),
        },
        Err(e) => fault(&s, &id, &e),
    }
}

fn fault(s: &Shared, id: &str, e: &str) {
    set_status(s, id, |r| {
        r.status = "ERROR".into();
        r.task_state = None;
        r.fault = Some((format!("Build of instance {id} aborted: {e}"), 500));
    });
}

/// Creates the guest behind server `id`: its libvirt domain and passt port.
async fn boot_guest(s: &Arc<Shared>, id: &str) -> Result<(Option<String>, Option<u16>), String> {
    let Some(backing) = &s.backing else {
        return Ok((None, None));
    };
    let (user_data, image, kernel, ramdisk, flavor, created) = {
        let st = s.st.lock().expect("state");
        let r = st.servers.iter().find(|r| r.id == id).ok_or("gone")?;
        let img = st
            .images
            .iter()
            .find(|i| i.id == r.image_id)
            .ok_or("image gone")?;
        let file_of = |key: &str| -> Option<PathBuf> {
            let kid = img.extra.get(key)?.as_str()?;
            st.images.iter().find(|i| i.id == kid)?.file.clone()
        };
        let image = ImageRec {
            id: img.id.clone(),
            name: img.name.clone(),
            status: img.status.clone(),
            disk_format: img.disk_format.clone(),
            container_format: img.container_format.clone(),
            visibility: img.visibility.clone(),
            created: img.created.clone(),
            updated: img.updated.clone(),
            size: img.size,
            file: img.file.clone(),
            extra: img.extra.clone(),
            min_ram: img.min_ram,
            min_disk: img.min_disk,
        };
        (
            r.user_data.clone(),
            image,
            file_of("kernel_id"),
            file_of("ramdisk_id"),
            r.flavor.clone(),
            r.created.clone(),
        )
    };
    let (client, private, public) = keys_from_user_data(user_data.as_deref())?;
    let disk = boot_files(s, id, &image, kernel, ramdisk, &flavor)?;
    let run_uuid = uuid::Uuid::parse_str(id).map_err(|e| e.to_string())?;
    let spec = InstanceSpec {
        meta: InstanceMeta {
            run_uuid,
            owner: "openstack-double".into(),
            image: disk.display().to_string(),
            created_at: time::OffsetDateTime::parse(
                &created,
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap_or_else(|_| time::OffsetDateTime::now_utc()),
        },
        client_public_key: client,
        host_private_key_openssh: private,
        host_public_key: public,
    };
    let inst = backing.create(&spec).await.map_err(|e| e.to_string())?;
    let Access::Ssh(t) = inst.access else {
        return Err("libvirt gave no SSH access".into());
    };
    Ok((Some(inst.id), Some(t.port)))
}

/// Removes a server and everything behind it (guest, forwarders, floating IPs' forwarders).
async fn destroy_server(s: &Arc<Shared>, id: &str) {
    let (domain, fwds) = {
        let mut st = s.st.lock().expect("state");
        let Some(r) = st.servers.iter_mut().find(|r| r.id == id) else {
            return;
        };
        r.deleting = true;
        r.task_state = Some("deleting".into());
        (r.domain.take(), std::mem::take(&mut r.forwarders))
    };
    for f in fwds {
        f.abort();
    }
    if let (Some(b), Some(d)) = (&s.backing, domain) {
        let _ = b.delete(&d).await;
    }
    let _ = std::fs::remove_dir_all(s.dir.join("boot").join(id));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut st = s.st.lock().expect("state");
    st.servers.retain(|r| r.id != id);
    // Its port goes; floating IPs stay allocated, disassociated, as in Neutron.
    let port = format!("port-{id}");
    for f in st
        .floating
        .iter_mut()
        .filter(|f| f.port.as_deref() == Some(port.as_str()))
    {
        f.port = None;
        if let Some(h) = f.forwarder.take() {
            h.abort();
        }
    }
}

// ------------------------------------------------------------------------------ Glance

fn image_json(i: &ImageRec) -> Value {
    let mut v = json!({
        "id": i.id, "name": i.name, "status": i.status,
        "disk_format": i.disk_format, "container_format": i.container_format,
        "visibility": i.visibility, "size": i.size, "virtual_size": null,
        "checksum": null, "os_hash_algo": null, "os_hash_value": null,
        "min_ram": i.min_ram, "min_disk": i.min_disk, "protected": false,
        "os_hidden": false, "owner": PROJECT_ID, "tags": [],
        "created_at": i.created, "updated_at": i.updated,
        "self": format!("/v2/images/{}", i.id),
        "file": format!("/v2/images/{}/file", i.id),
        "schema": "/v2/schemas/image",
    });
    for (k, val) in &i.extra {
        v[k] = val.clone();
    }
    v
}

const IMAGE_CORE: &[&str] = &[
    "id",
    "name",
    "status",
    "disk_format",
    "container_format",
    "visibility",
    "size",
    "virtual_size",
    "checksum",
    "min_ram",
    "min_disk",
    "protected",
    "tags",
    "owner",
    "created_at",
    "updated_at",
    "self",
    "file",
    "schema",
    "os_hidden",
    "os_hash_algo",
    "os_hash_value",
    "locations",
    "direct_url",
];

async fn glance(
    s: &Arc<Shared>,
    method: &Method,
    uri: &axum::http::Uri,
    rest: &[&str],
    headers: &HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let qs = query(uri);
    let text_error = |status: StatusCode, msg: &str| {
        (
            status,
            format!(
                "{} {}\n\n{msg}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ),
        )
            .into_response()
    };
    match (method.clone(), rest) {
        (Method::GET, ["images"]) => {
            let st = s.st.lock().expect("state");
            let mut list: Vec<&ImageRec> = st
                .images
                .iter()
                .filter(|i| q(&qs, "name").is_none_or(|n| i.name.as_deref() == Some(n)))
                .filter(|i| q(&qs, "status").is_none_or(|x| x == i.status))
                .filter(|i| q(&qs, "visibility").is_none_or(|x| x == "all" || x == i.visibility))
                .filter(|i| q(&qs, "id").is_none_or(|x| x == i.id))
                .collect();
            list.reverse(); // newest first
            if let Some(m) = q(&qs, "marker") {
                match list.iter().position(|i| i.id == m) {
                    Some(p) => list.drain(..=p).for_each(drop),
                    None => {
                        return text_error(
                            StatusCode::BAD_REQUEST,
                            &format!("marker {m} not found"),
                        );
                    }
                }
            }
            let limit: usize = q(&qs, "limit").and_then(|l| l.parse().ok()).unwrap_or(25);
            let more = list.len() > limit;
            list.truncate(limit);
            let mut v = json!({"images": list.iter().map(|i| image_json(i)).collect::<Vec<_>>(),
                "first": "/v2/images", "schema": "/v2/schemas/images"});
            if more && let Some(last) = list.last() {
                let mut keep: Vec<String> = qs
                    .iter()
                    .filter(|(k, _)| k != "marker")
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                keep.push(format!("marker={}", last.id));
                v["next"] = json!(format!("/v2/images?{}", keep.join("&")));
            }
            json_resp(StatusCode::OK, v)
        }
        (Method::POST, ["images"]) => {
            let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(&body) else {
                return text_error(StatusCode::BAD_REQUEST, "Body is not a JSON object");
            };
            let id = m
                .get("id")
                .and_then(Value::as_str)
                .map(String::from)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let mut extra = serde_json::Map::new();
            for (k, v) in &m {
                if IMAGE_CORE.contains(&k.as_str()) {
                    continue;
                }
                if !v.is_string() {
                    return text_error(
                        StatusCode::BAD_REQUEST,
                        &format!(
                            "Provided object does not match schema 'image': {v} is not of type 'string'"
                        ),
                    );
                }
                extra.insert(k.clone(), v.clone());
            }
            let rec = ImageRec {
                id: id.clone(),
                name: m.get("name").and_then(Value::as_str).map(String::from),
                status: "queued".into(),
                disk_format: m
                    .get("disk_format")
                    .and_then(Value::as_str)
                    .map(String::from),
                container_format: m
                    .get("container_format")
                    .and_then(Value::as_str)
                    .map(String::from),
                visibility: m
                    .get("visibility")
                    .and_then(Value::as_str)
                    .unwrap_or("shared")
                    .into(),
                created: now(),
                updated: now(),
                size: None,
                file: None,
                extra,
                min_ram: m.get("min_ram").and_then(Value::as_u64).unwrap_or(0),
                min_disk: m.get("min_disk").and_then(Value::as_u64).unwrap_or(0),
            };
            let v = image_json(&rec);
            let mut st = s.st.lock().expect("state");
            if st.images.iter().any(|i| i.id == id) {
                return text_error(
                    StatusCode::CONFLICT,
                    &format!("Image with identifier {id} already exists!"),
                );
            }
            st.images.push(rec);
            let mut r = json_resp(StatusCode::CREATED, v);
            r.headers_mut().insert(
                "Location",
                HeaderValue::from_str(&format!("{}/image/v2/images/{id}", s.base))
                    .expect("location"),
            );
            r
        }
        (Method::GET, ["images", id]) => {
            let st = s.st.lock().expect("state");
            match st.images.iter().find(|i| i.id == *id) {
                Some(i) => json_resp(StatusCode::OK, image_json(i)),
                None => text_error(
                    StatusCode::NOT_FOUND,
                    &format!("No image found with ID {id}"),
                ),
            }
        }
        (Method::PATCH, ["images", id]) => {
            let Ok(Value::Array(ops)) = serde_json::from_slice::<Value>(&body) else {
                return text_error(StatusCode::BAD_REQUEST, "Body is not a JSON patch");
            };
            let mut st = s.st.lock().expect("state");
            let Some(i) = st.images.iter_mut().find(|i| i.id == *id) else {
                return text_error(
                    StatusCode::NOT_FOUND,
                    &format!("No image found with ID {id}"),
                );
            };
            for op in ops {
                let path = op["path"]
                    .as_str()
                    .unwrap_or("")
                    .trim_start_matches('/')
                    .to_string();
                match op["op"].as_str() {
                    Some("add") | Some("replace") => match path.as_str() {
                        "name" => i.name = op["value"].as_str().map(String::from),
                        "visibility" => {
                            i.visibility = op["value"].as_str().unwrap_or("private").into()
                        }
                        p if !IMAGE_CORE.contains(&p) => {
                            i.extra.insert(p.to_string(), op["value"].clone());
                        }
                        _ => {}
                    },
                    Some("remove") => {
                        i.extra.remove(&path);
                    }
                    _ => {}
                }
            }
            i.updated = now();
            json_resp(StatusCode::OK, image_json(i))
        }
        (Method::PUT, ["images", id, "file"]) => {
            let ct = headers
                .get("Content-Type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if ct != "application/octet-stream" {
                return text_error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    &format!("The Content-Type {ct:?} is not supported"),
                );
            }
            let path = s.dir.join("images").join(format!("{id}.img"));
            {
                let st = s.st.lock().expect("state");
                match st.images.iter().find(|i| i.id == *id) {
                    None => {
                        return text_error(
                            StatusCode::NOT_FOUND,
                            &format!("No image found with ID {id}"),
                        );
                    }
                    Some(i) if i.status != "queued" => {
                        return text_error(
                            StatusCode::CONFLICT,
                            &format!(
                                "Image status transition from {} to saving is not allowed",
                                i.status
                            ),
                        );
                    }
                    _ => {}
                }
            }
            let _ = std::fs::create_dir_all(path.parent().expect("parent"));
            if let Err(e) = std::fs::write(&path, &body) {
                return text_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
            }
            let mut st = s.st.lock().expect("state");
            if let Some(i) = st.images.iter_mut().find(|i| i.id == *id) {
                i.size = Some(body.len() as u64);
                i.file = Some(path);
                i.status = "active".into();
                i.updated = now();
            }
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, ["images", id, "file"]) => {
            let file = {
                let st = s.st.lock().expect("state");
                st.images
                    .iter()
                    .find(|i| i.id == *id)
                    .and_then(|i| i.file.clone())
            };
            match file.and_then(|f| std::fs::read(f).ok()) {
                Some(data) => (
                    StatusCode::OK,
                    [("Content-Type", "application/octet-stream")],
                    data,
                )
                    .into_response(),
                None => StatusCode::NO_CONTENT.into_response(),
            }
        }
        (Method::DELETE, ["images", id]) => {
            let mut st = s.st.lock().expect("state");
            let Some(pos) = st.images.iter().position(|i| i.id == *id) else {
                return text_error(
                    StatusCode::NOT_FOUND,
                    &format!("Failed to find image {id} to delete"),
                );
            };
            let rec = st.images.remove(pos);
            if let Some(f) = rec.file {
                let _ = std::fs::remove_file(f);
            }
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, ["schemas", "image"]) | (Method::GET, ["schemas", "images"]) => json_resp(
            StatusCode::OK,
            json!({"name": "image", "properties": {}, "additionalProperties": {"type": "string"}}),
        ),
        (Method::GET, ["info", "import"]) => json_resp(
            StatusCode::OK,
            json!({"import-methods": {"description": "Import methods available.", "type": "array", "value": ["glance-direct"]}}),
        ),
        (Method::GET, ["info", "stores"]) => json_resp(
            StatusCode::OK,
            json!({"stores": [{"id": "file", "default": true}]}),
        ),
        _ => text_error(StatusCode::NOT_FOUND, "The resource could not be found."),
    }
}

// ------------------------------------------------------------------------------ Neutron

fn network_json(id: &str, name: &str, external: bool) -> Value {
    json!({"id": id, "name": name, "status": "ACTIVE", "admin_state_up": true, "shared": false,
        "router:external": external, "subnets": [], "tenant_id": PROJECT_ID, "project_id": PROJECT_ID,
        "mtu": 1450, "port_security_enabled": true, "description": "", "tags": [],
        "availability_zones": ["nova"], "is_default": external})
}

fn floating_json(f: &FloatingRec, fixed: Option<String>) -> Value {
    json!({"id": f.id, "floating_ip_address": f.address.to_string(), "floating_network_id": f.network,
        "port_id": f.port, "fixed_ip_address": fixed, "status": if f.port.is_some() { "ACTIVE" } else { "DOWN" },
        "description": f.description, "tenant_id": PROJECT_ID, "project_id": PROJECT_ID, "router_id": null, "tags": []})
}

fn neutron_error(status: StatusCode, ty: &str, msg: &str) -> Response {
    json_resp(
        status,
        json!({"NeutronError": {"type": ty, "message": msg, "detail": ""}}),
    )
}

async fn neutron(
    s: &Arc<Shared>,
    method: &Method,
    uri: &axum::http::Uri,
    rest: &[&str],
    body: &[u8],
) -> Response {
    let qs = query(uri);
    match (method.clone(), rest) {
        (Method::GET, ["networks"]) => {
            let all = [
                network_json(PRIVATE_NET, "private", false),
                network_json(PUBLIC_NET, "public", true),
            ];
            let list: Vec<Value> = all
                .into_iter()
                .filter(|n| q(&qs, "name").is_none_or(|x| n["name"] == x))
                .filter(|n| q(&qs, "id").is_none_or(|x| n["id"] == x))
                .collect();
            json_resp(StatusCode::OK, json!({"networks": list}))
        }
        (Method::GET, ["ports"]) => {
            let st = s.st.lock().expect("state");
            let list: Vec<Value> = st
                .servers
                .iter()
                .filter(|r| q(&qs, "device_id").is_none_or(|d| d == r.id))
                .filter_map(|r| {
                    let ip = r.fixed_ip?;
                    Some(json!({"id": format!("port-{}", r.id), "device_id": r.id, "device_owner": "compute:nova",
                        "network_id": if r.network == "public" { PUBLIC_NET } else { PRIVATE_NET },
                        "fixed_ips": [{"ip_address": ip.to_string(), "subnet_id": "subnet-1"}],
                        "mac_address": "fa:16:3e:00:00:01", "status": "ACTIVE"}))
                })
                .collect();
            json_resp(StatusCode::OK, json!({"ports": list}))
        }
        (Method::GET, ["floatingips"]) => {
            let st = s.st.lock().expect("state");
            let fixed_of = |port: &Option<String>| {
                port.as_ref().and_then(|p| {
                    st.servers
                        .iter()
                        .find(|r| format!("port-{}", r.id) == *p)
                        .and_then(|r| r.fixed_ip.map(|i| i.to_string()))
                })
            };
            let list: Vec<Value> = st
                .floating
                .iter()
                .filter(|f| q(&qs, "description").is_none_or(|d| d == f.description))
                .filter(|f| q(&qs, "port_id").is_none_or(|p| Some(p) == f.port.as_deref()))
                .map(|f| floating_json(f, fixed_of(&f.port)))
                .collect();
            json_resp(StatusCode::OK, json!({"floatingips": list}))
        }
        (Method::POST, ["floatingips"]) => {
            let Ok(v) = serde_json::from_slice::<Value>(body) else {
                return neutron_error(StatusCode::BAD_REQUEST, "HTTPBadRequest", "Malformed body");
            };
            let f = &v["floatingip"];
            if f["floating_network_id"].as_str() != Some(PUBLIC_NET) {
                return neutron_error(
                    StatusCode::BAD_REQUEST,
                    "ExternalGatewayForFloatingIPNotFound",
                    "Network is not external",
                );
            }
            let port = f["port_id"].as_str().map(String::from);
            // The server behind the port, and its guest's forwarded port.
            let target = port.as_ref().and_then(|p| {
                let st = s.st.lock().expect("state");
                let r = st.servers.iter().find(|r| format!("port-{}", r.id) == *p)?;
                Some(r.id.clone())
            });
            if port.is_some() && target.is_none() {
                return neutron_error(
                    StatusCode::NOT_FOUND,
                    "PortNotFound",
                    "Port could not be found.",
                );
            }
            let guest_port = target.as_ref().and_then(|id| {
                let st = s.st.lock().expect("state");
                st.servers
                    .iter()
                    .find(|r| r.id == *id)
                    .and_then(|r| r.guest_port)
            });
            let (ip, fwd) = match expose(s.ssh_port, guest_port).await {
                Ok(x) => x,
                Err(e) => {
                    return neutron_error(StatusCode::CONFLICT, "IpAddressGenerationFailure", &e);
                }
            };
            let rec = FloatingRec {
                id: uuid::Uuid::new_v4().to_string(),
                address: ip,
                network: PUBLIC_NET.into(),
                port: port.clone(),
                description: f["description"].as_str().unwrap_or("").into(),
                forwarder: fwd,
            };
            let mut st = s.st.lock().expect("state");
            let fixed = target.as_ref().and_then(|id| {
                let r = st.servers.iter_mut().find(|r| r.id == *id)?;
                r.floating.push(ip.to_string());
                r.fixed_ip.map(|i| i.to_string())
            });
            let v = floating_json(&rec, fixed);
            st.floating.push(rec);
            json_resp(StatusCode::CREATED, json!({"floatingip": v}))
        }
        (Method::DELETE, ["floatingips", id]) => {
            let mut st = s.st.lock().expect("state");
            let Some(pos) = st.floating.iter().position(|f| f.id == *id) else {
                return neutron_error(
                    StatusCode::NOT_FOUND,
                    "FloatingIPNotFound",
                    &format!("Floating IP {id} could not be found"),
                );
            };
            let f = st.floating.remove(pos);
            if let Some(h) = f.forwarder {
                h.abort();
            }
            let addr = f.address.to_string();
            for r in st.servers.iter_mut() {
                r.floating.retain(|a| *a != addr);
            }
            StatusCode::NO_CONTENT.into_response()
        }
        _ => neutron_error(
            StatusCode::NOT_FOUND,
            "HTTPNotFound",
            "The resource could not be found.",
        ),
    }
}
