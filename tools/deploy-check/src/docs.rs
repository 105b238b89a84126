//! The Markdown docs (`README.md` and `docs/*.md`) read the way GitHub
//! renders them: headings and the anchors GitHub gives them, a heading's
//! section, and the relative links, so a check can tell that every link
//! leads to a file and a heading that exist.
//!
//! Parsed with pulldown-cmark rather than by searching the text, so a link
//! or a `#` inside a code block or a code span is no link and no heading.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use pulldown_cmark::{CodeBlockKind, Event, HeadingLevel, Parser, Tag, TagEnd};

use crate::repo::repo_root;

/// A heading of a Markdown file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heading {
    /// 1 for `#`, 2 for `##`, ...
    pub level: usize,
    /// The rendered text (code spans without their backticks).
    pub text: String,
    /// The anchor GitHub gives it, repeats numbered (`-1`, `-2`, ...).
    pub anchor: String,
    /// Where the heading's line starts and ends in the file.
    pub span: Range<usize>,
}

/// A link (or an image) of a Markdown file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub target: String,
    /// 1-based line of the link.
    pub line: usize,
}

/// The anchor GitHub gives a heading's text: lower case, spaces to hyphens,
/// every other character but letters, digits, `-` and `_` dropped.
pub fn github_anchor(text: &str) -> String {
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn level(level: HeadingLevel) -> usize {
    match level {
        HeadingLevel::H1 => 1,
        HeadingLevel::H2 => 2,
        HeadingLevel::H3 => 3,
        HeadingLevel::H4 => 4,
        HeadingLevel::H5 => 5,
        HeadingLevel::H6 => 6,
    }
}

/// Every heading of `markdown`, in order.
pub fn headings(markdown: &str) -> Vec<Heading> {
    let mut found = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut open: Option<(usize, String, Range<usize>)> = None;
    for (event, span) in Parser::new(markdown).into_offset_iter() {
        match event {
            Event::Start(Tag::Heading { level: l, .. }) => {
                open = Some((level(l), String::new(), span));
            }
            Event::Text(text) | Event::Code(text) => {
                if let Some((_, heading, _)) = open.as_mut() {
                    heading.push_str(&text);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some((level, text, span)) = open.take() {
                    let base = github_anchor(&text);
                    let repeats = seen.entry(base.clone()).or_insert(0);
                    let anchor = match *repeats {
                        0 => base,
                        n => format!("{base}-{n}"),
                    };
                    *repeats += 1;
                    found.push(Heading {
                        level,
                        text,
                        anchor,
                        span,
                    });
                }
            }
            _ => {}
        }
    }
    found
}

/// The section under the heading whose text is `title`: from that heading
/// to the next heading of the same or a higher level (its subsections
/// included), or to the end of the file.
pub fn section<'a>(markdown: &'a str, title: &str) -> Option<&'a str> {
    let all = headings(markdown);
    let index = all.iter().position(|h| h.text.trim() == title)?;
    let start = all[index].span.start;
    let end = all[index + 1..]
        .iter()
        .find(|h| h.level <= all[index].level)
        .map_or(markdown.len(), |h| h.span.start);
    Some(&markdown[start..end])
}

/// Every link and image of `markdown`, inline or by reference.
pub fn links(markdown: &str) -> Vec<Link> {
    Parser::new(markdown)
        .into_offset_iter()
        .filter_map(|(event, span)| match event {
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => Some(Link {
                target: dest_url.into_string(),
                line: markdown[..span.start].lines().count().max(1),
            }),
            _ => None,
        })
        .collect()
}

/// The text of every fenced code block of `markdown` whose info string is
/// `lang` (` ```toml `), in order.
pub fn code_blocks(markdown: &str, lang: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut open: Option<String> = None;
    for event in Parser::new(markdown) {
        match event {
            Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(info))) => {
                open = (info.split_whitespace().next() == Some(lang)).then(String::new);
            }
            Event::Text(text) => {
                if let Some(block) = open.as_mut() {
                    block.push_str(&text);
                }
            }
            Event::End(TagEnd::CodeBlock) => blocks.extend(open.take()),
            _ => {}
        }
    }
    blocks
}

/// Whether a link target points into the repository (rather than at a web
/// address or a mail address).
pub fn is_relative(target: &str) -> bool {
    !(target.contains("://") || target.starts_with("mailto:") || target.starts_with("//"))
}

