//! Events as JSON, in the shape of CNCF distribution's notifications, so
//! that receivers written for it read Berth's: the envelope
//! `{"events": [...]}` with `id`, `timestamp`, `action`, `target`,
//! `request`, `actor` and `source` per event.

use serde::Serialize;

use crate::registry::events::Event;

/// The media type of an envelope (distribution's).
pub const ENVELOPE_MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";

/// Which Berth process saw the event.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    /// The address the process listens on.
    pub addr: String,
    /// Unique per process start.
    #[serde(rename = "instanceID")]
    pub instance_id: String,
}

#[derive(Serialize)]
struct EventJson<'a> {
    id: String,
    timestamp: String,
    action: &'static str,
    target: TargetJson<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<RequestJson<'a>>,
    actor: ActorJson<'a>,
    source: &'a Source,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TargetJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    media_type: Option<&'a str>,
    digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    /// distribution sends the size twice, as `size` and `length`.
    #[serde(skip_serializing_if = "Option::is_none")]
    length: Option<u64>,
    repository: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
}

#[derive(Serialize)]
struct RequestJson<'a> {
    id: &'a str,
    addr: &'a str,
    host: &'a str,
    method: &'a str,
    useragent: &'a str,
}

#[derive(Serialize)]
struct ActorJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

/// The event as one element of an envelope's `events`, with a new id.
pub fn render(event: &Event, source: &Source) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(event.at_ms).unwrap_or(0));
    let target = &event.target;
    let json = EventJson {
        id: uuid::Uuid::new_v4().to_string(),
        timestamp: humantime::format_rfc3339_millis(at).to_string(),
        action: event.action.as_str(),
        target: TargetJson {
            media_type: target.media_type.as_deref(),
            digest: target.digest.to_string(),
            size: target.size,
            length: target.size,
            repository: &target.repository,
            tag: target.tag.as_deref(),
        },
        request: event.request.as_deref().map(|r| RequestJson {
            id: &r.id,
            addr: &r.addr,
            host: &r.host,
            method: &r.method,
            useragent: &r.user_agent,
        }),
        actor: ActorJson {
            name: event.actor.as_deref(),
        },
        source,
    };
    serde_json::to_string(&json).unwrap_or_default()
}

/// An envelope of events already rendered, in order.
pub fn envelope<'a>(events: impl Iterator<Item = &'a str>) -> String {
    let mut body = String::from(r#"{"events":["#);
    for (n, event) in events.enumerate() {
        if n > 0 {
            body.push(',');
        }
        // Each event is JSON written by `render`; the queue keeps it as is.
        body.push_str(event);
    }
    body.push_str("]}");
    body
}

#[cfg(test)]
mod tests {
    use berth_oci::Digest;

    use super::*;
    use crate::registry::events::{Action, Target};

    #[test]
    fn an_envelope_holds_the_events_in_distributions_shape() {
        let event = Event {
            action: Action::Push,
            target: Target {
                repository: "team/app".into(),
                digest: Digest::sha256_of(b"m"),
                media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
                size: Some(1),
                tag: Some("v1".into()),
            },
            actor: Some("alice".into()),
            request: None,
            at_ms: 1_700_000_000_123,
        };
        let source = Source {
            addr: "host:5000".into(),
            instance_id: "i".into(),
        };
        let one = render(&event, &source);
        let body = envelope([one.as_str(), one.as_str()].into_iter());
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        let first = &parsed["events"][0];
        assert_eq!(first["action"], "push");
        assert_eq!(first["timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(
            first["target"]["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(first["target"]["tag"], "v1");
        assert_eq!(first["target"]["length"], 1);
        assert_eq!(first["actor"]["name"], "alice");
        assert_eq!(first["source"]["instanceID"], "i");
        assert_eq!(parsed["events"].as_array().unwrap().len(), 2);
    }
}
