//! Turning a request body (JSON or form-encoded bytes) into a JSON object, with errors that say
//! what is wrong and where. Pure: no I/O.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Why a body cannot be a notification at all. Everything else is accepted (with warnings).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("empty body: expected a JSON object")]
    Empty,
    #[error("body is not valid UTF-8 (first invalid byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    Syntax {
        message: String,
        line: usize,
        column: usize,
    },
    #[error("body must be a JSON object, found {found}")]
    NotAnObject { found: &'static str },
    #[error("invalid form body: {message}")]
    Form { message: String },
    #[error("JSON nested deeper than {limit} levels (at byte {offset})")]
    TooDeep { limit: usize, offset: usize },
    #[error("field `{field}` holds a NUL character (\\u0000), which cannot be stored")]
    NulCharacter { field: String },
}

/// The deepest nesting of arrays and objects a push may have (the body object is level 1).
/// Stored views wrap a push's values in a level or two of their own (`extra`, a warning), and
/// serde_json reads back at most 128 levels: this limit keeps every accepted push readable.
pub const MAX_NESTING: usize = 100;

/// How the body was encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Form,
}

/// A body that parsed into an object.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedBody {
    pub fields: Map<String, Value>,
    /// Keys that appeared more than once; the last value was kept.
    pub duplicate_keys: Vec<String>,
    pub format: BodyFormat,
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Parses a push body. The Content-Type header is only a hint: a body is read as
/// `application/x-www-form-urlencoded` when the header says so and the body does not look like a
/// JSON object; everything else is read as JSON (Udesk sends JSON with varying or missing types).
pub fn parse_body(bytes: &[u8], content_type: Option<&str>) -> Result<ParsedBody, BodyError> {
    let (skipped, bytes) = match bytes.strip_prefix(UTF8_BOM) {
        Some(rest) => (UTF8_BOM.len(), rest),
        None => (0, bytes),
    };
    let text = std::str::from_utf8(bytes).map_err(|e| BodyError::NotUtf8 {
        offset: skipped + e.valid_up_to(),
    })?;
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(BodyError::Empty);
    }
    let says_form = content_type.is_some_and(|ct| {
        ct.split(';').next().is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
    });
    let parsed = if says_form && !trimmed.starts_with('{') {
        parse_form(text)?
    } else if let Some(offset) = too_deep_at(text, MAX_NESTING) {
        return Err(BodyError::TooDeep {
            limit: MAX_NESTING,
            offset: skipped + offset,
        });
    } else {
        parse_json(text)?
    };
    // PostgreSQL text cannot hold NUL: such a push could be stored by SQLite but never by
    // PostgreSQL, so neither takes it.
    if let Some(field) = field_with_nul(&parsed.fields) {
        return Err(BodyError::NulCharacter {
            field: field.escape_debug().to_string(),
        });
    }
    Ok(parsed)
}

/// The first top-level field whose name, or any text or key inside whose value, holds a NUL.
fn field_with_nul(fields: &Map<String, Value>) -> Option<&str> {
    fields.iter().find_map(|(key, value)| {
        let mut pending = vec![value];
        let mut found = key.contains('\0');
        while let Some(value) = pending.pop() {
            if found {
                break;
            }
            match value {
                Value::String(text) => found = text.contains('\0'),
                Value::Array(items) => pending.extend(items),
                Value::Object(map) => {
                    found = map.keys().any(|k| k.contains('\0'));
                    pending.extend(map.values());
                }
                _ => {}
            }
        }
        found.then_some(key.as_str())
    })
}

fn parse_json(text: &str) -> Result<ParsedBody, BodyError> {
    if !text.trim_start().starts_with('{') {
        // Not an object: say what it is, or where its syntax breaks.
        let value: Value = serde_json::from_str(text).map_err(syntax_error)?;
        return Err(BodyError::NotAnObject {
            found: json_type_name(&value),
        });
    }
    let TopObject {
        fields,
        duplicate_keys,
    } = serde_json::from_str(text).map_err(syntax_error)?;
    Ok(ParsedBody {
        fields,
        duplicate_keys,
        format: BodyFormat::Json,
    })
}

fn parse_form(text: &str) -> Result<ParsedBody, BodyError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(text).map_err(|e| BodyError::Form {
            message: e.to_string(),
        })?;
    let mut fields = Map::new();
    let mut duplicate_keys = Vec::new();
    for (key, value) in pairs {
        if fields.insert(key.clone(), Value::String(value)).is_some() {
            duplicate_keys.push(key);
        }
    }
    Ok(ParsedBody {
        fields,
        duplicate_keys,
        format: BodyFormat::Form,
    })
}

