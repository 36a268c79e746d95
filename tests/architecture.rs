//! The dependency rules of `docs/architecture.md`, checked: every `src/**/*.rs` file is read, and
//! each path into a top-level module of the crate (`use crate::x::…`, `use crate::{x, y::z}`,
//! `crate::x::f()` in code) is held against the table below. A failure names the file, the line
//! and the rule broken. Files are parsed with `syn` (macro bodies are searched as tokens), so comments and strings never count; `super::` paths stay inside their module and are
//! not checked; `lib.rs` and `main.rs`, which wire everything together, may use anything.

use proc_macro2::TokenTree;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use syn::visit::Visit;

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

/// Collects the top-level modules named through `crate::`, with the line each is named on.
#[derive(Default)]
struct CratePaths(Vec<(usize, String)>);

impl CratePaths {
    /// `crate::x…` in a `use` tree: `x`, or each first name of a group `crate::{x, y::z}`.
    fn use_tree(&mut self, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(path) => self.push(&path.ident),
            syn::UseTree::Name(name) => self.push(&name.ident),
            syn::UseTree::Rename(rename) => self.push(&rename.ident),
            syn::UseTree::Group(group) => group.items.iter().for_each(|item| self.use_tree(item)),
            syn::UseTree::Glob(_) => {}
        }
    }

    /// `crate :: x` anywhere in a macro's tokens (syn does not parse macro bodies).
    fn tokens(&mut self, tokens: proc_macro2::TokenStream) {
        let tokens: Vec<_> = tokens.into_iter().collect();
        for (i, token) in tokens.iter().enumerate() {
            match (
                token,
                tokens.get(i + 1),
                tokens.get(i + 2),
                tokens.get(i + 3),
            ) {
                (
                    TokenTree::Ident(krate),
                    Some(TokenTree::Punct(a)),
                    Some(TokenTree::Punct(b)),
                    Some(TokenTree::Ident(module)),
                ) if krate == "crate" && a.as_char() == ':' && b.as_char() == ':' => {
                    self.push(module)
                }
                (TokenTree::Group(group), ..) => self.tokens(group.stream()),
                _ => {}
            }
        }
    }

    fn push(&mut self, ident: &proc_macro2::Ident) {
        self.0.push((ident.span().start().line, ident.to_string()));
    }
}

impl<'ast> Visit<'ast> for CratePaths {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        if let syn::UseTree::Path(path) = &item.tree
            && path.ident == "crate"
        {
            self.use_tree(&path.tree);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let mut segments = path.segments.iter();
        if let (Some(first), Some(second)) = (segments.next(), segments.next())
            && first.ident == "crate"
        {
            self.push(&second.ident);
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.tokens(mac.tokens.clone());
        syn::visit::visit_macro(self, mac);
    }
}

/// The top-level modules `source` names through `crate::`, each with the (1-based) line it is
/// named on: `crate::x::…` names `x`; `crate::{x, y::{…}}` names `x` and `y`.
fn crate_paths(source: &str) -> Vec<(usize, String)> {
    let file = syn::parse_file(source).expect("the source parses");
    let mut paths = CratePaths::default();
    paths.visit_file(&file);
    paths.0.sort();
    paths.0
}

#[test]
fn paths_are_found_in_every_form() {
    let source = r##"use crate::store::{Store, now};
use crate::{
    action::Action,
    time::{self, Millis}, // crate::api
};
// use crate::config;
fn f() {
    let x = crate::delivery::run("// crate::api", '"', '\'');
    /* crate::api /* nested */ crate::api */ let y = r#"crate::api "quoted""#;
    let z = "crate::api
crate::api"; crate::rules::f::<'static>();
    tracing::warn!(value = ?crate::health::op(), "crate::api");
}
"##;
    let expected = [
        (1, "store"),
        (3, "action"),
        (4, "time"),
        (8, "delivery"),
        (11, "rules"),
        (12, "health"),
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
    let mut imports: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
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
            if to != from {
                imports.entry(from).or_default().insert(to.clone());
            }
            if let Some(rule) = broken_rule(from, &to) {
                broken.push(format!(
                    "src/{}:{line}: imports `crate::{to}`: {rule}",
                    relative.display()
                ));
            }
        }
    }
    // Shown with `cargo test --test architecture -- --nocapture`.
    for (from, to) in &imports {
        let to: Vec<_> = to.iter().map(String::as_str).collect();
        println!("{from} -> {}", to.join(", "));
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
