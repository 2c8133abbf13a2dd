//! Reads a fedora-messaging config file (TOML), so that a farm can point at the same file the
//! `fedora-messaging` CLI uses: `amqp_url`, `[tls]`, `[[bindings]]`, `[queues]`,
//! `publish_exchange`, `topic_prefix`, `[qos]` and `[client_properties]`. Keys the farm does
//! not use (`callback`, `consumer_config`, `log_config`, …) are ignored, as the file is shared.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{AmqpConfig, AmqpTls, QueueMode};

/// The queue name fedora-messaging's sample configs use for "a fresh queue per consumer":
/// the CLI replaces it with a random uuid. Here it means a server-named queue.
pub const ZERO_UUID: &str = "00000000-0000-0000-0000-000000000000";

#[derive(Debug, Deserialize, Default)]
struct File {
    amqp_url: Option<String>,
    publish_exchange: Option<String>,
    topic_prefix: Option<String>,
    #[serde(default)]
    tls: Option<Tls>,
    #[serde(default)]
    bindings: Vec<Binding>,
    #[serde(default)]
    queues: BTreeMap<String, Queue>,
    #[serde(default)]
    qos: Option<Qos>,
    #[serde(default)]
    client_properties: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize)]
struct Tls {
    ca_cert: Option<PathBuf>,
    certfile: Option<PathBuf>,
    keyfile: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct Binding {
    queue: Option<String>,
    exchange: Option<String>,
    #[serde(default)]
    routing_keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Queue {
    #[serde(default)]
    durable: Option<bool>,
    #[serde(default)]
    auto_delete: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct Qos {
    prefetch_count: Option<u16>,
}

/// Fills what `amqp` leaves unset from the fedora-messaging file at `path` (relative paths
/// in the file are relative to the file). Errors name the file and the key.
pub fn apply(amqp: &mut AmqpConfig, path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let rel = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };

    if amqp.url.is_empty() {
        amqp.url = file.amqp_url.unwrap_or_default();
    }
    if amqp.tls.is_none()
        && let Some(t) = file.tls
    {
        amqp.tls = Some(AmqpTls {
            ca_cert: t.ca_cert.map(rel),
            certfile: t.certfile.map(rel),
            keyfile: t.keyfile.map(rel),
        });
    }
    if amqp.publish_exchange.is_none() {
        amqp.publish_exchange = file.publish_exchange;
    }
    if amqp.topic_prefix.is_none() {
        amqp.topic_prefix = file
            .topic_prefix
            .filter(|p| !p.is_empty())
            .map(|p| if p.ends_with('.') { p } else { format!("{p}.") });
    }
    if let Some(q) = file.qos.and_then(|q| q.prefetch_count) {
        // The YAML default is 64; a file's explicit value wins over that default only.
        if amqp.prefetch == 64 {
            amqp.prefetch = q.max(1);
        }
    }
    // The first queue of the file is the farm's (fedora-messaging consumers use one).
    if let Some((name, q)) = file.queues.iter().next() {
        let server_named = name == ZERO_UUID || q.auto_delete == Some(true);
        if amqp.queue_mode.is_none() {
            amqp.queue_mode = Some(if server_named {
                QueueMode::ServerNamed
            } else {
                QueueMode::Durable
            });
        }
        if amqp.queue.is_none() && !server_named {
            if q.durable == Some(false) {
                return Err(format!(
                    "{}: queues.{name}: durable = false with auto_delete = false is not a mode \
                     ferrotron has (durable named, or server-named auto-delete)",
                    path.display()
                ));
            }
            amqp.queue = Some(name.clone());
        }
    }
    let ours = |b: &Binding| match (&b.queue, file.queues.keys().next()) {
        (Some(q), Some(first)) => q == first,
        _ => true,
    };
    for b in file.bindings.iter().filter(|b| ours(b)) {
        if let Some(x) = &b.exchange
            && x != &amqp.exchange
        {
            if amqp.exchange == "amq.topic" {
                amqp.exchange = x.clone();
            } else {
                return Err(format!(
                    "{}: bindings: exchange `{x}` differs from bus.amqp.exchange `{}`",
                    path.display(),
                    amqp.exchange
                ));
            }
        }
        for k in &b.routing_keys {
            if !amqp.bindings.contains(k) {
                amqp.bindings.push(k.clone());
            }
        }
    }
    for (k, v) in file.client_properties {
        let v = match v {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => {
                return Err(format!(
                    "{}: client_properties.{k}: only strings, numbers and booleans are sent",
                    path.display()
                ));
            }
        };
        amqp.client_properties.entry(k).or_insert(v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FEDORA: &str = r##"
amqp_url = "amqps://fedora:@rabbitmq.fedoraproject.org/%2Fpublic_pubsub"
callback = "fedora_messaging.example:printer"
topic_prefix = "org.fedoraproject.prod"

[tls]
ca_cert = "cacert.pem"
keyfile = "fedora-key.pem"
certfile = "/etc/fedora-messaging/fedora-cert.pem"

[client_properties]
app = "Example Application"

[exchanges."amq.topic"]
type = "topic"
durable = true

[queues.00000000-0000-0000-0000-000000000000]
durable = false
auto_delete = true
exclusive = true
arguments = {}

[[bindings]]
queue = "00000000-0000-0000-0000-000000000000"
exchange = "amq.topic"
routing_keys = ["org.fedoraproject.prod.buildsys.build.state.change", "#.bodhi.#"]

[consumer_config]
a = 1

[qos]
prefetch_size = 0
prefetch_count = 25

[log_config]
version = 1
"##;

    #[test]
    fn reads_the_public_broker_config() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.toml");
        std::fs::write(&p, FEDORA).unwrap();
        let mut a = AmqpConfig::new("");
        apply(&mut a, &p).unwrap();
        assert_eq!(
            a.url,
            "amqps://fedora:@rabbitmq.fedoraproject.org/%2Fpublic_pubsub"
        );
        let tls = a.tls.clone().unwrap();
        assert_eq!(tls.ca_cert, Some(d.path().join("cacert.pem")));
        assert_eq!(tls.keyfile, Some(d.path().join("fedora-key.pem")));
        assert_eq!(
            tls.certfile,
            Some(PathBuf::from("/etc/fedora-messaging/fedora-cert.pem"))
        );
        assert_eq!(a.queue_mode(), QueueMode::ServerNamed);
        assert_eq!(a.bindings.len(), 2);
        assert_eq!(a.prefetch, 25);
        assert_eq!(a.client_properties["app"], "Example Application");
        assert_eq!(
            a.topic("resultsdb.result.new"),
            "org.fedoraproject.prod.resultsdb.result.new"
        );
    }

    #[test]
    fn yaml_settings_win_and_named_queues_are_durable() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.toml");
        std::fs::write(
            &p,
            "amqp_url = \"amqp://a\"\n[queues.farm]\ndurable = true\nauto_delete = false\n\
             [[bindings]]\nqueue = \"farm\"\nexchange = \"amq.topic\"\nrouting_keys = [\"x.y\"]\n\
             [[bindings]]\nqueue = \"other\"\nrouting_keys = [\"not.ours\"]\n",
        )
        .unwrap();
        let mut a = AmqpConfig::new("amqp://mine");
        apply(&mut a, &p).unwrap();
        assert_eq!(a.url, "amqp://mine");
        assert_eq!(a.queue(), "farm");
        assert_eq!(a.queue_mode(), QueueMode::Durable);
        assert_eq!(a.bindings, vec!["x.y".to_string()]);

        std::fs::write(&p, "amqp_url = 3\n").unwrap();
        let e = apply(&mut AmqpConfig::new(""), &p).unwrap_err();
        assert!(e.contains("c.toml") && e.contains("amqp_url"), "{e}");
    }
}
