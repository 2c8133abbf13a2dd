//! AMQP 0-9-1 through `lapin`, compatible with fedora-messaging.
//!
//! Connecting ([`connect`]): `amqp://` or `amqps://` with the server's certificate verified
//! (system roots plus `tls.ca_cert`), a client certificate when configured, SASL EXTERNAL
//! when the URL has no password, client properties naming the application.
//!
//! In: a durable named queue, or a server-named auto-delete one (fedora-messaging's two
//! kinds), declared and bound to the topic exchange with the rules' topics on every
//! connection; prefetch-limited, manual acknowledgement **only after the handler answered**
//! (the jobs are committed), so a crash or a broker restart redelivers instead of losing; the
//! message id de-duplicates what was committed but not yet acknowledged. Malformed and
//! oversized messages are logged, acknowledged and dropped. The connection is re-established
//! with exponential backoff and jitter.
//!
//! Body sizes: lapin assembles a delivery's body before handing it over and offers no hook
//! on the content header's declared size, so an oversized body is refused right after it
//! arrived, before any parsing or copy. What one connection can hold is bounded by
//! `prefetch` times the broker's `max_message_size` (set that on the broker: RabbitMQ's
//! default is 128 MiB).
//!
//! Out: [`Publisher`] sends messages in fedora-messaging form ([`fedora_properties`]),
//! persistent, with publisher confirms. What to send comes from the store's outbox (see
//! `serve::announce`), never from memory.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::util::redact_url;

use lapin::message::{Delivery, DeliveryResult};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};

use super::{HandleError, Message, MessageHandler, Rejected};
use crate::config::{AmqpConfig, QueueMode};
use crate::metrics::Metrics;

/// The schema header of result messages: fedora-messaging's base message class, which every
/// consumer can read without installing a schema package.
pub const RESULT_SCHEMA: &str = "base.message";

#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("AMQP broker {url}: {source}{hint}")]
    Broker {
        url: String,
        #[source]
        source: Box<lapin::Error>,
        /// What the operator may have to change, when the cause is recognisable.
        hint: String,
    },
    #[error("AMQP broker {url}: {message}")]
    Closed { url: String, message: String },
    #[error("bus.amqp: {0}")]
    Config(String),
}

/// Whether the URL carries a password (`user:pass@`); `user@`, `user:@` and no user at all
/// do not, and then a client certificate authenticates (SASL EXTERNAL).
fn has_password(url: &str) -> bool {
    let Some(rest) = url.split_once("://").map(|(_, r)| r) else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => userinfo.split_once(':').is_some_and(|(_, p)| !p.is_empty()),
        None => false,
    }
}

fn err(cfg: &AmqpConfig) -> impl Fn(lapin::Error) -> AmqpError + '_ {
    move |source| {
        let text = format!("{source:?}").to_ascii_lowercase();
        let tls = cfg.url.starts_with("amqps://");
        let has_cert = cfg.tls.as_ref().is_some_and(|t| t.certfile.is_some());
        let hint = if tls
            && !has_cert
            && (text.contains("certificaterequired")
                || text.contains("handshake")
                || text.contains("alert"))
        {
            " (the broker wants a client certificate: set bus.amqp.tls.certfile and keyfile)"
                .to_string()
        } else if tls
            && (text.contains("unknownissuer") || text.contains("invalid peer certificate"))
        {
            " (the broker's certificate is not signed by a trusted CA: set bus.amqp.tls.ca_cert)"
                .to_string()
        } else {
            String::new()
        };
        AmqpError::Broker {
            url: redact_url(&cfg.url),
            source: Box::new(source),
            hint,
        }
    }
}

fn read_file(key: &str, path: &std::path::Path) -> Result<Vec<u8>, AmqpError> {
    std::fs::read(path)
        .map_err(|e| AmqpError::Config(format!("tls.{key}: {}: {e}", path.display())))
}

