//! AMQP 0-9-1 through `lapin`, compatible with fedora-messaging.
//!
//! In: a durable queue bound to the topic exchange (`amq.topic`) with the rules' topics,
//! prefetch-limited, manual acknowledgement **only after the handler answered** (the jobs
//! are committed), so a crash or a broker restart redelivers instead of losing; the message
//! id de-duplicates what was committed but not yet acknowledged. Malformed and oversized
//! messages are logged, acknowledged and dropped. The connection is re-established with
//! exponential backoff and jitter.
//!
//! Out: result messages in fedora-messaging form: JSON body, `message_id` property, headers
//! `fedora_messaging_schema`, `sent-at`, `priority`, `fedora_messaging_severity`; persistent,
//! with publisher confirms.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

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
use crate::config::AmqpConfig;
use crate::metrics::Metrics;

/// The schema header of result messages: fedora-messaging's base message class, which every
/// consumer can read without installing a schema package.
pub const RESULT_SCHEMA: &str = "base.message";

#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("AMQP broker {url}: {source}")]
    Broker {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error("AMQP broker {url}: {message}")]
    Closed { url: String, message: String },
}

/// The URL with its password hidden, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
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
        |source| AmqpError::Broker {
            url: redact(&self.cfg.url),
            source,
        }
    }

    async fn session(
        &self,
        stop: &mut watch::Receiver<bool>,
        connected: &mut bool,
    ) -> Result<(), AmqpError> {
        let conn = Connection::connect(
            &self.cfg.url,
            ConnectionProperties::default().with_connection_name("ferrotron consumer".into()),
        )
        .await
        .map_err(self.err())?;
        let ch = conn.create_channel().await.map_err(self.err())?;
        ch.basic_qos(self.cfg.prefetch.max(1), BasicQosOptions::default())
            .await
            .map_err(self.err())?;
        ch.queue_declare(
            self.cfg.queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(self.err())?;
        for key in &self.bindings {
            ch.queue_bind(
                self.cfg.queue.as_str().into(),
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
                self.cfg.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(self.err())?;
        *connected = true;
        tracing::info!(
            queue = %self.cfg.queue,
            bindings = self.bindings.len(),
            "consuming from {}",
            redact(&self.cfg.url)
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
                    Some(Ok(Some(delivery))) => self.process(delivery, stop).await?,
                    Some(Ok(None)) | None => {
                        return Err(AmqpError::Closed {
                            url: redact(&self.cfg.url),
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
                            url: redact(&self.cfg.url),
                            message: "connection lost".into(),
                        });
                    }
                    let q = probe.queue_declare(
                        self.cfg.queue.as_str().into(),
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
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), AmqpError> {
        let source = format!("AMQP queue {}", self.cfg.queue);
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
                        Ok(_) => break,
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

/// A message to publish: routing key and JSON body.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: String,
    pub body: Value,
}

/// The fedora-messaging properties of an outgoing message.
pub fn fedora_properties(id: &str, sent_at: OffsetDateTime) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "fedora_messaging_schema".into(),
        AMQPValue::LongString(RESULT_SCHEMA.into()),
    );
    let sent = sent_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    headers.insert("sent-at".into(), AMQPValue::LongString(sent.into()));
    headers.insert("priority".into(), AMQPValue::LongInt(0));
    headers.insert("fedora_messaging_severity".into(), AMQPValue::LongInt(20));
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_message_id(id.into())
        .with_headers(headers)
}

/// Publishes what arrives on `rx` to the exchange, with confirms, reconnecting as needed.
/// A message is retried until the broker confirms it or `stop` turns true; on stop, what is
/// queued gets a few seconds to go out.
pub async fn publisher(
    cfg: AmqpConfig,
    mut rx: mpsc::Receiver<Outgoing>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let url = redact(&cfg.url);
    let mut channel: Option<(Connection, lapin::Channel)> = None;
    let mut delay = Duration::from_millis(500);
    let max = Duration::from_secs(cfg.reconnect_max_s.max(1));
    let mut stopping = false;
    loop {
        let next = if stopping {
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap_or_default()
        } else {
            tokio::select! {
                m = rx.recv() => m,
                _ = stop.changed() => { stopping = true; continue; }
            }
        };
        let Some(out) = next else { break };
        let payload = serde_json::to_vec(&out.body).unwrap_or_default();
        let id = uuid::Uuid::new_v4().to_string();
        let mut tries = 0u32;
        loop {
            tries += 1;
            if channel.is_none() {
                match open_publisher(&cfg.url).await {
                    Ok(c) => {
                        channel = Some(c);
                        delay = Duration::from_millis(500);
                    }
                    Err(e) => tracing::warn!("AMQP broker {url}: publisher cannot connect: {e}"),
                }
            }
            let sent = match &channel {
                Some((_, ch)) => {
                    match ch
                        .basic_publish(
                            cfg.exchange.as_str().into(),
                            out.topic.as_str().into(),
                            BasicPublishOptions::default(),
                            &payload,
                            fedora_properties(&id, OffsetDateTime::now_utc()),
                        )
                        .await
                    {
                        Ok(confirm) => match confirm.await {
                            Ok(Confirmation::Ack(_)) | Ok(Confirmation::NotRequested) => Ok(()),
                            Ok(Confirmation::Nack(_)) => Err("the broker refused it".to_string()),
                            Err(e) => Err(e.to_string()),
                        },
                        Err(e) => Err(e.to_string()),
                    }
                }
                None => Err("not connected".to_string()),
            };
            match sent {
                Ok(()) => {
                    metrics.results_published.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    channel = None;
                    if stopping || tries >= 20 {
                        metrics
                            .results_publish_failed
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            "AMQP broker {url}: result message on {} dropped: {e}",
                            out.topic
                        );
                        break;
                    }
                    tracing::warn!(
                        "AMQP broker {url}: publishing on {}: {e}; retrying",
                        out.topic
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(jittered(delay)) => {}
                        _ = stop.changed() => { stopping = true; }
                    }
                    delay = (delay * 2).min(max);
                }
            }
        }
    }
    if let Some((conn, _)) = channel {
        let _ = conn.close(200, "ferrotron is shutting down".into()).await;
    }
}

async fn open_publisher(url: &str) -> Result<(Connection, lapin::Channel), lapin::Error> {
    let conn = Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name("ferrotron publisher".into()),
    )
    .await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok((conn, ch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("amqp://guest:secret@h:5672/%2f"),
            "amqp://guest:***@h:5672/%2f"
        );
        assert_eq!(redact("amqp://h/%2f"), "amqp://h/%2f");
    }

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
