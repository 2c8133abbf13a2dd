//! Which cloud, and how to log in to it: `clouds.yaml`, `secure.yaml` and `OS_*` variables,
//! read the way the `openstack` command line reads them.
//!
//! - Files: `$OS_CLIENT_CONFIG_FILE` first, then `clouds.{yaml,yml,json}` in the current
//!   directory, `$XDG_CONFIG_HOME/openstack`, `~/.config/openstack`, `/etc/openstack`. The
//!   first one that exists and parses is used; the others are not merged. `secure.*` is
//!   found the same way (`$OS_CLIENT_SECURE_FILE` first) and merged over it, key by key.
//! - The cloud: `--cloud`, else `$OS_CLOUD`, else the cloud made of `OS_*` variables when
//!   any are set, else the only cloud in the file.
//! - `OS_*` variables (`OS_PASSWORD`, `OS_USERNAME`, `OS_REGION_NAME`, …) override the
//!   named cloud's values, as the command line's options (whose defaults they are) do.
//! - Without a domain, users and projects are in the domain with id `default`.
//!
//! ferrotron's own settings for a cloud sit in the same entry under `ferrotron:` (the
//! Python tools ignore keys they do not know): see [`Settings`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

/// A problem with the configuration: nothing to retry.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Everything needed to talk to one cloud.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// The cloud's name in clouds.yaml (`envvars` for one made of `OS_*` variables).
    pub name: String,
    /// The clouds.yaml it came from, for messages.
    pub source: Option<PathBuf>,
    pub auth_url: String,
    pub auth: AuthMethod,
    pub region: Option<String>,
    /// Which endpoint of each service: `public` (default), `internal` or `admin`.
    pub interface: String,
    /// Verify TLS certificates (`verify: false` or `insecure: true` turns it off).
    pub verify: bool,
    pub cacert: Option<PathBuf>,
    /// `<service>_endpoint_override` keys: service type → URL used instead of the catalog's.
    pub endpoint_overrides: BTreeMap<String, String>,
    pub settings: Settings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameOrId {
    Name(String),
    Id(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub which: NameOrId,
    /// The domain a name lives in; `None` for ids.
    pub domain: Option<NameOrId>,
}

#[derive(Clone, PartialEq, Eq)]
pub enum AuthMethod {
    /// `auth_type: password` (or `v3password`, the default).
    Password {
        user: Named,
        password: String,
        /// `None`: an unscoped token, which cannot reach Nova; reported when used.
        project: Option<Named>,
    },
    /// `auth_type: v3applicationcredential`. The credential carries its project.
    ApplicationCredential {
        /// By id, or by name together with its user.
        id: Option<String>,
        name: Option<String>,
        user: Option<Named>,
        secret: String,
    },
}

// Secrets stay out of logs and error messages.
impl std::fmt::Debug for AuthMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthMethod::Password { user, project, .. } => f
                .debug_struct("Password")
                .field("user", user)
                .field("project", project)
                .finish_non_exhaustive(),
            AuthMethod::ApplicationCredential { id, name, user, .. } => f
                .debug_struct("ApplicationCredential")
                .field("id", id)
                .field("name", name)
                .field("user", user)
                .finish_non_exhaustive(),
        }
    }
}

/// How ferrotron reaches a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AddressKind {
    /// The server's fixed address on `network` (ferrotron runs inside the cloud's network).
    #[default]
    Fixed,
    /// A floating address: the one the cloud assigned, else one ferrotron allocates from
    /// `floating_network` and releases with the server.
    Floating,
}