/// Connects as fedora-messaging does: TLS with the server verified (the system's roots plus
/// `tls.ca_cert`), the client certificate when given, SASL EXTERNAL when the URL has no
/// password and a certificate is given, and client properties naming the application.
pub async fn connect(cfg: &AmqpConfig, role: &str) -> Result<Connection, AmqpError> {
    use std::str::FromStr;
    let mut uri = lapin::uri::AMQPUri::from_str(&cfg.url)
        .map_err(|e| AmqpError::Config(format!("url `{}`: {e}", redact_url(&cfg.url))))?;
    let mut tls = lapin::tcp::OwnedTLSConfig::default();
    if let Some(t) = &cfg.tls {
        if let Some(ca) = &t.ca_cert {
            let pem = read_file("ca_cert", ca)?;
            tls.cert_chain = Some(String::from_utf8_lossy(&pem).into_owned());
        }
        if let (Some(cert), Some(key)) = (&t.certfile, &t.keyfile) {
            tls.identity = Some(lapin::tcp::OwnedIdentity::PKCS8 {
                pem: read_file("certfile", cert)?,
                key: read_file("keyfile", key)?,
            });
            if !has_password(&cfg.url) {
                uri.query.auth_mechanism = Some(lapin::uri::SASLMechanism::External);
            }
        }
    }
    let mut props = ConnectionProperties::default()
        .with_connection_name(format!("ferrotron {role}").into())
        .with_client_property("app".into(), "ferrotron".into())
        .with_client_property("version".into(), env!("CARGO_PKG_VERSION").into());
    for (k, v) in &cfg.client_properties {
        props = props.with_client_property(k.as_str().into(), v.as_str().into());
    }
    let builder = lapin::DefaultConnectionBuilder::new().map_err(err(cfg))?;
    builder
        .with_uri(uri)
        .with_properties(props)
        .with_tls_config(tls)
        .connect()
        .await
        .map_err(err(cfg))
}

fn jittered(d: Duration) -> Duration {
    use rand::RngExt;
    d.mul_f64(rand::rng().random_range(0.5..1.5))
}

/// Consumes the farm's queue and hands each message to `handler`.
pub struct Consumer {
    pub cfg: AmqpConfig,
    /// Routing keys to bind (the rules' topics and the configured extra bindings).
    pub bindings: Vec<String>,
    pub max_body: usize,
    pub handler: Arc<dyn MessageHandler>,
    pub metrics: Arc<Metrics>,
}

