//! The call-trigger notification as a typed value: lenient decoding of Udesk's drifting field
//! types, the normalized outcome, decode warnings, and the dedupe key. Pure: no I/O.

mod body;
mod outcome;

pub use body::{
    BodyError, BodyFormat, MAX_NESTING, ParsedBody, json_type_name, nested_deeper_than, parse_body,
    too_deep_at,
};
pub use outcome::Outcome;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// A time as Udesk sends it, with the sender's offset kept (business hours are read in it).
pub type Timestamp = DateTime<FixedOffset>;

/// The typed view of one push. Every documented field is optional: real pushes omit fields, send
/// `""` or `null` for absent values, and drift in type. Fields that could not be decoded are absent
/// here and described by a [`Warning`]; the raw body is always kept beside this view.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CallEvent {
    /// Id shared by one customer's series of calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// Id of this call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<i64>,
    /// Time of the push.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nick_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mobile_area: Option<String>,
    /// Trunk number shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_number: Option<String>,
    /// `in`, `out_callback`, `out_direct` or `out_auto`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// Previous agent, for transferred calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_agent_id: Option<i64>,
    /// The outcome exactly as sent (Japanese or Chinese).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_result: Option<String>,
    /// `call_result` normalized; absent when `call_result` is absent or unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_leave_message: Option<bool>,
    /// Call length in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_time: Option<i64>,
    /// Recording URL. A signed URL is a credential: never log it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub survey: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outline_phone_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_ring_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_ring_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_answer_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_answer_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_hangup_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_hangup_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_email: Option<String>,
    /// `normal`, `transfer`, `consult`, … (see the seed README).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_name: Option<String>,
    /// Also accepted as `queue_statue`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_status: Option<String>,
    /// Seconds waited in queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtmf: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_info: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_side: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub defeat_cause: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multi_ring_count: Option<i64>,
    /// Related agents; spelled as in Udesk's table, also accepted as `relevant_agent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relevent_agent: Option<Vec<String>>,
    /// Seconds in IVR.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ivr_time: Option<i64>,
    /// The operator's predefined JSON object, as sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extend: Option<Value>,
    /// Fields Udesk's table does not list, kept as sent.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// The longest `call_id` or `customer_phone` kept in the typed view (longer ones are left
/// absent with a warning; the raw body keeps them).
pub const MAX_SEARCH_KEY_BYTES: usize = 256;

/// Something in a push that was accepted but not understood. The push is stored anyway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Warning {
    /// The field as it was named in the push.
    pub field: String,
    pub message: String,
    /// The value as sent, when there is one to show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

/// The typed view of a push and what could not be decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub event: CallEvent,
    pub warnings: Vec<Warning>,
}