/// The `ferrotron:` section of a cloud entry. Command-line flags override it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub flavor: Option<String>,
    pub network: Option<String>,
    /// Default Glance image (name, id, or DISTRO-RELEASE-FLAVOR prefix: newest wins).
    pub image: Option<String>,
    pub address: AddressKind,
    pub floating_network: Option<String>,
    pub ssh_user: String,
    pub ssh_port: u16,
    /// Instances ferrotron may have at once on this cloud (also bounded by the quota).
    pub max_instances: usize,
    /// Seconds a server may take to become ACTIVE.
    pub active_timeout: u64,
    /// Seconds the guest may take from ACTIVE to answering SSH.
    pub boot_timeout: u64,
    /// Seconds a deleted server may take to disappear.
    pub delete_timeout: u64,
    /// Seconds between status polls.
    pub poll_interval: f64,
    /// Retries of a request answered 429 or 5xx (with backoff and jitter).
    pub http_retries: u32,
    /// Seconds of a request's own timeout.
    pub request_timeout: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            flavor: None,
            network: None,
            image: None,
            address: AddressKind::Fixed,
            floating_network: None,
            ssh_user: "root".into(),
            ssh_port: 22,
            max_instances: 10,
            active_timeout: 600,
            boot_timeout: 300,
            delete_timeout: 300,
            poll_interval: 2.0,
            http_retries: 5,
            request_timeout: 60,
        }
    }
}

impl Settings {
    pub fn poll(&self) -> Duration {
        Duration::from_secs_f64(self.poll_interval.clamp(0.05, 60.0))
    }
}

/// Where clouds.yaml and secure.yaml are looked for, in order, given the environment.
pub fn search_paths(env: &dyn Fn(&str) -> Option<String>, stem: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push(cwd);
    }
    let home = env("HOME").map(PathBuf::from);
    if let Some(x) = env("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        dirs.push(PathBuf::from(x).join("openstack"));
    }
    if let Some(h) = &home {
        dirs.push(h.join(".config/openstack"));
    }
    dirs.push(PathBuf::from("/etc/openstack"));
    dirs.dedup();
    let mut out = Vec::new();
    let override_var = if stem == "clouds" {
        "OS_CLIENT_CONFIG_FILE"
    } else {
        "OS_CLIENT_SECURE_FILE"
    };
    if let Some(f) = env(override_var).filter(|f| !f.is_empty()) {
        out.push(PathBuf::from(f));
    }
    for d in dirs {
        for ext in ["yaml", "yml", "json"] {
            out.push(d.join(format!("{stem}.{ext}")));
        }
    }
    out
}

/// The first file of `paths` that exists and parses.
fn first_file(paths: &[PathBuf]) -> Result<Option<(PathBuf, Value)>, ConfigError> {
    for p in paths {
        let text = match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => continue,
            Err(e) => return Err(ConfigError(format!("reading {}: {e}", p.display()))),
        };
        let parsed: Result<Value, String> = if p.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            serde_norway::from_str(&text).map_err(|e| e.to_string())
        };
        match parsed {
            Ok(v @ Value::Object(_)) => return Ok(Some((p.clone(), v))),
            Ok(Value::Null) => return Ok(Some((p.clone(), Value::Object(Map::new())))),
            Ok(_) => {
                return Err(ConfigError(format!(
                    "{} is not a mapping of settings",
                    p.display()
                )));
            }
            // The Python tools skip a file they cannot parse, with a warning; so do we.
            Err(e) => {
                tracing::warn!("skipping {}: {e}", p.display());
                continue;
            }
        }
    }
    Ok(None)
}

/// Deep merge: mappings key by key, anything else replaced.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

const AUTH_KEYS: &[&str] = &[
    "auth_url",
    "username",
    "user_id",
    "password",
    "project_name",
    "project_id",
    "tenant_name",
    "tenant_id",
    "user_domain_name",
    "user_domain_id",
    "project_domain_name",
    "project_domain_id",
    "domain_name",
    "domain_id",
    "application_credential_id",
    "application_credential_name",
    "application_credential_secret",
];

const SELECTORS: &[&str] = &[
    "OS_CLOUD",
    "OS_REGION_NAME",
    "OS_CLIENT_CONFIG_FILE",
    "OS_CLIENT_SECURE_FILE",
    "OS_CLOUD_NAME",
];

