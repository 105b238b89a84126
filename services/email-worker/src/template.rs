//! Email templates: one folder per template under `email.templates_dir`,
//! holding `subject.txt` (optional), `body.txt` and/or `body.html`, rendered
//! with minijinja.
//!
//! Undefined variables are errors, not empty strings: a mail that says
//! "Hello ," is worse than one that is dead-lettered with the reason. Only
//! `.html` files are HTML-escaped; escaping the text body or the subject
//! would put `&amp;` in front of the reader. Template names are checked
//! against `[A-Za-z0-9_-]+` before they reach the file system, so a task
//! cannot name `../../etc/passwd`.

use std::error::Error as _;
use std::fmt;
use std::path::{Path, PathBuf};

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use serde_json::{Map, Value};
use warren::TaskError;
pub use warren_tasks::email::TemplateName;

/// The rendered parts of a template; a part is `None` when its file does not
/// exist. At least one body is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
}

/// The template set of one worker.
///
/// Files are read on first use and then cached for the life of the process,
/// so editing a template needs a restart; a template that did not exist is
/// looked up again next time, so adding one does not.
pub struct Templates {
    env: Environment<'static>,
    dir: PathBuf,
}

impl Templates {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        let mut env = Environment::new();
        env.set_loader(minijinja::path_loader(&dir));
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        Self { env, dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Renders every part of template `name` with `variables`.
    ///
    /// A template without `body.txt` and `body.html` is `template_not_found`;
    /// a syntax error, an undefined variable or an unreadable file is
    /// `template_error`. Both are permanent.
    pub fn render(
        &self,
        name: &TemplateName,
        variables: &Map<String, Value>,
    ) -> Result<Rendered, TaskError> {
        self.render_named(name.as_str(), variables)
    }

    /// [`Templates::render`] by a name that may not have been checked.
    fn render_named(
        &self,
        name: &str,
        variables: &Map<String, Value>,
    ) -> Result<Rendered, TaskError> {
        let text = self.render_part(name, "body.txt", variables)?;
        let html = self.render_part(name, "body.html", variables)?;
        if text.is_none() && html.is_none() {
            return Err(TaskError::permanent(
                "template_not_found",
                format!(
                    "template {name} not found: {} has neither body.txt nor body.html",
                    self.dir.join(name).display()
                ),
            ));
        }
        let subject = self.render_part(name, "subject.txt", variables)?;
        Ok(Rendered {
            subject,
            text,
            html,
        })
    }

    fn render_part(
        &self,
        name: &str,
        part: &str,
        variables: &Map<String, Value>,
    ) -> Result<Option<String>, TaskError> {
        // `/` is the separator minijinja's path loader splits on; `name`
        // holds no `/` or `.`, so this stays inside `dir`.
        let path = format!("{name}/{part}");
        let template = match self.env.get_template(&path) {
            Ok(template) => template,
            Err(e) if e.kind() == ErrorKind::TemplateNotFound => return Ok(None),
            Err(e) => {
                return Err(TaskError::permanent(
                    "template_error",
                    format!("template {path} could not be loaded: {}", with_sources(&e)),
                ));
            }
        };
        template.render(variables).map(Some).map_err(|e| {
            TaskError::permanent(
                "template_error",
                format!("template {path} failed to render: {}", with_sources(&e)),
            )
        })
    }
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Templates").field("dir", &self.dir).finish()
    }
}

/// The error and its causes on one line: minijinja keeps the io error of an
/// unreadable file as the source, which its `Display` leaves out.
fn with_sources(error: &minijinja::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, name: &str, part: &str, source: &str) {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join(part), source).unwrap();
    }

    fn vars(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn renders_every_part_and_escapes_only_html() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "hello", "subject.txt", "Hi {{ name }}\n");
        write(dir.path(), "hello", "body.txt", "Dear {{ name }},\n");
        write(dir.path(), "hello", "body.html", "<p>Dear {{ name }}</p>");
        let templates = Templates::new(dir.path());
        let rendered = templates
            .render(
                &TemplateName::parse("hello").unwrap(),
                &vars(json!({ "name": "Tom & <Jerry>" })),
            )
            .unwrap();
        assert_eq!(rendered.subject.as_deref(), Some("Hi Tom & <Jerry>"));
        assert_eq!(rendered.text.as_deref(), Some("Dear Tom & <Jerry>,"));
        assert_eq!(
            rendered.html.as_deref(),
            Some("<p>Dear Tom &amp; &lt;Jerry&gt;</p>")
        );
    }

    #[test]
    fn the_shipped_welcome_template_renders() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let rendered = Templates::new(dir)
            .render(
                &TemplateName::parse("welcome").unwrap(),
                &vars(json!({ "name": "Ada" })),
            )
            .unwrap();
        assert_eq!(rendered.subject.as_deref(), Some("Welcome to Warren, Ada!"));
        assert!(rendered.text.unwrap().contains("Hello Ada,"));
        assert!(rendered.html.unwrap().contains("<p>Hello Ada,</p>"));
        // `product` is optional: `is defined` works under strict undefined.
        let with_product = Templates::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"))
            .render(
                &TemplateName::parse("welcome").unwrap(),
                &vars(json!({ "name": "Ada", "product": "Thumbnails" })),
            )
            .unwrap();
        assert!(
            with_product
                .text
                .unwrap()
                .contains("to use with Thumbnails")
        );
    }

    #[test]
    fn an_undefined_variable_is_a_template_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "hello", "body.txt", "Dear {{ nmae }}");
        let err = Templates::new(dir.path())
            .render(&TemplateName::parse("hello").unwrap(), &Map::new())
            .unwrap_err();
        assert_eq!(err.kind, "template_error");
        assert!(err.is_permanent());
        assert!(err.message.contains("hello/body.txt"), "{}", err.message);
    }

    #[test]
    fn a_syntax_error_is_a_template_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "broken", "body.html", "{% if %}");
        let err = Templates::new(dir.path())
            .render(&TemplateName::parse("broken").unwrap(), &Map::new())
            .unwrap_err();
        assert_eq!(err.kind, "template_error");
    }

    #[test]
    fn an_unknown_template_is_template_not_found() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "only_subject", "subject.txt", "Hi");
        let templates = Templates::new(dir.path());
        for name in ["missing", "only_subject"] {
            let err = templates
                .render(&TemplateName::parse(name).unwrap(), &Map::new())
                .unwrap_err();
            assert_eq!(err.kind, "template_not_found", "{name}");
            assert!(err.is_permanent());
        }
    }

    #[test]
    fn names_that_could_leave_the_directory_are_refused() {
        // `TemplateName` refuses them when the task is parsed (the
        // contract crate's tests list them); a name that skipped that
        // check still stays inside the directory: minijinja's loader
        // refuses `..` segments as well.
        let outer = tempfile::tempdir().unwrap();
        // A template outside templates_dir that traversal would reach.
        write(outer.path(), "secret", "body.txt", "leaked");
        let dir = outer.path().join("templates");
        std::fs::create_dir_all(&dir).unwrap();
        let templates = Templates::new(&dir);
        assert!(TemplateName::parse("../secret").is_err());
        let err = templates
            .render_named("../secret", &Map::new())
            .unwrap_err();
        assert_eq!(err.kind, "template_not_found");
    }
}