/// Decodes a parsed body into the typed view. Never fails: a field that can't be decoded is left
/// absent and described by a warning.
pub fn decode(body: &ParsedBody) -> Decoded {
    let mut d = Decoder::default();
    for key in &body.duplicate_keys {
        d.warn(
            key,
            "key given more than once; the last value was kept",
            None,
        );
    }
    let mut ev = CallEvent::default();
    for (key, value) in &body.fields {
        if is_absent(value) {
            continue;
        }
        let k = key.as_str();
        match k {
            "call_id" => ev.call_id = d.search_key(k, value),
            "conversation_id" => ev.conversation_id = d.int(k, value),
            "timestamp" => ev.timestamp = d.time(k, value),
            "nick_name" => ev.nick_name = d.string(k, value),
            "customer_phone" => ev.customer_phone = d.search_key(k, value),
            "mobile_area" => ev.mobile_area = d.string(k, value),
            "display_number" => ev.display_number = d.string(k, value),
            "workflow" => ev.workflow = d.string(k, value),
            "from_agent_id" => ev.from_agent_id = d.int(k, value),
            "call_result" => ev.call_result = d.string(k, value),
            "is_leave_message" => ev.is_leave_message = d.bool(k, value),
            "total_time" => ev.total_time = d.int(k, value),
            "record_url" => ev.record_url = d.string(k, value),
            "survey" => ev.survey = d.string(k, value),
            "outline_phone_number" => ev.outline_phone_number = d.string(k, value),
            "agent_id" => ev.agent_id = d.int(k, value),
            "customer_ring_at" => ev.customer_ring_at = d.time(k, value),
            "agent_ring_at" => ev.agent_ring_at = d.time(k, value),
            "customer_answer_at" => ev.customer_answer_at = d.time(k, value),
            "agent_answer_at" => ev.agent_answer_at = d.time(k, value),
            "customer_hangup_at" => ev.customer_hangup_at = d.time(k, value),
            "agent_hangup_at" => ev.agent_hangup_at = d.time(k, value),
            "agent_email" => ev.agent_email = d.string(k, value),
            "category" => ev.category = d.string(k, value),
            "task_name" => ev.task_name = d.string(k, value),
            "queue_status" => ev.queue_status = d.string(k, value),
            "queue_time" => ev.queue_time = d.int(k, value),
            "dtmf" => ev.dtmf = d.string(k, value),
            "device_info" => ev.device_info = d.string(k, value),
            "drop_side" => ev.drop_side = d.string(k, value),
            "defeat_cause" => ev.defeat_cause = d.string(k, value),
            "multi_ring_count" => ev.multi_ring_count = d.int(k, value),
            "relevent_agent" => ev.relevent_agent = d.string_list(k, value),
            "ivr_time" => ev.ivr_time = d.int(k, value),
            "extend" => ev.extend = d.extend(k, value),
            "queue_statue" | "relevant_agent" => {} // variant spellings: below, after the documented ones
            _ => {
                ev.extra.insert(key.clone(), value.clone());
            }
        }
    }
    if let Some(value) = present(&body.fields, "queue_statue") {
        if ev.queue_status.is_some() || present(&body.fields, "queue_status").is_some() {
            d.warn(
                "queue_statue",
                "both `queue_status` and `queue_statue` given; `queue_status` was kept",
                Some(value),
            );
        } else {
            ev.queue_status = d.string("queue_statue", value);
        }
    }
    if let Some(value) = present(&body.fields, "relevant_agent") {
        if ev.relevent_agent.is_some() || present(&body.fields, "relevent_agent").is_some() {
            d.warn(
                "relevant_agent",
                "both `relevent_agent` and `relevant_agent` given; `relevent_agent` was kept",
                Some(value),
            );
        } else {
            ev.relevent_agent = d.string_list("relevant_agent", value);
        }
    }
    if let Some(raw) = &ev.call_result {
        ev.outcome = Outcome::from_call_result(raw);
        if ev.outcome.is_none() {
            d.warn(
                "call_result",
                "not a known call result; `outcome` left absent",
                Some(&Value::String(raw.clone())),
            );
        }
    }
    Decoded {
        event: ev,
        warnings: d.warnings,
    }
}

/// The key under which a push is deduplicated: `sha256:` and the hex SHA-256 of the body object in
/// canonical JSON (keys sorted at every level, no insignificant whitespace). Two pushes with equal
/// fields and values are one notification, however their keys are ordered or spaced, and whether
/// they came as JSON or as a form.
pub fn dedupe_key(fields: &Map<String, Value>) -> String {
    let mut hasher = Sha256::new();
    hash_canonical_object(&mut hasher, fields);
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

fn hash_canonical_object(hasher: &mut Sha256, map: &Map<String, Value>) {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    hasher.update(b"{");
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            hasher.update(b",");
        }
        hasher.update(Value::String(key.clone()).to_string().as_bytes());
        hasher.update(b":");
        hash_canonical(hasher, value);
    }
    hasher.update(b"}");
}

fn hash_canonical(hasher: &mut Sha256, value: &Value) {
    match value {
        Value::Object(map) => hash_canonical_object(hasher, map),
        Value::Array(items) => {
            hasher.update(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    hasher.update(b",");
                }
                hash_canonical(hasher, item);
            }
            hasher.update(b"]");
        }
        scalar => hasher.update(scalar.to_string().as_bytes()),
    }
}

/// `null` and empty (or blank) strings mean "absent" in real pushes.
fn is_absent(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

fn present<'a>(fields: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    fields.get(key).filter(|v| !is_absent(v))
}

/// Collects warnings while decoding field by field.
#[derive(Default)]
struct Decoder {
    warnings: Vec<Warning>,
}

impl Decoder {
    fn warn(&mut self, field: &str, message: impl Into<String>, value: Option<&Value>) {
        self.warnings.push(Warning {
            field: field.to_string(),
            message: message.into(),
            value: value.cloned(),
        });
    }

    fn fail<T>(&mut self, field: &str, message: &str, value: &Value) -> Option<T> {
        self.warn(field, format!("{message}; field left absent"), Some(value));
        None
    }

