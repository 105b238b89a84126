//! The docs, checked against the repository and the code: every relative
//! link of `README.md` and `docs/*.md` leads to a file and a heading that
//! exist, the README stays a landing page from which every docs page is one
//! hop away, the paths of "Where things live" exist, and the settings trees
//! the docs print are the code's defaults.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeSet;

use figment::Figment;
use figment::providers::{Format, Toml};
use serde_json::Value;
use warren_deploy_check::{docs, read, repo_root};

fn report(problems: Vec<String>) {
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn every_relative_link_leads_to_a_file_and_a_heading_that_exist() {
    let files = docs::markdown_files();
    assert!(
        files.iter().any(|f| f == "docs/README.md"),
        "no docs/README.md among {files:?}"
    );
    report(files.iter().flat_map(|f| docs::broken_links(f)).collect());
}

/// The files a Markdown text links to, anchors dropped.
fn linked_files(markdown: &str) -> BTreeSet<String> {
    docs::links(markdown)
        .into_iter()
        .filter(|l| docs::is_relative(&l.target))
        .map(|l| l.target.split('#').next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn the_readme_is_a_landing_page_and_every_docs_page_is_one_hop_from_the_index() {
    let readme = read("README.md");
    let lines = readme.lines().count();
    let mut problems = Vec::new();
    if lines > 300 {
        problems.push(format!(
            "README.md has {lines} lines; it is a landing page (at most 300): \
             reference material belongs in docs/"
        ));
    }
    if !linked_files(&readme).contains("docs/README.md") {
        problems.push("README.md does not link the index, docs/README.md".to_owned());
    }
    let index = linked_files(&read("docs/README.md"));
    for page in docs::markdown_files() {
        let Some(name) = page.strip_prefix("docs/") else {
            continue;
        };
        if name != "README.md" && !index.contains(name) {
            problems.push(format!("docs/README.md does not link {page}"));
        }
    }
    report(problems);
}

/// Every leaf of a JSON tree, as a dotted path and its value.
fn leaves(value: &Value, path: &str, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                leaves(child, &path, out);
            }
        }
        other => out.push((path.to_owned(), other.clone())),
    }
}

/// The keys a TOML block names, commented out (`# port =`) or not, as
/// dotted paths under their `[section]` headers.
fn named_keys(block: &str) -> BTreeSet<String> {
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in block.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            section = header.split(']').next().unwrap_or_default().to_owned();
            continue;
        }
        let line = line.trim_start_matches('#').trim_start();
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                keys.insert(format!("{section}.{key}"));
            }
        }
    }
    keys
}

/// What is wrong with the first TOML block of `page`'s "Settings" section
/// against `defaults` (a service's `Settings::default()`): a value that is
/// not the default, a key the service does not know, or a key of one of
/// `complete` (sections the block shows in full) that it leaves out.
fn settings_block_problems(page: &str, defaults: Value, complete: &[&str]) -> Vec<String> {
    let text = read(page);
    let section = docs::section(&text, "Settings")
        .unwrap_or_else(|| panic!("{page} has no Settings section"));
    let block = docs::code_blocks(section, "toml")
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{page}, Settings, has no toml block"));
    let documented: Value = Figment::from(Toml::string(&block))
        .extract()
        .unwrap_or_else(|e| panic!("{page}, Settings: the toml block does not parse: {e}"));

    let mut problems = Vec::new();
    let mut shown = Vec::new();
    leaves(&documented, "", &mut shown);
    for (path, value) in &shown {
        let default = path.split('.').try_fold(&defaults, |v, key| v.get(key));
        match default {
            None => problems.push(format!("{page}: {path} is no setting of the service")),
            Some(default) if default != value => problems.push(format!(
                "{page}: {path} = {value}, but its default is {default}"
            )),
            Some(_) => {}
        }
    }
    let named = named_keys(&block);
    let mut all = Vec::new();
    leaves(&defaults, "", &mut all);
    for (path, _) in all {
        let in_complete = complete.iter().any(|s| {
            path.strip_prefix(s)
                .is_some_and(|rest| rest.starts_with('.'))
        });
        if in_complete && !named.contains(&path) {
            problems.push(format!("{page}: the settings tree leaves out {path}"));
        }
    }
    problems
}

fn defaults<T: serde::Serialize + Default>() -> Value {
    serde_json::to_value(T::default()).expect("settings serialize")
}

#[test]
fn the_settings_trees_in_the_docs_are_the_codes_defaults() {
    let mut problems = settings_block_problems(
        "docs/operations.md",
        defaults::<email_worker::Settings>(),
        &["broker", "consumer", "idempotency", "telemetry", "ops"],
    );
    problems.extend(settings_block_problems(
        "docs/email-worker.md",
        defaults::<email_worker::Settings>(),
        &["email"],
    ));
    problems.extend(settings_block_problems(
        "docs/gateway.md",
        defaults::<gateway::Settings>(),
        &["ops", "http", "events", "status", "tasks", "email"],
    ));
    report(problems);
}

/// The code spans of `markdown` that name a path of the repository
/// (`shared/src/settings.rs`, `deploy/k8s/`, `.ci/run`); not those with a
/// placeholder (`services/<service>/src`).
fn code_paths(markdown: &str) -> Vec<String> {
    use pulldown_cmark::{Event, Parser};
    Parser::new(markdown)
        .filter_map(|event| match event {
            Event::Code(code)
                if code.contains('/')
                    && !code.contains(|c: char| c.is_whitespace() || c == '<' || c == '*') =>
            {
                Some(code.into_string())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn where_things_live_names_paths_that_exist() {
    let index = read("docs/README.md");
    let table = docs::section(&index, "Where things live")
        .expect("docs/README.md has a section Where things live");
    let paths = code_paths(table);
    assert!(paths.len() > 10, "too few paths found: {paths:?}");
    let root = repo_root();
    let problems = paths
        .into_iter()
        .filter(|p| {
            // A module may be a file or a folder: `shared/src/runtime`.
            let path = root.join(p.trim_end_matches('/'));
            !(path.exists() || path.with_extension("rs").exists())
        })
        .map(|p| format!("docs/README.md, Where things live: no such path {p}"))
        .collect();
    report(problems);
}