/// Where JSON text first opens an array or object deeper than `limit` levels, if it does: one
/// pass over the bytes that skips strings, so it costs far less than parsing. Malformed text is
/// left to the parser to describe.
pub fn too_deep_at(text: &str, limit: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (offset, byte) in text.bytes().enumerate() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Some(offset);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Whether a JSON value nests arrays and objects deeper than `limit` levels (the value itself
/// is level 1 when it is one). Iterative, and it stops at the limit: safe on any depth.
pub fn nested_deeper_than(value: &Value, limit: usize) -> bool {
    let mut pending: Vec<(&Value, usize)> = vec![(value, 1)];
    while let Some((value, depth)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth > limit {
            return true;
        }
        pending.extend(children.map(|child| (child, depth + 1)));
    }
    false
}

fn syntax_error(e: serde_json::Error) -> BodyError {
    // serde_json's message ends with " at line L column C"; keep the cause, report the place apart.
    let full = e.to_string();
    let message = match full.rfind(" at line ") {
        Some(cut) => full[..cut].to_string(),
        None => full,
    };
    BodyError::Syntax {
        message,
        line: e.line(),
        column: e.column(),
    }
}

/// The JSON type name of a value, as an error message would say it.
pub fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A top-level object that remembers which keys were repeated (serde_json's `Map` silently keeps
/// the last one).
struct TopObject {
    fields: Map<String, Value>,
    duplicate_keys: Vec<String>,
}

impl<'de> serde::Deserialize<'de> for TopObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TopVisitor;
        impl<'de> Visitor<'de> for TopVisitor {
            type Value = TopObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopObject, A::Error> {
                let mut fields = Map::new();
                let mut duplicate_keys = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value: Value = map.next_value()?;
                    if fields.insert(key.clone(), value).is_some() {
                        duplicate_keys.push(key);
                    }
                }
                Ok(TopObject {
                    fields,
                    duplicate_keys,
                })
            }
        }
        deserializer.deserialize_map(TopVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_name_line_and_column() {
        let err = parse_body(b"{\n\"a\": 1,\n\"b\" 2}", None).unwrap_err();
        assert_eq!(
            err,
            BodyError::Syntax {
                message: "expected `:`".into(),
                line: 3,
                column: 5
            }
        );
        assert_eq!(
            err.to_string(),
            "invalid JSON at line 3, column 5: expected `:`"
        );
    }

    #[test]
    fn non_objects_are_named() {
        assert_eq!(
            parse_body(b"[1,2]", None).unwrap_err(),
            BodyError::NotAnObject { found: "an array" }
        );
        assert_eq!(
            parse_body(b" \"x\" ", None).unwrap_err(),
            BodyError::NotAnObject { found: "a string" }
        );
    }

    #[test]
    fn bom_and_duplicates() {
        let parsed = parse_body(b"\xEF\xBB\xBF{\"a\":1,\"a\":2}", Some("text/plain")).unwrap();
        assert_eq!(parsed.fields["a"], 2);
        assert_eq!(parsed.duplicate_keys, vec!["a".to_string()]);
    }

    #[test]
    fn form_bodies_and_json_despite_form_header() {
        let form = "application/x-www-form-urlencoded; charset=utf-8";
        let parsed = parse_body(
            "call_id=abc&queue_time=81&nick_name=%E5%B1%B1".as_bytes(),
            Some(form),
        )
        .unwrap();
        assert_eq!(parsed.format, BodyFormat::Form);
        assert_eq!(parsed.fields["queue_time"], "81");
        assert_eq!(parsed.fields["nick_name"], "山");
        let parsed = parse_body(b"{\"a\":1}", Some(form)).unwrap();
        assert_eq!(parsed.format, BodyFormat::Json);
    }

    #[test]
    fn nesting_is_limited_below_what_reads_back() {
        let nested = |levels: usize| {
            format!(
                "{{\"call_id\":\"x\",\"zz\":{}1{}}}",
                "[".repeat(levels - 1),
                "]".repeat(levels - 1)
            )
        };
        assert!(parse_body(nested(MAX_NESTING).as_bytes(), None).is_ok());
        assert_eq!(
            parse_body(nested(MAX_NESTING + 1).as_bytes(), None).unwrap_err(),
            BodyError::TooDeep {
                limit: MAX_NESTING,
                offset: 19 + MAX_NESTING
            }
        );
        // Brackets inside strings (escaped quotes too) are not nesting.
        let text = format!("{{\"a\":\"\\\"{}\"}}", "[".repeat(500));
        assert!(parse_body(text.as_bytes(), None).is_ok());
        assert_eq!(too_deep_at("[[1]]", 1), Some(1));
        assert_eq!(too_deep_at("[[1]]", 2), None);
        let value: Value = serde_json::from_str(r#"{"a":[1,{"b":[]}],"c":2}"#).unwrap();
        assert!(!nested_deeper_than(&value, 4));
        assert!(nested_deeper_than(&value, 3));
        assert!(!nested_deeper_than(&Value::from(1), 0));
    }

    #[test]
    fn nul_characters_are_refused_naming_the_field() {
        let err = parse_body(br#"{"a":1,"call_id":"x\u0000y"}"#, None).unwrap_err();
        assert_eq!(
            err,
            BodyError::NulCharacter {
                field: "call_id".into()
            }
        );
        let err = parse_body(br#"{"e":{"k\u0000":[1]}}"#, None).unwrap_err();
        assert_eq!(err, BodyError::NulCharacter { field: "e".into() });
        let form = Some("application/x-www-form-urlencoded");
        let err = parse_body(b"call_id=a%00b", form).unwrap_err();
        assert_eq!(
            err,
            BodyError::NulCharacter {
                field: "call_id".into()
            }
        );
        assert!(parse_body(br#"{"a":"\\u0000 is text"}"#, None).is_ok());
    }

    #[test]
    fn invalid_utf8_names_offset() {
        assert_eq!(
            parse_body(b"{\"a\":\"\xff\"}", None).unwrap_err(),
            BodyError::NotUtf8 { offset: 6 }
        );
    }
}
