//! Decoding a pub/sub payload: the kombu envelope, its (usually base64)
//! body, and the event object or `task.multi` list inside.

use base64::Engine;
use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum DecodeError {
    #[error("envelope is not JSON: {0}")]
    Envelope(String),
    #[error("body is not valid base64")]
    Base64,
    #[error("body is not a JSON event or list of events: {0}")]
    Body(String),
}

/// Why a message was not used, when it was not malformed.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Events(Vec<Event>),
    /// A serializer other than JSON (msgpack, yaml, pickle).
    Unsupported(String),
}

#[derive(Deserialize)]
struct Envelope {
    body: String,
    #[serde(rename = "content-type", default)]
    content_type: Option<String>,
    #[serde(default)]
    properties: Option<Properties>,
}

#[derive(Deserialize)]
struct Properties {
    #[serde(default)]
    body_encoding: Option<String>,
}

/// The fields of a Celery event the exporter uses; others are ignored.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default)]
    pub timestamp: Option<f64>,
    #[serde(default)]
    pub runtime: Option<f64>,
    #[serde(default)]
    pub freq: Option<f64>,
    #[serde(default)]
    pub active: Option<f64>,
}

/// Decodes one pub/sub payload: the kombu envelope, its (usually base64)
/// body, and the event object or `task.multi` list inside.
pub fn decode(payload: &[u8]) -> Result<Decoded, DecodeError> {
    let envelope: Envelope =
        serde_json::from_slice(payload).map_err(|e| DecodeError::Envelope(e.to_string()))?;
    if let Some(ct) = envelope.content_type.as_deref() {
        if ct != "application/json" {
            return Ok(Decoded::Unsupported(ct.to_owned()));
        }
    }
    let base64 = envelope.properties.and_then(|p| p.body_encoding).as_deref() == Some("base64");
    let raw: Vec<u8> = if base64 {
        base64::engine::general_purpose::STANDARD
            .decode(envelope.body.as_bytes())
            .map_err(|_| DecodeError::Base64)?
    } else {
        envelope.body.into_bytes()
    };
    let first = raw.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let events = match first {
        Some(b'[') => serde_json::from_slice::<Vec<Event>>(&raw),
        _ => serde_json::from_slice::<Event>(&raw).map(|e| vec![e]),
    }
    .map_err(|e| DecodeError::Body(e.to_string()))?;
    Ok(Decoded::Events(events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::celery::test_support::{events, fixture};

    #[test]
    fn decodes_every_event_fixture() {
        let index: serde_json::Value = serde_json::from_slice(&fixture("index.json")).unwrap();
        let mut checked = 0;
        for entry in index.as_array().unwrap() {
            let file = entry["file"].as_str().unwrap();
            if !file.starts_with("event-") {
                continue;
            }
            let expected: Vec<String> = entry["event_types_in_body"]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default();
            let got: Vec<String> = events(file).into_iter().map(|e| e.kind).collect();
            let mut got_set = got.clone();
            got_set.sort();
            got_set.dedup();
            let mut expected_set = expected.clone();
            expected_set.sort();
            expected_set.dedup();
            assert_eq!(got_set, expected_set, "{file}");
            checked += 1;
        }
        let files = std::fs::read_dir(format!(
            "{}/tests/fixtures/celery",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("event-")
        })
        .count();
        assert_eq!(
            checked, files,
            "every event fixture is listed in index.json and checked"
        );
    }

    #[test]
    fn batched_and_single_shapes() {
        let batch = events("event-task-multi-batch.json");
        assert_eq!(batch.len(), 3);
        assert_eq!(batch[0].kind, "task-received");
        assert_eq!(batch[0].name.as_deref(), Some("tasks.add"));
        let single = events("event-unbatched-task-received.json");
        assert_eq!(single.len(), 1);
        let sent = events("event-task-sent.json");
        assert_eq!(sent[0].queue.as_deref(), Some("notifications"));
        assert_eq!(sent[0].name.as_deref(), Some("tasks.notify"));
        let prefixed = events("event-task-multi-prefixed-db5.json");
        assert!(!prefixed.is_empty());
    }

    #[test]
    fn wakeup_heartbeat_has_no_active() {
        let e = events("event-worker-heartbeat-wakeup.json").remove(0);
        assert_eq!(e.kind, "worker-heartbeat");
        assert_eq!(e.active, None);
        assert_eq!(e.freq, Some(5.0));
        let regular = events("event-worker-heartbeat.json").remove(0);
        assert_eq!(regular.freq, Some(2.0));
        assert!(regular.active.is_some());
    }

    #[test]
    fn malformed_and_unsupported() {
        assert!(matches!(decode(b"not json"), Err(DecodeError::Envelope(_))));
        assert!(matches!(
            decode(br#"{"body": "!!!", "properties": {"body_encoding": "base64"}}"#),
            Err(DecodeError::Base64)
        ));
        assert!(matches!(
            decode(br#"{"body": "bm9wZQ==", "properties": {"body_encoding": "base64"}}"#),
            Err(DecodeError::Body(_))
        ));
        assert_eq!(
            decode(br#"{"body": "x", "content-type": "application/x-msgpack"}"#),
            Ok(Decoded::Unsupported("application/x-msgpack".into()))
        );
        // body_encoding other than base64: the body is the JSON text itself.
        let plain = br#"{"body": "{\"type\": \"worker-heartbeat\", \"hostname\": \"h\", \"freq\": 2.0, \"active\": 1}", "content-type": "application/json", "properties": {}}"#;
        assert!(matches!(decode(plain), Ok(Decoded::Events(e)) if e[0].active == Some(1.0)));
    }
}
