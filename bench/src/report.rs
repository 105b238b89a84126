//! The results: a table for people, a JSON document for comparing runs.

use serde_json::{Map, Value, json};

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub section: &'static str,
    pub figure: String,
    pub warren: String,
    pub baseline: String,
    /// Warren over the baseline (or the figure's own ratio).
    pub ratio: Option<f64>,
    pub target: String,
    /// Whether the target was met, when there is one.
    pub met: Option<bool>,
}

/// Everything one run measured.
#[derive(Debug, Default)]
pub struct Report {
    /// Machine, broker, revision, settings.
    pub meta: Map<String, Value>,
    /// Every figure, per section.
    pub sections: Map<String, Value>,
    pub rows: Vec<Row>,
    /// Per-round figures and remarks, printed under the table.
    pub notes: Vec<String>,
}

impl Report {
    /// Adds a table line; each argument is one column.
    #[allow(clippy::too_many_arguments)]
    pub fn row(
        &mut self,
        section: &'static str,
        figure: impl Into<String>,
        warren: impl Into<String>,
        baseline: impl Into<String>,
        ratio: Option<f64>,
        target: impl Into<String>,
        met: Option<bool>,
    ) {
        self.rows.push(Row {
            section,
            figure: figure.into(),
            warren: warren.into(),
            baseline: baseline.into(),
            ratio,
            target: target.into(),
            met,
        });
    }

    pub fn note(&mut self, line: impl Into<String>) {
        let line = line.into();
        eprintln!("  {line}");
        self.notes.push(line);
    }

    pub fn to_json(&self) -> Value {
        let mut out = self.meta.clone();
        out.insert("sections".to_owned(), Value::Object(self.sections.clone()));
        out.insert(
            "targets".to_owned(),
            Value::Array(
                self.rows
                    .iter()
                    .filter_map(|r| {
                        r.met.map(|met| {
                            json!({
                                "section": r.section,
                                "figure": r.figure,
                                "target": r.target,
                                "met": met,
                            })
                        })
                    })
                    .collect(),
            ),
        );
        Value::Object(out)
    }

    /// The table, with a header naming the machine and the broker.
    pub fn table(&self) -> String {
        let headers = ["section", "figure", "Warren", "baseline", "ratio", "target"];
        let cells: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|r| {
                let target = match r.met {
                    Some(true) => format!("{} met", r.target),
                    Some(false) => format!("{} MISSED", r.target),
                    None => r.target.clone(),
                };
                [
                    r.section.to_owned(),
                    r.figure.clone(),
                    r.warren.clone(),
                    r.baseline.clone(),
                    r.ratio.map(|x| format!("{x:.2}")).unwrap_or_default(),
                    target,
                ]
            })
            .collect();
        let mut widths = headers.map(str::len);
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cols: &[String]| {
            let mut s = String::from("|");
            for (i, c) in cols.iter().enumerate() {
                let pad = widths[i] - c.chars().count();
                // Numbers right-aligned, words left-aligned.
                if (2..=4).contains(&i) {
                    s.push_str(&format!(" {}{} |", " ".repeat(pad), c));
                } else {
                    s.push_str(&format!(" {}{} |", c, " ".repeat(pad)));
                }
            }
            s
        };
        let mut out = String::new();
        let m = &self.meta;
        out.push_str(&format!(
            "Warren benchmark: {} cores, {} GiB, RabbitMQ {}, revision {}{}, {} build, N = {}, {} rounds{}\n\n",
            m["cores"],
            m["memory_gib"],
            m["rabbitmq_version"].as_str().unwrap_or("?"),
            m["git_revision"].as_str().map(|s| &s[..s.len().min(12)]).unwrap_or("?"),
            if m["git_dirty"] == true { " (uncommitted changes)" } else { "" },
            m["profile"].as_str().unwrap_or("?"),
            m["settings"]["n"],
            m["settings"]["rounds"],
            if m["settings"]["smoke"] == true { ", SMOKE (figures mean nothing)" } else { "" },
        ));
        out.push_str(&line(&headers.map(str::to_owned)));
        out.push('\n');
        out.push_str(&line(&widths.map(|w| "-".repeat(w))));
        out.push('\n');
        for row in &cells {
            out.push_str(&line(row));
            out.push('\n');
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                out.push_str(n);
                out.push('\n');
            }
        }
        out
    }
}

/// `12345.6` -> `12,346`.
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".to_owned();
    }
    let n = x.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// `>= 0.90` style target check.
pub fn at_least(x: f64, target: f64) -> Option<bool> {
    Some(x.is_finite() && x >= target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(f64::NAN), "n/a");
    }
}