/// `OS_*` variables as config keys (`OS_PROJECT_NAME` → `project_name`), auth keys moved
/// under `auth`. The second value says whether any is more than a selector.
fn env_cloud(vars: &[(String, String)]) -> (Value, bool) {
    let mut cloud = Map::new();
    let mut auth = Map::new();
    let mut substantive = false;
    for (k, v) in vars {
        let Some(rest) = k.strip_prefix("OS_") else {
            continue;
        };
        if ["TEST", "STD", "LOG"].iter().any(|p| rest.starts_with(p)) {
            continue;
        }
        if !SELECTORS.contains(&k.as_str()) {
            substantive = true;
        }
        if matches!(
            k.as_str(),
            "OS_CLOUD" | "OS_CLOUD_NAME" | "OS_CLIENT_CONFIG_FILE" | "OS_CLIENT_SECURE_FILE"
        ) {
            continue;
        }
        let key = rest.to_ascii_lowercase();
        if AUTH_KEYS.contains(&key.as_str()) {
            auth.insert(key, Value::String(v.clone()));
        } else {
            cloud.insert(key, Value::String(v.clone()));
        }
    }
    if !auth.is_empty() {
        cloud.insert("auth".into(), Value::Object(auth));
    }
    (Value::Object(cloud), substantive)
}

/// Reads the configuration of `cloud` (or the default one) from the usual places.
pub fn load(cloud: Option<&str>) -> Result<CloudConfig, ConfigError> {
    let env = |k: &str| std::env::var(k).ok();
    let vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("OS_"))
        .collect();
    load_from(
        cloud,
        &search_paths(&env, "clouds"),
        &search_paths(&env, "secure"),
        &vars,
    )
}

/// [`load`] with the files and variables given, for tests.
pub fn load_from(
    cloud: Option<&str>,
    clouds_files: &[PathBuf],
    secure_files: &[PathBuf],
    vars: &[(String, String)],
) -> Result<CloudConfig, ConfigError> {
    let var = |k: &str| {
        vars.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let (source, mut doc) = match first_file(clouds_files)? {
        Some((p, v)) => (Some(p), v),
        None => (None, Value::Object(Map::new())),
    };
    if let Some((_, secure)) = first_file(secure_files)? {
        merge(&mut doc, secure);
    }
    let mut clouds = match doc.get("clouds") {
        Some(Value::Object(m)) => m.clone(),
        Some(Value::Null) | None => Map::new(),
        Some(_) => {
            return Err(ConfigError(format!(
                "{}: `clouds` is not a mapping",
                describe(&source)
            )));
        }
    };
    let env_name = var("OS_CLOUD_NAME").unwrap_or_else(|| "envvars".into());
    let (env_values, env_substantive) = env_cloud(vars);
    if env_substantive && !clouds.contains_key(&env_name) {
        clouds.insert(env_name.clone(), env_values.clone());
    }
    let name = match cloud.map(str::to_string).or_else(|| var("OS_CLOUD")) {
        Some(n) => n,
        None if env_substantive => env_name.clone(),
        None if clouds.len() == 1 => clouds.keys().next().cloned().unwrap_or_default(),
        None => {
            return Err(ConfigError(format!(
                "no cloud chosen: pass --cloud NAME or set OS_CLOUD ({})",
                known(&clouds, &source)
            )));
        }
    };
    let Some(mut entry) = clouds.get(&name).cloned() else {
        return Err(ConfigError(format!(
            "cloud `{name}` is not configured ({})",
            known(&clouds, &source)
        )));
    };
    if !entry.is_object() {
        return Err(ConfigError(format!(
            "{}: cloud `{name}` is not a mapping",
            describe(&source)
        )));
    }
    // The command line's options default to the OS_* variables and win over the file.
    if name != env_name && env_substantive {
        merge(&mut entry, env_values);
    }
    if let Some(region) = var("OS_REGION_NAME") {
        entry["region_name"] = Value::String(region);
    }
    build(&name, source, entry)
}

fn describe(source: &Option<PathBuf>) -> String {
    source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "clouds.yaml".into())
}

