//! The dependency rules of `docs/architecture.md`, checked: every `src/**/*.rs` file is read, and
//! each path into a top-level module of the crate (`use crate::x::…`, `use crate::{x, y::z}`,
//! `crate::x::f()` in code) is held against the table below. A failure names the file, the line
//! and the rule broken. Comments are skipped; `super::` paths stay inside their module and are
//! not checked; `lib.rs` and `main.rs`, which wire everything together, may use anything.

use std::path::{Path, PathBuf};

/// What a top-level module may import of the others.
enum Rule {
    /// These and nothing else.
    Only(&'static [&'static str]),
    /// Anything but these.
    Not(&'static [&'static str]),
}
use Rule::{Not, Only};

const RULES: &[(&str, Rule)] = &[
    // The pure core imports nothing of the service.
    ("event", Only(&[])),
    ("action", Only(&["event"])),
    ("time", Only(&["event"])),
    ("rules", Only(&["action", "event", "time"])),
    // The store knows the domain types only.
    ("store", Only(&["action", "event", "time"])),
    // Secrets are read by config, the API and the senders alike.
    ("secret", Only(&[])),
    // Delivery runs jobs; it never evaluates rules. Each sender owns its settings, which `config`
    // composes: delivery never reads `config`.
    (
        "delivery",
        Not(&[
            "committer",
            "config",
            "evaluation",
            "processor",
            "replay",
            "rules",
        ]),
    ),
    // The processor queues jobs; how they are delivered is not its business.
    ("processor", Not(&["delivery", "replay"])),
    ("replay", Not(&["delivery", "processor"])),
    ("evaluation", Not(&["delivery", "processor", "replay"])),
    ("wakeup", Not(&["delivery", "processor"])),
];