/// `README.md` and every `.md` file under `docs/`, as paths from the
/// repository's root.
pub fn markdown_files() -> Vec<String> {
    let mut files = vec!["README.md".to_owned()];
    let mut docs: Vec<String> = std::fs::read_dir(repo_root().join("docs"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".md"))
                .map(|name| format!("docs/{name}"))
                .collect()
        })
        .unwrap_or_default();
    docs.sort();
    files.extend(docs);
    files
}

/// `path` with `.` and `..` resolved without touching the file system;
/// `None` if it climbs above its root.
fn normalise(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// What is wrong with the relative links of `file` (a path from the
/// repository's root): each must name a file or folder of the repository,
/// and an anchor must name a heading of the Markdown file it points into.
pub fn broken_links(file: &str) -> Vec<String> {
    let root = repo_root();
    let text = match std::fs::read_to_string(root.join(file)) {
        Ok(text) => text,
        Err(e) => return vec![format!("{file}: cannot read it: {e}")],
    };
    let dir = Path::new(file).parent().unwrap_or(Path::new(""));
    let mut problems = Vec::new();
    for link in links(&text).into_iter().filter(|l| is_relative(&l.target)) {
        let at = format!("{file}:{}: {}", link.line, link.target);
        let (path, anchor) = match link.target.split_once('#') {
            Some((path, anchor)) => (path, Some(anchor)),
            None => (link.target.as_str(), None),
        };
        let target = if path.is_empty() {
            Some(PathBuf::from(file))
        } else {
            normalise(&dir.join(path))
        };
        let Some(target) = target else {
            problems.push(format!("{at}: leads out of the repository"));
            continue;
        };
        if !root.join(&target).exists() {
            problems.push(format!("{at}: no such file {}", target.display()));
            continue;
        }
        let Some(anchor) = anchor else { continue };
        if target.extension().is_none_or(|x| x != "md") {
            problems.push(format!(
                "{at}: an anchor into {}, which is no Markdown file",
                target.display()
            ));
            continue;
        }
        let markdown = std::fs::read_to_string(root.join(&target)).unwrap_or_default();
        if !headings(&markdown).iter().any(|h| h.anchor == anchor) {
            problems.push(format!(
                "{at}: {} has no heading with the anchor #{anchor}",
                target.display()
            ));
        }
    }
    problems
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PAGE: &str = "# Page\n\nSee [the body](#the-emailsend-body) and [x](other.md#a-b).\n\n\
        ```sh\n# not a heading [nor](a-link.md)\n```\n\n## The `email.send` body\n\ntext `[no](link)`\n\n\
        ### Limits\n\nmore\n\n## Settings\n\n## Limits\n\n![diagram](flow.svg)\n";

    #[test]
    fn anchors_are_githubs_and_repeats_are_numbered() {
        let anchors: Vec<String> = headings(PAGE).into_iter().map(|h| h.anchor).collect();
        assert_eq!(
            anchors,
            [
                "page",
                "the-emailsend-body",
                "limits",
                "settings",
                "limits-1"
            ]
        );
        assert_eq!(
            github_anchor("Keys, decoding and limits"),
            "keys-decoding-and-limits"
        );
    }

    #[test]
    fn links_skip_code_and_include_images() {
        let targets: Vec<String> = links(PAGE).into_iter().map(|l| l.target).collect();
        assert_eq!(targets, ["#the-emailsend-body", "other.md#a-b", "flow.svg"]);
        assert_eq!(links(PAGE)[0].line, 3);
        assert!(is_relative("docs/contract.md#headers"));
        assert!(!is_relative("https://example.com/#x"));
    }

    #[test]
    fn a_section_holds_its_subsections_and_stops_at_its_level() {
        let body = section(PAGE, "The email.send body").unwrap();
        assert!(body.starts_with("## The `email.send` body"));
        assert!(body.contains("### Limits"));
        assert!(!body.contains("## Settings"));
        assert!(section(PAGE, "Nothing").is_none());
    }

    #[test]
    fn code_blocks_by_language() {
        assert_eq!(
            code_blocks(PAGE, "sh"),
            ["# not a heading [nor](a-link.md)\n"]
        );
        assert!(code_blocks(PAGE, "toml").is_empty());
    }

    #[test]
    fn paths_are_normalised_within_the_root() {
        assert_eq!(
            normalise(Path::new("docs/../asyncapi.yaml")),
            Some(PathBuf::from("asyncapi.yaml"))
        );
        assert_eq!(normalise(Path::new("../outside")), None);
    }
}
