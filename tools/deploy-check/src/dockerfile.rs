//! The `Dockerfile`, split into stages and instructions the way BuildKit
//! reads it, and the shell commands in its `RUN` lines.

use std::collections::BTreeMap;

use anyhow::bail;

/// One instruction of a Dockerfile, continuation lines joined.
#[derive(Debug, Clone)]
pub struct Instruction {
    /// Upper-case: `RUN`, `COPY`, ...
    pub keyword: String,
    pub args: String,
    /// 1-based line where it starts.
    pub line: usize,
}

impl Instruction {
    /// The arguments split into words; double and single quotes group.
    pub fn words(&self) -> Vec<String> {
        shell_words(&self.args)
    }

    /// The JSON (exec) form, e.g. `ENTRYPOINT ["/usr/local/bin/x"]`.
    pub fn exec_form(&self) -> Option<Vec<String>> {
        serde_json::from_str(&self.args).ok()
    }
}

/// A build stage: `FROM base AS name` and what follows.
#[derive(Debug, Clone)]
pub struct Stage {
    pub name: Option<String>,
    pub base: String,
    pub instructions: Vec<Instruction>,
}

/// A Dockerfile, split the way BuildKit's parser splits it: comment lines
/// dropped (also inside continuations), `\` continuations joined.
#[derive(Debug, Clone)]
pub struct Dockerfile {
    pub stages: Vec<Stage>,
}

impl Dockerfile {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut stages: Vec<Stage> = Vec::new();
        let mut pending = String::new();
        let mut start = 0;
        let mut instructions = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if pending.is_empty() {
                start = i + 1;
            }
            match line.strip_suffix('\\') {
                Some(body) => {
                    pending.push_str(body);
                    pending.push(' ');
                }
                None => {
                    pending.push_str(line);
                    let (keyword, args) = pending
                        .split_once(char::is_whitespace)
                        .unwrap_or((&pending, ""));
                    instructions.push(Instruction {
                        keyword: keyword.to_ascii_uppercase(),
                        args: args.trim().to_owned(),
                        line: start,
                    });
                    pending.clear();
                }
            }
        }
        if !pending.is_empty() {
            bail!("the Dockerfile ends inside a continuation (line {start})");
        }
        for instruction in instructions {
            if instruction.keyword == "FROM" {
                let words: Vec<String> = instruction
                    .words()
                    .into_iter()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let (base, name) = match words.as_slice() {
                    [base] => (base.clone(), None),
                    [base, as_, name] if as_.eq_ignore_ascii_case("as") => {
                        (base.clone(), Some(name.clone()))
                    }
                    _ => bail!(
                        "line {}: cannot read FROM {}",
                        instruction.line,
                        instruction.args
                    ),
                };
                stages.push(Stage {
                    name,
                    base,
                    instructions: Vec::new(),
                });
            } else if let Some(stage) = stages.last_mut() {
                stage.instructions.push(instruction);
            } else if instruction.keyword != "ARG" {
                bail!(
                    "line {}: {} before the first FROM",
                    instruction.line,
                    instruction.keyword
                );
            }
        }
        Ok(Self { stages })
    }

    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name.as_deref() == Some(name))
    }

    /// `name` and the stages it builds on, nearest first.
    pub fn lineage<'a>(&'a self, name: &str) -> Vec<&'a Stage> {
        let mut chain = Vec::new();
        let mut next = self.stage(name);
        while let Some(stage) = next {
            chain.push(stage);
            next = self.stage(&stage.base);
            if chain.len() > self.stages.len() {
                break; // a cycle; the checks report the base anyway
            }
        }
        chain
    }

    /// The image a stage finally builds on (`debian:bookworm-slim`).
    pub fn root_image(&self, name: &str) -> Option<String> {
        self.lineage(name).last().map(|s| s.base.clone())
    }

    /// The stage's instructions with its ancestors', oldest first.
    pub fn effective_instructions(&self, name: &str) -> Vec<&Instruction> {
        self.lineage(name)
            .into_iter()
            .rev()
            .flat_map(|s| s.instructions.iter())
            .collect()
    }

    /// The environment a container of stage `name` starts with (`ENV`,
    /// inherited ones included).
    pub fn env(&self, name: &str) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for instruction in self.effective_instructions(name) {
            if instruction.keyword != "ENV" {
                continue;
            }
            let words = instruction.words();
            if words.first().is_some_and(|w| !w.contains('=')) {
                // The legacy form: `ENV KEY value with spaces`.
                if let Some((key, value)) = instruction.args.split_once(char::is_whitespace) {
                    env.insert(key.to_owned(), value.trim().to_owned());
                }
                continue;
            }
            for word in words {
                if let Some((key, value)) = word.split_once('=') {
                    env.insert(key.to_owned(), value.to_owned());
                }
            }
        }
        env
    }

    /// The last `keyword` instruction in effect for stage `name`.
    pub fn last(&self, name: &str, keyword: &str) -> Option<&Instruction> {
        self.effective_instructions(name)
            .into_iter()
            .rev()
            .find(|i| i.keyword == keyword)
    }

    /// Every instruction `keyword` in effect for stage `name`.
    pub fn all(&self, name: &str, keyword: &str) -> Vec<&Instruction> {
        self.effective_instructions(name)
            .into_iter()
            .filter(|i| i.keyword == keyword)
            .collect()
    }
}

/// Splits `text` into words, the way a shell groups quoted text (quotes
/// removed, no expansion).
pub fn shell_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in text.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The `cargo build` command in a shell script (up to the next `;`, `&&`
/// or the end), with runs of whitespace collapsed.
pub fn cargo_build_command(script: &str) -> Option<String> {
    let start = script.find("cargo build")?;
    let rest = &script[start..];
    let end = [rest.find(';'), rest.find("&&"), rest.find('\n')]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(rest.len());
    Some(rest[..end].split_whitespace().collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_continuations_comments_and_stages() {
        let file = Dockerfile::parse(
            "# syntax=docker/dockerfile:1\nARG X=1\nFROM rust:1 AS builder\nRUN a; \\\n    # inside\n    b\nFROM debian AS base\nENV A=1 B=\"two words\"\nFROM base AS app\nENV C 3\nUSER 10001\nENTRYPOINT [\"/bin/app\"]\n",
        )
        .unwrap();
        assert_eq!(file.stages.len(), 3);
        assert_eq!(file.stage("builder").unwrap().instructions[0].args, "a;  b");
        let env = file.env("app");
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "two words");
        assert_eq!(env["C"], "3");
        assert_eq!(file.root_image("app").unwrap(), "debian");
        assert_eq!(
            file.last("app", "ENTRYPOINT").unwrap().exec_form().unwrap(),
            vec!["/bin/app"]
        );
    }

    #[test]
    fn cargo_build_command_stops_at_the_end_of_the_shell_command() {
        assert_eq!(
            cargo_build_command("set -eux;  cargo build  --release --bin a; cp x y").unwrap(),
            "cargo build --release --bin a"
        );
        assert_eq!(
            cargo_build_command("cargo build --release && cp").unwrap(),
            "cargo build --release"
        );
    }
}
