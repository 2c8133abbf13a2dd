//! Message sources and result publishing.
//!
//! Every source (AMQP in [`amqp`], the HTTP webhook in `serve::http`, a file in
//! `ferrotron rules test`) produces a [`Message`] and hands it to a [`MessageHandler`]; the
//! bus knows nothing of rules or the store. The webhook envelope `{topic, body, headers?,
//! id?}` is the one JSON form of a message outside AMQP.

pub mod amqp;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

/// Longest message id accepted.
pub const MAX_ID: usize = 255;

/// One message from any source.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The sender's id (AMQP `message_id`), the key of de-duplication.
    pub id: Option<String>,
    pub topic: String,
    pub body: Value,
    pub headers: Map<String, Value>,
    pub received_at: OffsetDateTime,
    /// The `sent-at` header, when present and readable.
    pub sent_at: Option<OffsetDateTime>,
}

/// The webhook's (and `rules test`'s) JSON form of a message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub topic: String,
    pub body: Value,
    #[serde(default)]
    pub headers: Option<Map<String, Value>>,
    #[serde(default)]
    pub id: Option<String>,
}

/// Why a message was refused (it is acknowledged all the same: it will never get better).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("body of {size} bytes is larger than the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("{0}")]
    Invalid(String),
}

/// Longest topic accepted (AMQP's short string limit); rules' topic patterns share it.
pub const MAX_TOPIC: usize = 255;

/// Checks a topic: 1–255 bytes of printable text without spaces, words separated by dots.
pub fn check_topic(topic: &str) -> Result<(), Rejected> {
    if topic.is_empty() || topic.len() > MAX_TOPIC {
        return Err(Rejected::Invalid(format!(
            "topic must have 1 to {} bytes (got {})",
            MAX_TOPIC,
            topic.len()
        )));
    }
    if topic.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Rejected::Invalid(format!(
            "topic `{}` contains spaces or control characters",
            topic.escape_debug()
        )));
    }
    Ok(())
}

fn check_id(id: &str) -> Result<(), Rejected> {
    if id.is_empty() || id.len() > MAX_ID || id.chars().any(char::is_control) {
        return Err(Rejected::Invalid(format!(
            "message id must have 1 to {MAX_ID} printable characters"
        )));
    }
    Ok(())
}

/// Reads the `sent-at` header (ISO 8601, as fedora-messaging writes it).
pub fn parse_sent_at(headers: &Map<String, Value>) -> Option<OffsetDateTime> {
    let s = headers.get("sent-at")?.as_str()?;
    OffsetDateTime::parse(s, &time::format_description::well_known::Iso8601::DEFAULT).ok()
}

impl Message {
    /// A message from its parts, checked (topic, id, body size of `raw_len`).
    pub fn new(
        id: Option<String>,
        topic: String,
        body: Value,
        headers: Map<String, Value>,
    ) -> Result<Message, Rejected> {
        check_topic(&topic)?;
        if let Some(id) = &id {
            check_id(id)?;
        }
        let sent_at = parse_sent_at(&headers);
        Ok(Message {
            id,
            topic,
            body,
            headers,
            received_at: OffsetDateTime::now_utc(),
            sent_at,
        })
    }

    /// Parses a webhook envelope of at most `limit` bytes.
    pub fn from_envelope_bytes(bytes: &[u8], limit: usize) -> Result<Message, Rejected> {
        if bytes.len() > limit {
            return Err(Rejected::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        let env: Envelope =
            serde_json::from_slice(bytes).map_err(|e| Rejected::NotJson(e.to_string()))?;
        Message::new(env.id, env.topic, env.body, env.headers.unwrap_or_default())
    }
}

/// What a handler did with a message.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Handled {
    /// The message id was seen before; nothing was created.
    pub duplicate: bool,
    /// Uuids of the jobs created (empty: no rule matched).
    pub jobs: Vec<uuid::Uuid>,
}

/// Failure to handle a message.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Nothing was committed; the same message may be retried (the store is unreachable).
    #[error("{0}")]
    Retry(String),
    /// The message can never be accepted (it asks for too much): nothing was committed, and
    /// the source acknowledges it all the same.
    #[error("{0}")]
    Refused(String),
}

/// Where sources deliver messages. An `Ok` answer means the outcome is committed: the
/// source may acknowledge the message.
#[async_trait]
pub trait MessageHandler: Send + Sync {
    async fn handle(&self, msg: &Message) -> Result<Handled, HandleError>;
    /// A message that never reached `handle` (malformed, too large).
    fn rejected(&self, source: &str, why: &Rejected);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_are_checked() {
        let m = Message::from_envelope_bytes(
            br#"{"topic":"a.b","body":{"x":1},"id":"m1","headers":{"sent-at":"2026-11-27T10:00:00+00:00"}}"#,
            1000,
        )
        .unwrap();
        assert_eq!(m.topic, "a.b");
        assert_eq!(m.id.as_deref(), Some("m1"));
        assert!(m.sent_at.is_some());
        assert!(matches!(
            Message::from_envelope_bytes(b"{", 1000),
            Err(Rejected::NotJson(_))
        ));
        assert!(matches!(
            Message::from_envelope_bytes(&[b' '; 2000], 1000),
            Err(Rejected::TooLarge { .. })
        ));
        assert!(matches!(
            Message::from_envelope_bytes(br#"{"topic":"a b","body":1}"#, 1000),
            Err(Rejected::Invalid(_))
        ));
        assert!(
            Message::from_envelope_bytes(br#"{"topic":"a","body":1,"extra":2}"#, 1000).is_err()
        );
    }
}