impl Consumer {
    /// Runs until `stop` turns true, reconnecting with backoff whenever the connection is
    /// lost. Unacknowledged messages go back to the queue when a connection ends.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let max = Duration::from_secs(self.cfg.reconnect_max_s.max(1));
        let mut delay = Duration::from_millis(500);
        loop {
            if *stop.borrow() {
                return;
            }
            let mut connected = false;
            match self.session(&mut stop, &mut connected).await {
                Ok(()) => return,
                Err(e) => {
                    if connected {
                        delay = Duration::from_millis(500);
                    }
                    self.metrics.bus_reconnects.fetch_add(1, Ordering::Relaxed);
                    let wait = jittered(delay);
                    tracing::warn!("{e}; reconnecting in {:.1}s", wait.as_secs_f64());
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => return,
                    }
                    delay = (delay * 2).min(max);
                }
            }
        }
    }

    fn err(&self) -> impl Fn(lapin::Error) -> AmqpError + '_ {
        err(&self.cfg)
    }

    async fn session(
        &self,
        stop: &mut watch::Receiver<bool>,
        connected: &mut bool,
    ) -> Result<(), AmqpError> {
        let conn = connect(&self.cfg, "consumer").await?;
        let ch = conn.create_channel().await.map_err(self.err())?;
        ch.basic_qos(self.cfg.prefetch.max(1), BasicQosOptions::default())
            .await
            .map_err(self.err())?;
        // Declared on every (re)connection: a server-named queue died with the previous
        // connection and comes back under a new name, with its bindings.
        let (name, options) = match self.cfg.queue_mode() {
            QueueMode::Durable => (
                self.cfg.queue().to_string(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
            ),
            QueueMode::ServerNamed => (
                String::new(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
            ),
        };
        let declared = ch
            .queue_declare(name.as_str().into(), options, FieldTable::default())
            .await
            .map_err(self.err())?;
        let queue = declared.name().to_string();
        for key in &self.bindings {
            ch.queue_bind(
                queue.as_str().into(),
                self.cfg.exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(self.err())?;
        }
        let consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(self.err())?;
        *connected = true;
        tracing::info!(
            queue = %queue,
            bindings = self.bindings.len(),
            "consuming from {}",
            redact_url(&self.cfg.url)
        );
        let (tx, mut rx) =
            mpsc::channel::<DeliveryResult>(usize::from(self.cfg.prefetch.max(1)) + 1);
        consumer.set_delegate(move |d: DeliveryResult| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(d).await;
            }
        });
        // A second channel for the queue-depth gauge, so a failing passive declare cannot
        // close the consuming channel.
        let probe = conn.create_channel().await.map_err(self.err())?;
        let mut lag = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                d = rx.recv() => match d {
                    Some(Ok(Some(delivery))) => self.process(delivery, &queue, stop).await?,
                    Some(Ok(None)) | None => {
                        return Err(AmqpError::Closed {
                            url: redact_url(&self.cfg.url),
                            message: "the broker cancelled the consumer".into(),
                        });
                    }
                    Some(Err(e)) => return Err(self.err()(e)),
                },
                _ = lag.tick() => {
                    // A broker that stops (or restarts) closes the connection; the
                    // consumer is not always told, so look.
                    if !conn.status().connected() || !ch.status().connected() {
                        return Err(AmqpError::Closed {
                            url: redact_url(&self.cfg.url),
                            message: "connection lost".into(),
                        });
                    }
                    let q = probe.queue_declare(
                        queue.as_str().into(),
                        QueueDeclareOptions { passive: true, ..Default::default() },
                        FieldTable::default(),
                    ).await;
                    match q {
                        Ok(q) => self.metrics.bus_queue_ready.store(i64::from(q.message_count()), Ordering::Relaxed),
                        Err(e) => return Err(self.err()(e)),
                    }
                }
                _ = stop.changed() => {
                    let _ = conn.close(200, "ferrotron is shutting down".into()).await;
                    return Ok(());
                }
            }
        }
    }

    /// Handles one delivery and acknowledges it once its outcome is committed (or once it
    /// is known never to be acceptable).
    async fn process(
        &self,
        delivery: Delivery,
        queue: &str,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), AmqpError> {
        let source = format!("AMQP queue {queue}");
        match self.parse(&delivery) {
            Err(why) => self.handler.rejected(&source, &why),
            Ok(msg) => {
                if let Some(sent) = msg.sent_at {
                    let lag = (msg.received_at - sent).whole_milliseconds();
                    self.metrics
                        .bus_lag_ms
                        .store(lag.clamp(0, i64::MAX as i128) as i64, Ordering::Relaxed);
                }
                let mut wait = Duration::from_millis(200);
                loop {
                    match self.handler.handle(&msg).await {
                        // Refused: logged by the handler; acknowledged, it cannot get better.
                        Ok(_) | Err(HandleError::Refused(_)) => break,
                        Err(HandleError::Retry(e)) => {
                            tracing::warn!(
                                "message {:?} on {}: {e}; retrying in {:.1}s (not acknowledged)",
                                msg.id,
                                msg.topic,
                                wait.as_secs_f64()
                            );
                            tokio::select! {
                                _ = tokio::time::sleep(jittered(wait)) => {}
                                // Not acknowledged: the broker redelivers it later.
                                _ = stop.changed() => return Ok(()),
                            }
                            wait = (wait * 2).min(Duration::from_secs(30));
                        }
                    }
                }
            }
        }
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(self.err())?;
        Ok(())
    }

    fn parse(&self, d: &Delivery) -> Result<Message, Rejected> {
        if d.data.len() > self.max_body {
            return Err(Rejected::TooLarge {
                size: d.data.len(),
                limit: self.max_body,
            });
        }
        let body: Value =
            serde_json::from_slice(&d.data).map_err(|e| Rejected::NotJson(e.to_string()))?;
        let headers = d
            .properties
            .headers()
            .as_ref()
            .map(table_to_json)
            .unwrap_or_default();
        let id = d.properties.message_id().as_ref().map(|s| s.to_string());
        Message::new(id, d.routing_key.to_string(), body, headers)
    }
}

fn table_to_json(t: &FieldTable) -> Map<String, Value> {
    t.inner()
        .iter()
        .map(|(k, v)| (k.to_string(), amqp_to_json(v)))
        .collect()
}

fn amqp_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => (*i).into(),
        AMQPValue::ShortShortUInt(i) => (*i).into(),
        AMQPValue::ShortInt(i) => (*i).into(),
        AMQPValue::ShortUInt(i) => (*i).into(),
        AMQPValue::LongInt(i) => (*i).into(),
        AMQPValue::LongUInt(i) => (*i).into(),
        AMQPValue::LongLongInt(i) => (*i).into(),
        AMQPValue::Timestamp(i) => (*i).into(),
        AMQPValue::Float(f) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number)
        }
        AMQPValue::Double(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::ShortString(s) => Value::String(s.to_string()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_to_json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(table_to_json(t)),
        AMQPValue::Void => Value::Null,
        other => Value::String(format!("{other:?}")),
    }
}