    fn string(&mut self, field: &str, value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                let message = format!("expected a string, found {}", json_type_name(other));
                self.fail(field, &message, other)
            }
        }
    }

    /// A string the store indexes for search (`call_id`, `customer_phone`): at most
    /// [`MAX_SEARCH_KEY_BYTES`], which every database's index takes (PostgreSQL refuses index
    /// entries over about 2.7 KB).
    fn search_key(&mut self, field: &str, value: &Value) -> Option<String> {
        let text = self.string(field, value)?;
        if text.len() > MAX_SEARCH_KEY_BYTES {
            let message = format!("longer than {MAX_SEARCH_KEY_BYTES} bytes");
            return self.fail(field, &message, value);
        }
        Some(text)
    }

    fn int(&mut self, field: &str, value: &Value) -> Option<i64> {
        let parsed = match value {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().and_then(whole_f64_to_i64)),
            Value::String(s) => {
                let s = s.trim();
                s.parse::<i64>()
                    .ok()
                    .or_else(|| s.parse::<f64>().ok().and_then(whole_f64_to_i64))
            }
            _ => None,
        };
        if parsed.is_none() {
            return self.fail(
                field,
                "expected an integer (a number or a numeric string)",
                value,
            );
        }
        parsed
    }

    fn bool(&mut self, field: &str, value: &Value) -> Option<bool> {
        let parsed = match value {
            Value::Bool(b) => Some(*b),
            Value::Number(n) => match n.as_i64() {
                Some(1) => Some(true),
                Some(0) => Some(false),
                _ => None,
            },
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Some(true),
                "false" | "0" => Some(false),
                _ => None,
            },
            _ => None,
        };
        if parsed.is_none() {
            return self.fail(
                field,
                "expected a boolean (true/false, \"true\"/\"false\", 1/0)",
                value,
            );
        }
        parsed
    }

    fn time(&mut self, field: &str, value: &Value) -> Option<Timestamp> {
        let parsed = value.as_str().and_then(|s| parse_time(s.trim()));
        if parsed.is_none() {
            return self.fail(
                field,
                "expected a time like `2018-03-22 11:48:23 +0800`",
                value,
            );
        }
        parsed
    }

    fn string_list(&mut self, field: &str, value: &Value) -> Option<Vec<String>> {
        let items: Vec<Value> = match value {
            Value::Array(items) => items.clone(),
            Value::String(s) if s.trim_start().starts_with('[') => {
                match serde_json::from_str::<Vec<Value>>(s) {
                    Ok(items) => items,
                    Err(_) => return self.fail(field, "expected an array of strings", value),
                }
            }
            // A form body (or a sloppy sender) gives one comma-separated string.
            Value::String(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
            other => return self.fail(field, "expected an array of strings", other),
        };
        let mut list = Vec::with_capacity(items.len());
        for item in &items {
            match item {
                Value::String(s) => list.push(s.clone()),
                Value::Number(n) => list.push(n.to_string()),
                _ => return self.fail(field, "expected an array of strings", value),
            }
        }
        Some(list)
    }

    fn extend(&mut self, field: &str, value: &Value) -> Option<Value> {
        match value {
            Value::Object(_) => Some(value.clone()),
            // A form body carries the object as JSON text, held to the nesting limit of a
            // JSON body (where `extend`'s object would be level 2).
            Value::String(s) if body::too_deep_at(s, body::MAX_NESTING - 1).is_some() => {
                let message = format!(
                    "JSON nested deeper than {} levels; kept as sent (text)",
                    body::MAX_NESTING
                );
                self.warn(field, message, Some(value));
                Some(value.clone())
            }
            Value::String(s) => match serde_json::from_str::<Value>(s) {
                Ok(parsed @ Value::Object(_)) => Some(parsed),
                _ => {
                    self.warn(field, "expected a JSON object; kept as sent", Some(value));
                    Some(value.clone())
                }
            },
            other => {
                let message = format!(
                    "expected a JSON object, found {}; kept as sent",
                    json_type_name(other)
                );
                self.warn(field, message, Some(other));
                Some(other.clone())
            }
        }
    }
}

/// Parses Udesk's `YYYY-MM-DD HH:MM:SS +ZZZZ`, or RFC 3339, keeping the offset.
pub fn parse_time(s: &str) -> Option<Timestamp> {
    DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S %z")
        .or_else(|_| DateTime::parse_from_rfc3339(s))
        .ok()
}