/// Why `from` must not import `to`, or `None` when it may.
fn broken_rule(from: &str, to: &str) -> Option<String> {
    if from == to {
        return None;
    }
    // The HTTP surface sits on top: only `config` (for the `[http]` limits) imports `api`, and
    // only `api` imports `console`.
    match (to, from) {
        ("api", "config") | ("console", "api") => {}
        ("api" | "console", _) => return Some(format!("nothing below the API imports `{to}`")),
        _ => {}
    }
    let (_, rule) = RULES.iter().find(|(module, _)| *module == from)?;
    match rule {
        Only([]) => Some(format!("`{from}` imports nothing of the crate")),
        Only(allowed) if !allowed.contains(&to) => Some(format!(
            "`{from}` may import only `{}`",
            allowed.join("`, `")
        )),
        Not(banned) if banned.contains(&to) => Some(format!("`{from}` must not import `{to}`")),
        _ => None,
    }
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("src is readable").path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// `source` with comments and the contents of string and character literals blanked out (lines
/// kept), so that only code is left to search.
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut code = String::with_capacity(source.len());
    let blank = |code: &mut String, c: char| code.push(if c == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < chars.len() {
        let rest = &chars[i..];
        let after_ident = i > 0 && is_ident(chars[i - 1]);
        // The length of what starts here, if it is a comment or a literal.
        let skip = match rest {
            ['/', '/', ..] => rest.iter().position(|&c| c == '\n').unwrap_or(rest.len()),
            ['/', '*', ..] => {
                let mut depth = 0;
                let mut j = 0;
                while j < rest.len() {
                    match rest[j..] {
                        ['/', '*', ..] => (depth, j) = (depth + 1, j + 2),
                        ['*', '/', ..] => (depth, j) = (depth - 1, j + 2),
                        _ => j += 1,
                    }
                    if depth == 0 {
                        break;
                    }
                }
                j
            }
            ['"', ..] => {
                let mut j = 1;
                while j < rest.len() && rest[j] != '"' {
                    j += if rest[j] == '\\' { 2 } else { 1 };
                }
                j + 1
            }
            ['r', '#' | '"', ..] | ['b', 'r', '#' | '"', ..] if !after_ident => {
                // A raw string (r"…", r#"…"#, br"…"), or a raw identifier (r#type).
                let prefix = if rest[0] == 'b' { 2 } else { 1 };
                let hashes = rest[prefix..].iter().take_while(|&&c| c == '#').count();
                let body = prefix + hashes + 1;
                let close: Vec<char> = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                match rest.get(body - 1) {
                    Some('"') => rest[body..]
                        .windows(close.len())
                        .position(|w| w == close.as_slice())
                        .map_or(rest.len(), |end| body + end + close.len()),
                    _ => 0,
                }
            }
            ['\'', '\\', ..] => rest[2..]
                .iter()
                .position(|&c| c == '\'')
                .map_or(0, |end| end + 3),
            ['\'', _, '\'', ..] => 3,
            _ => 0,
        };
        let skip = skip.min(rest.len());
        if skip == 0 {
            code.push(rest[0]);
            i += 1;
        } else {
            rest[..skip].iter().for_each(|&c| blank(&mut code, c));
            i += skip;
        }
    }
    code
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The top-level modules `source` names through `crate::`, each with the (1-based) line it is
/// named on: `crate::x::…` names `x`; `crate::{x, y::{…}}` names `x` and `y`.
fn crate_paths(source: &str) -> Vec<(usize, String)> {
    let code = code_only(source);
    let line_at = |offset: usize| code[..offset].matches('\n').count() + 1;
    let ident_at = |offset: usize| -> String {
        code[offset..]
            .chars()
            .take_while(|&c| is_ident(c))
            .collect()
    };
    let mut found = Vec::new();
    for (start, _) in code.match_indices("crate::") {
        if code[..start].ends_with(|c: char| is_ident(c) || c == ':') {
            continue; // `foo_crate::`, `other::crate::`
        }
        let after = start + "crate::".len();
        if !code[after..].starts_with('{') {
            found.push((line_at(after), ident_at(after)));
            continue;
        }
        // A group: the first name of each of its top-level items.
        let mut depth = 0;
        let mut item_start = true;
        for (i, c) in code[after..].char_indices() {
            let at = after + i;
            match c {
                '{' => {
                    depth += 1;
                    item_start = depth == 1;
                }
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                ',' if depth == 1 => item_start = true,
                c if item_start && depth == 1 && is_ident(c) => {
                    found.push((line_at(at), ident_at(at)));
                    item_start = false;
                }
                _ => {}
            }
        }
    }
    found
}

#[test]
fn paths_are_found_in_every_form() {
    let source = r##"use crate::store::{Store, now};
use crate::{
    action::Action,
    time::{self, Millis}, // crate::api
};
// use crate::config;
let x = crate::delivery::run("// crate::api", '"', '\'');
/* crate::api /* nested */ crate::api */ let y = r#"crate::api "quoted""#;
let z = "crate::api
crate::api"; crate::rules::f::<'static>();
"##;
    let expected = [
        (1, "store"),
        (3, "action"),
        (4, "time"),
        (7, "delivery"),
        (10, "rules"),
    ]
    .map(|(line, module)| (line, module.to_string()));
    assert_eq!(crate_paths(source), expected);
}

#[test]
fn modules_import_only_what_the_dependency_rules_allow() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut broken = Vec::new();
    let mut paths = 0;
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let Some(first) = relative.iter().next().and_then(|c| c.to_str()) else {
            continue;
        };
        let from = first.trim_end_matches(".rs");
        if from == "lib" || from == "main" {
            continue;
        }
        let source = std::fs::read_to_string(file).expect("source is readable");
        for (line, to) in crate_paths(&source) {
            paths += 1;
            if let Some(rule) = broken_rule(from, &to) {
                broken.push(format!(
                    "src/{}:{line}: imports `crate::{to}`: {rule}",
                    relative.display()
                ));
            }
        }
    }
    // Guards against a scan that silently finds nothing.
    assert!(
        files.len() > 40 && paths > 100,
        "scanned {} files, {paths} paths",
        files.len()
    );
    assert!(
        broken.is_empty(),
        "dependency rules broken (docs/architecture.md, \"Dependency rules\"):\n{}",
        broken.join("\n")
    );
}