/// The fedora-messaging properties of an outgoing message: JSON in UTF-8, persistent, the
/// message id, priority 0 (property and header, as fedora-messaging mirrors it), headers
/// `fedora_messaging_schema` (the base message class, which every consumer can load without
/// a schema package), `sent-at` in UTC with an offset and whole seconds,
/// `fedora_messaging_severity` (INFO) and one `fedora_messaging_rpm_NAME` filter header per
/// package the message is about.
pub fn fedora_properties(
    id: &str,
    sent_at: OffsetDateTime,
    packages: &[String],
) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "fedora_messaging_schema".into(),
        AMQPValue::LongString(RESULT_SCHEMA.into()),
    );
    headers.insert(
        "sent-at".into(),
        AMQPValue::LongString(sent_at_header(sent_at).into()),
    );
    headers.insert("priority".into(), AMQPValue::LongInt(0));
    headers.insert("fedora_messaging_severity".into(), AMQPValue::LongInt(20));
    for p in packages {
        headers.insert(
            format!("fedora_messaging_rpm_{p}").into(),
            AMQPValue::Boolean(true),
        );
    }
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_priority(0)
        .with_message_id(id.into())
        .with_headers(headers)
}

/// `2026-12-03T12:00:00+00:00`: what fedora-messaging writes (Python's `isoformat()` of an
/// aware UTC time without microseconds).
pub fn sent_at_header(t: OffsetDateTime) -> String {
    let f =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]+00:00");
    t.to_offset(time::UtcOffset::UTC)
        .format(&f)
        .unwrap_or_default()
}

/// The package of a Koji build NVR (`bash-5.2.26-1.fc41` → `bash`), for the filter header;
/// `None` when the item is not an NVR or the name would not make a sane header key.
pub fn nvr_package(nvr: &str) -> Option<String> {
    let mut parts = nvr.rsplitn(3, '-');
    let (_release, _version, name) = (parts.next()?, parts.next()?, parts.next()?);
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._".contains(&b));
    ok.then(|| name.to_string())
}

/// Publishes to the exchange with publisher confirms, connecting (and reconnecting) lazily.
pub struct Publisher {
    cfg: AmqpConfig,
    channel: Option<(Connection, lapin::Channel)>,
}

impl Publisher {
    pub fn new(cfg: AmqpConfig) -> Publisher {
        Publisher { cfg, channel: None }
    }

    /// Sends one message and waits for the broker's confirmation. On any failure the
    /// connection is dropped (the next send reconnects) and the error says why.
    pub async fn send(
        &mut self,
        topic: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), AmqpError> {
        if self.channel.is_none() {
            let conn = connect(&self.cfg, "publisher").await?;
            let ch = conn.create_channel().await.map_err(err(&self.cfg))?;
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(err(&self.cfg))?;
            self.channel = Some((conn, ch));
        }
        let (_, ch) = self.channel.as_ref().expect("just connected");
        let sent = async {
            let confirm = ch
                .basic_publish(
                    self.cfg.publish_exchange().into(),
                    topic.into(),
                    BasicPublishOptions::default(),
                    body,
                    props,
                )
                .await?;
            confirm.await
        }
        .await;
        let refused = |message: String| AmqpError::Closed {
            url: redact_url(&self.cfg.url),
            message,
        };
        let outcome = match sent {
            Ok(Confirmation::Ack(_)) | Ok(Confirmation::NotRequested) => Ok(()),
            Ok(Confirmation::Nack(_)) => Err(refused("the broker refused the message".into())),
            Err(e) => Err(refused(format!(
                "publishing to exchange `{}`: {e}",
                self.cfg.publish_exchange()
            ))),
        };
        if outcome.is_err() {
            self.close().await;
        }
        outcome
    }

    pub async fn close(&mut self) {
        if let Some((conn, _)) = self.channel.take() {
            let _ = conn.close(200, "ferrotron is shutting down".into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_become_json() {
        let mut t = FieldTable::default();
        t.insert(
            "sent-at".into(),
            AMQPValue::LongString("2026-01-01T00:00:00+00:00".into()),
        );
        t.insert("priority".into(), AMQPValue::LongInt(3));
        let j = table_to_json(&t);
        assert_eq!(j["priority"], 3);
        assert!(super::super::parse_sent_at(&j).is_some());
    }
}