fn whole_f64_to_i64(f: f64) -> Option<i64> {
    // i64::MAX is not exactly representable; stay strictly inside the range.
    (f.is_finite() && f.fract() == 0.0 && (-9.2e18..=9.2e18).contains(&f)).then_some(f as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode_json(value: Value) -> Decoded {
        let text = value.to_string();
        decode(&parse_body(text.as_bytes(), None).unwrap())
    }

    #[test]
    fn lenient_scalars() {
        let d = decode_json(json!({
            "conversation_id": "20932", "queue_time": 81.0, "total_time": " 7 ",
            "is_leave_message": "false", "customer_phone": 13800138000u64,
            "agent_id": "", "from_agent_id": null,
        }));
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        let ev = d.event;
        assert_eq!(ev.conversation_id, Some(20932));
        assert_eq!(ev.queue_time, Some(81));
        assert_eq!(ev.total_time, Some(7));
        assert_eq!(ev.is_leave_message, Some(false));
        assert_eq!(ev.customer_phone.as_deref(), Some("13800138000"));
        assert_eq!(ev.agent_id, None);
        assert_eq!(ev.from_agent_id, None);
    }

    #[test]
    fn undecodable_fields_become_warnings() {
        let d = decode_json(
            json!({"queue_time": "abc", "is_leave_message": "maybe", "timestamp": "yesterday", "ivr_time": 1.5}),
        );
        let fields: Vec<&str> = d.warnings.iter().map(|w| w.field.as_str()).collect();
        assert_eq!(
            fields,
            ["is_leave_message", "ivr_time", "queue_time", "timestamp"]
        );
        assert_eq!(d.warnings[2].value, Some(json!("abc")));
        assert_eq!(d.event.queue_time, None);
    }

    #[test]
    fn times_keep_their_offset() {
        let d = decode_json(json!({"timestamp": "2018-03-22 11:48:23 +0800"}));
        let ts = d.event.timestamp.unwrap();
        assert_eq!(ts.offset().local_minus_utc(), 8 * 3600);
        assert_eq!(ts.to_rfc3339(), "2018-03-22T11:48:23+08:00");
    }

    #[test]
    fn variant_spellings() {
        let d = decode_json(json!({"queue_statue": "放棄", "relevant_agent": "a@x, b@x"}));
        assert_eq!(d.event.queue_status.as_deref(), Some("放棄"));
        assert_eq!(
            d.event.relevent_agent,
            Some(vec!["a@x".into(), "b@x".into()])
        );
        let d = decode_json(json!({"queue_statue": "x", "queue_status": "y"}));
        assert_eq!(d.event.queue_status.as_deref(), Some("y"));
        assert_eq!(d.warnings.len(), 1);
    }

    #[test]
    fn unknown_fields_and_extend_kept() {
        let d = decode_json(json!({"new": {"x": 1}, "extend": {"code": "vip"}}));
        assert_eq!(d.event.extra["new"], json!({"x": 1}));
        assert_eq!(d.event.extend, Some(json!({"code": "vip"})));
    }

    #[test]
    fn search_keys_are_bounded() {
        let long = "9".repeat(MAX_SEARCH_KEY_BYTES + 1);
        let d = decode_json(json!({"customer_phone": long, "call_id": "ok"}));
        assert_eq!(d.event.customer_phone, None);
        assert_eq!(d.event.call_id.as_deref(), Some("ok"));
        assert_eq!(d.warnings[0].field, "customer_phone");
    }

    #[test]
    fn outcome_and_unknown_call_result() {
        let d = decode_json(json!({"call_result": "放弃排队"}));
        assert_eq!(d.event.outcome, Some(Outcome::QueueAbandoned));
        assert_eq!(d.event.call_result.as_deref(), Some("放弃排队"));
        let d = decode_json(json!({"call_result": "???"}));
        assert_eq!(d.event.outcome, None);
        assert_eq!(d.warnings[0].field, "call_result");
    }

    #[test]
    fn dedupe_key_ignores_order_and_spacing_only() {
        let a = parse_body(br#"{"a":1,"b":{"y":2,"x":[1,"z"]}}"#, None).unwrap();
        let b = parse_body(b"{ \"b\" : {\"x\":[1, \"z\"], \"y\":2},\n \"a\":1 }", None).unwrap();
        let c = parse_body(br#"{"a":2,"b":{"y":2,"x":[1,"z"]}}"#, None).unwrap();
        assert_eq!(dedupe_key(&a.fields), dedupe_key(&b.fields));
        assert_ne!(dedupe_key(&a.fields), dedupe_key(&c.fields));
    }

    #[test]
    fn decoded_view_round_trips() {
        let d = decode_json(
            json!({"call_id": "x", "timestamp": "2018-03-22 11:48:23 +0800", "call_result": "待機放棄", "zz": 1}),
        );
        let json = serde_json::to_value(&d.event).unwrap();
        assert_eq!(json["outcome"], "queue_abandoned");
        let back: CallEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, d.event);
    }
}
