//! The Rhai constructors of the actions a rule can ask for (PURE): `email(…)`, `webhook(…)`,
//! `callback_task(…)` and `close_callback_tasks(…)`, which check their fields as the rule runs
//! and make the [`ActionRequest`] the delivery queue executes.

use crate::action::{ActionRequest, EmailSpec};
use rhai::{Dynamic, EvalAltResult, Map};

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

fn error(message: String) -> Box<EvalAltResult> {
    message.into()
}

/// A string field; `()` and missing count as absent.
fn opt_string(map: &Map, action: &str, field: &str) -> RhaiResult<Option<String>> {
    match map.get(field) {
        None => Ok(None),
        Some(v) if v.is_unit() => Ok(None),
        Some(v) if v.is_string() => {
            let s = v.clone().into_string().unwrap_or_default();
            Ok((!s.trim().is_empty()).then_some(s))
        }
        Some(v) if v.is_int() || v.is_float() => Ok(Some(v.to_string())),
        Some(v) => Err(error(format!(
            "{action}: `{field}` must be a string, not {}",
            v.type_name()
        ))),
    }
}

fn required_string(map: &Map, action: &str, field: &str) -> RhaiResult<String> {
    opt_string(map, action, field)?
        .ok_or_else(|| error(format!("{action}: `{field}` is required (absent or empty)")))
}

/// A string or an array of strings.
fn string_list(map: &Map, action: &str, field: &str) -> RhaiResult<Vec<String>> {
    match map.get(field) {
        None => Ok(Vec::new()),
        Some(v) if v.is_unit() => Ok(Vec::new()),
        Some(v) if v.is_array() => v
            .clone()
            .into_array()
            .unwrap_or_default()
            .into_iter()
            .filter(|item| !item.is_unit())
            .map(|item| {
                item.into_string().map_err(|t| {
                    error(format!(
                        "{action}: `{field}` items must be strings, not {t}"
                    ))
                })
            })
            .collect(),
        Some(_) => Ok(opt_string(map, action, field)?
            .map(|s| {
                s.split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect()
            })
            .unwrap_or_default()),
    }
}

fn check_fields(map: &Map, action: &str, known: &[&str]) -> RhaiResult<()> {
    for key in map.keys() {
        if !known.contains(&key.as_str()) {
            return Err(error(format!(
                "{action}: unknown field `{key}` (known: {})",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

/// Actions travel through Rhai as a custom type: no conversion to and from a map.
fn to_dynamic(action: ActionRequest) -> RhaiResult<Dynamic> {
    Ok(Dynamic::from(action))
}

/// `email(#{ to, cc, reply_to, subject, body, html })`
pub(crate) fn email(map: Map) -> RhaiResult<Dynamic> {
    const A: &str = "email";
    check_fields(
        &map,
        A,
        &["to", "cc", "reply_to", "subject", "body", "html"],
    )?;
    let to = string_list(&map, A, "to")?;
    if to.is_empty() {
        return Err(error("email: `to` is required (absent or empty)".into()));
    }
    to_dynamic(ActionRequest::Email(EmailSpec {
        to,
        cc: string_list(&map, A, "cc")?,
        reply_to: opt_string(&map, A, "reply_to")?,
        subject: required_string(&map, A, "subject")?,
        body: opt_string(&map, A, "body")?.unwrap_or_default(),
        html: opt_string(&map, A, "html")?,
    }))
}

/// The deepest a webhook `body` may nest: room for any accepted event (`#{ event: ev }`), and
/// shallow enough that the evaluation record and job that carry it (a few levels more) read
/// back, and are written and dropped without deep recursion.
pub(crate) const MAX_BODY_NESTING: usize = crate::event::MAX_NESTING + 10;

/// `webhook(#{ target, url, body })`: `target` (a configured name) or `url`.
pub(crate) fn webhook(map: Map) -> RhaiResult<Dynamic> {
    const A: &str = "webhook";
    check_fields(&map, A, &["target", "url", "body"])?;
    let target = opt_string(&map, A, "target")?;
    let url = opt_string(&map, A, "url")?;
    if target.is_none() && url.is_none() {
        return Err(error(
            "webhook: give `target` (a configured target's name) or `url`".into(),
        ));
    }
    let body = match map.get("body") {
        None => None,
        Some(v) if v.is_unit() => None,
        Some(v) => Some(
            rhai::serde::from_dynamic::<serde_json::Value>(v)
                .map_err(|e| error(format!("webhook: `body` cannot be JSON: {e}")))?,
        ),
    };
    if body
        .as_ref()
        .is_some_and(|b| crate::event::nested_deeper_than(b, MAX_BODY_NESTING))
    {
        return Err(error(format!(
            "webhook: `body` is nested deeper than {MAX_BODY_NESTING} levels"
        )));
    }
    to_dynamic(ActionRequest::Webhook { target, url, body })
}

/// `callback_task(#{ phone, name, reason, due_in, priority })`
pub(crate) fn callback_task(map: Map) -> RhaiResult<Dynamic> {
    const A: &str = "callback_task";
    check_fields(&map, A, &["phone", "name", "reason", "due_in", "priority"])?;
    let due_in = match opt_string(&map, A, "due_in")? {
        None => 0,
        Some(text) => crate::time::parse_duration(&text)
            .map_err(|e| error(format!("callback_task: `due_in`: {e}")))?
            .as_secs(),
    };
    let priority = match map.get("priority") {
        None => 0,
        Some(v) if v.is_unit() => 0,
        Some(v) => v.as_int().map_err(|t| {
            error(format!(
                "callback_task: `priority` must be an integer, not {t}"
            ))
        })?,
    };
    to_dynamic(ActionRequest::CallbackTask {
        phone: required_string(&map, A, "phone")?,
        name: opt_string(&map, A, "name")?,
        reason: opt_string(&map, A, "reason")?.unwrap_or_else(|| "call back".into()),
        due_in_secs: due_in,
        priority,
    })
}

/// `close_callback_tasks(#{ phone, note })`
pub(crate) fn close_callback_tasks(map: Map) -> RhaiResult<Dynamic> {
    const A: &str = "close_callback_tasks";
    check_fields(&map, A, &["phone", "note"])?;
    to_dynamic(ActionRequest::CloseCallbackTasks {
        phone: required_string(&map, A, "phone")?,
        note: opt_string(&map, A, "note")?,
    })
}

/// Reads back the value a constructor made (or fails, naming what the rule returned instead).
pub(crate) fn from_dynamic(value: &Dynamic) -> Result<ActionRequest, String> {
    value.clone().try_cast::<ActionRequest>().ok_or_else(|| {
        format!(
            "`then` must return a list of actions made by email(), webhook(), callback_task() or close_callback_tasks(); got {}",
            value.type_name()
        )
    })
}