fn known(clouds: &Map<String, Value>, source: &Option<PathBuf>) -> String {
    match source {
        None if clouds.is_empty() => "no clouds.yaml found in ., ~/.config/openstack or \
             /etc/openstack, and no OS_AUTH_URL set"
            .into(),
        _ => format!(
            "{} defines: {}",
            describe(source),
            if clouds.is_empty() {
                "none".to_string()
            } else {
                clouds.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        ),
    }
}

fn build(name: &str, source: Option<PathBuf>, entry: Value) -> Result<CloudConfig, ConfigError> {
    let at = || format!("{}: cloud `{name}`", describe(&source));
    let Value::Object(mut entry) = entry else {
        return Err(ConfigError(format!("{} is not a mapping", at())));
    };
    // Auth keys may sit at the top level of an entry too.
    let mut auth = match entry.remove("auth") {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(ConfigError(format!("{}: `auth` is not a mapping", at()))),
    };
    for k in AUTH_KEYS {
        if let Some(v) = entry.remove(*k) {
            auth.entry(k.to_string()).or_insert(v);
        }
    }
    let s = |m: &Map<String, Value>, k: &str| -> Option<String> {
        match m.get(k) {
            Some(Value::String(v)) if !v.is_empty() => Some(v.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            _ => None,
        }
    };
    if let Some(p) = s(&entry, "profile") {
        return Err(ConfigError(format!(
            "{}: vendor profiles (`profile: {p}`) are not supported; write the profile's \
             auth_url and region into the entry",
            at()
        )));
    }
    let auth_url = s(&auth, "auth_url").ok_or_else(|| {
        ConfigError(format!(
            "{}: no auth_url (auth.auth_url or OS_AUTH_URL)",
            at()
        ))
    })?;
    let domain = |id_key: &str, name_key: &str| -> Option<NameOrId> {
        s(&auth, id_key)
            .map(NameOrId::Id)
            .or_else(|| s(&auth, name_key).map(NameOrId::Name))
    };
    let shared_domain = domain("domain_id", "domain_name");
    let user_domain = domain("user_domain_id", "user_domain_name")
        .or_else(|| shared_domain.clone())
        .unwrap_or_else(|| NameOrId::Id("default".into()));
    let project_domain = domain("project_domain_id", "project_domain_name")
        .or_else(|| shared_domain.clone())
        .unwrap_or_else(|| NameOrId::Id("default".into()));
    let user = s(&auth, "user_id")
        .map(|id| Named {
            which: NameOrId::Id(id),
            domain: None,
        })
        .or_else(|| {
            s(&auth, "username").map(|n| Named {
                which: NameOrId::Name(n),
                domain: Some(user_domain.clone()),
            })
        });
    let project = s(&auth, "project_id")
        .or_else(|| s(&auth, "tenant_id"))
        .map(|id| Named {
            which: NameOrId::Id(id),
            domain: None,
        })
        .or_else(|| {
            s(&auth, "project_name")
                .or_else(|| s(&auth, "tenant_name"))
                .map(|n| Named {
                    which: NameOrId::Name(n),
                    domain: Some(project_domain.clone()),
                })
        });
    let auth_type = s(&entry, "auth_type").unwrap_or_else(|| {
        if s(&auth, "application_credential_secret").is_some() {
            "v3applicationcredential".into()
        } else {
            "password".into()
        }
    });
    let method = match auth_type.as_str() {
        "password" | "v3password" => AuthMethod::Password {
            user: user.ok_or_else(|| {
                ConfigError(format!("{}: password auth needs username or user_id", at()))
            })?,
            password: s(&auth, "password").ok_or_else(|| {
                ConfigError(format!(
                    "{}: no password (auth.password, secure.yaml or OS_PASSWORD)",
                    at()
                ))
            })?,
            project,
        },
        "v3applicationcredential" => {
            let id = s(&auth, "application_credential_id");
            let cred_name = s(&auth, "application_credential_name");
            if id.is_none() && (cred_name.is_none() || user.is_none()) {
                return Err(ConfigError(format!(
                    "{}: application credential auth needs application_credential_id, or \
                     application_credential_name with username or user_id",
                    at()
                )));
            }
            AuthMethod::ApplicationCredential {
                id,
                name: cred_name,
                user,
                secret: s(&auth, "application_credential_secret").ok_or_else(|| {
                    ConfigError(format!("{}: no application_credential_secret", at()))
                })?,
            }
        }
        other => {
            return Err(ConfigError(format!(
                "{}: auth_type `{other}` is not supported (password, v3password, \
                 v3applicationcredential)",
                at()
            )));
        }
    };
    let region = s(&entry, "region_name").or_else(|| match entry.get("regions") {
        Some(Value::Array(r)) => r.first().and_then(|first| match first {
            Value::String(n) => Some(n.clone()),
            Value::Object(m) => m.get("name").and_then(Value::as_str).map(String::from),
            _ => None,
        }),
        _ => None,
    });
    let interface = s(&entry, "interface")
        .or_else(|| s(&entry, "endpoint_type"))
        .unwrap_or_else(|| "public".into())
        .trim_end_matches("URL")
        .to_ascii_lowercase();
    let truthy = |v: Option<String>| {
        v.map(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
    };
    let verify = match (truthy(s(&entry, "verify")), truthy(s(&entry, "insecure"))) {
        (_, Some(true)) => false,
        (Some(v), _) => v,
        _ => true,
    };
    let cacert = s(&entry, "cacert").map(PathBuf::from);
    let endpoint_overrides = entry
        .iter()
        .filter_map(|(k, v)| {
            let service = k.strip_suffix("_endpoint_override")?;
            Some((service.replace('_', "-"), v.as_str()?.to_string()))
        })
        .collect();
    let settings = match entry.remove("ferrotron") {
        None | Some(Value::Null) => Settings::default(),
        Some(v) => serde_json::from_value(v)
            .map_err(|e| ConfigError(format!("{}: ferrotron settings: {e}", at())))?,
    };
    Ok(CloudConfig {
        name: name.to_string(),
        source,
        auth_url,
        auth: method,
        region,
        interface,
        verify,
        cacert,
        endpoint_overrides,
        settings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const CLOUDS: &str = "
clouds:
  prod:
    auth:
      auth_url: https://keystone.example:5000/v3
      username: alice
      project_name: ci
      user_domain_name: Users
    region_name: RegionTwo
    ferrotron:
      flavor: m1.small
      network: private
      address: floating
      floating_network: public
  app:
    auth_type: v3applicationcredential
    auth:
      auth_url: https://keystone.example:5000
      application_credential_id: abc
      application_credential_secret: s3cret
    regions: [East, West]
    interface: internal
    verify: false
";

    #[test]
    fn first_file_wins_secure_merges_and_defaults_apply() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope.yaml");
        let broken = write(d.path(), "broken.yaml", "clouds: [\n");
        let first = write(d.path(), "clouds.yaml", CLOUDS);
        let later = write(d.path(), "other.yaml", "clouds:\n  later: {}\n");
        let secure = write(
            d.path(),
            "secure.yaml",
            "clouds:\n  prod:\n    auth:\n      password: hunter2\n",
        );
        let files = [missing, broken, first.clone(), later];
        let c = load_from(Some("prod"), &files, std::slice::from_ref(&secure), &[]).unwrap();
        assert_eq!(c.source.as_deref(), Some(first.as_path()));
        assert_eq!(c.region.as_deref(), Some("RegionTwo"));
        assert_eq!(c.interface, "public");
        assert!(c.verify);
        assert_eq!(c.settings.flavor.as_deref(), Some("m1.small"));
        assert_eq!(c.settings.address, AddressKind::Floating);
        assert_eq!(c.settings.ssh_port, 22);
        match &c.auth {
            AuthMethod::Password {
                user,
                password,
                project,
            } => {
                assert_eq!(password, "hunter2");
                assert_eq!(user.which, NameOrId::Name("alice".into()));
                assert_eq!(user.domain, Some(NameOrId::Name("Users".into())));
                let p = project.as_ref().unwrap();
                assert_eq!(p.which, NameOrId::Name("ci".into()));
                // No project domain given: the `default` domain, as the CLI assumes.
                assert_eq!(p.domain, Some(NameOrId::Id("default".into())));
            }
            other => panic!("{other:?}"),
        }
        // The secret never shows in debug output.
        assert!(!format!("{c:?}").contains("hunter2"));

        let a = load_from(Some("app"), &files, &[], &[]).unwrap();
        assert_eq!(a.region.as_deref(), Some("East"));
        assert_eq!(a.interface, "internal");
        assert!(!a.verify);
        assert!(
            matches!(a.auth, AuthMethod::ApplicationCredential { ref id, .. } if id.as_deref() == Some("abc"))
        );

        // Without secure.yaml there is no password: said plainly.
        let e = load_from(Some("prod"), &files, &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no password") && e.contains("prod"), "{e}");
        let e = load_from(Some("nope"), &files, &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`nope` is not configured") && e.contains("app, prod"),
            "{e}"
        );
        let e = load_from(None, &files, &[], &[]).unwrap_err().to_string();
        assert!(e.contains("--cloud"), "{e}");
    }

    #[test]
    fn environment_selects_and_overrides_like_the_cli() {
        let d = tempfile::tempdir().unwrap();
        let f = [write(d.path(), "clouds.yaml", CLOUDS)];
        let v = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let c = load_from(
            None,
            &f,
            &[],
            &v(&[
                ("OS_CLOUD", "prod"),
                ("OS_PASSWORD", "frompw"),
                ("OS_REGION_NAME", "R3"),
            ]),
        )
        .unwrap();
        assert_eq!(c.name, "prod");
        assert_eq!(c.region.as_deref(), Some("R3"));
        assert!(
            matches!(c.auth, AuthMethod::Password { ref password, .. } if password == "frompw")
        );
        // --cloud beats OS_CLOUD.
        let c = load_from(Some("app"), &f, &[], &v(&[("OS_CLOUD", "prod")])).unwrap();
        assert_eq!(c.name, "app");
        // Only OS_* variables: the `envvars` cloud, with the shared domain.
        let c = load_from(
            None,
            &[],
            &[],
            &v(&[
                ("OS_AUTH_URL", "http://k:5000/v3"),
                ("OS_USERNAME", "bob"),
                ("OS_PASSWORD", "pw"),
                ("OS_PROJECT_ID", "p1"),
                ("OS_DOMAIN_NAME", "D"),
                ("OS_TEST_TIMEOUT", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.name, "envvars");
        assert_eq!(c.auth_url, "http://k:5000/v3");
        match &c.auth {
            AuthMethod::Password { user, project, .. } => {
                assert_eq!(user.domain, Some(NameOrId::Name("D".into())));
                assert_eq!(project.as_ref().unwrap().which, NameOrId::Id("p1".into()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn search_order_matches_the_cli() {
        let env = |k: &str| match k {
            "HOME" => Some("/home/u".to_string()),
            "OS_CLIENT_CONFIG_FILE" => Some("/x/my.yaml".to_string()),
            _ => None,
        };
        let p = search_paths(&env, "clouds");
        assert_eq!(p[0], PathBuf::from("/x/my.yaml"));
        assert_eq!(p[1], std::env::current_dir().unwrap().join("clouds.yaml"));
        let home = p
            .iter()
            .position(|x| x == Path::new("/home/u/.config/openstack/clouds.yaml"));
        let etc = p
            .iter()
            .position(|x| x == Path::new("/etc/openstack/clouds.yaml"));
        assert!(home.unwrap() < etc.unwrap());
        assert!(p.contains(&PathBuf::from("/etc/openstack/clouds.json")));
        let s = search_paths(&env, "secure");
        assert!(s[0].ends_with("secure.yaml"), "{s:?}");
    }

    #[test]
    fn bad_settings_are_named() {
        let d = tempfile::tempdir().unwrap();
        let f = [write(
            d.path(),
            "clouds.yaml",
            "clouds:\n  c:\n    auth: {auth_url: 'http://k', username: u, password: p}\n    ferrotron: {flavour: x}\n",
        )];
        let e = load_from(Some("c"), &f, &[], &[]).unwrap_err().to_string();
        assert!(e.contains("flavour") && e.contains("`c`"), "{e}");
        let f = [write(
            d.path(),
            "c2.yaml",
            "clouds:\n  c:\n    profile: vexxhost\n    auth: {auth_url: 'http://k'}\n",
        )];
        let e = load_from(Some("c"), &f, &[], &[]).unwrap_err().to_string();
        assert!(e.contains("profile"), "{e}");
    }
}
