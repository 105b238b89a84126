//! Schedules: parsed from the settings into values that are valid once
//! held, each error naming the schedule and the field; and the arithmetic
//! of their fires (next, previous, the deterministic task id).
//!
//! Cron expressions have six fields (seconds first; five are accepted too)
//! and are evaluated in the schedule's IANA time zone by croner, whose
//! daylight-saving rules are the documented ones: a fixed time that falls
//! in a spring-forward gap fires at the first instant after the gap; a
//! fixed time in a fall-back overlap fires once, at its first occurrence;
//! wildcard and step fields fire for each wall-clock match. Intervals
//! (`every = "30s"`) are aligned on the Unix epoch, so every leader computes
//! the same fire times.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use warren::Task;
use warren::contract::MAX_PRIORITY;
use warren_tasks::ParseError;
use warren_tasks::email::{EmailAddress, EmailRequest, ParsePolicy, SendEmail};
use warren_tasks::image::{ThumbnailSpec, ThumbnailTask};

/// What to do with fires missed by more than `conductor.misfire_grace`
/// (no leader, or the broker down). Fires missed by less are all made,
/// late.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Misfire {
    /// Drop them; go on with the next fire.
    #[default]
    Skip,
    /// Make the latest of them, once.
    RunOnce,
}

/// One `[[schedules]]` entry of the settings, as written.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettings {
    /// Unique; `[A-Za-z0-9._-]`. The task ids are `{name}@{time}`.
    pub name: String,
    /// A cron expression (`0 0 9 * * MON`: seconds, minutes, hours, day of
    /// month, month, day of week). Not with `every`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The IANA time zone of `cron` (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// An interval (`30s`, `5m`), aligned on the Unix epoch. Not with
    /// `cron`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub every: Option<Duration>,
    /// The task type (its routing key), e.g. `email.send`.
    pub task_type: String,
    /// The task body.
    #[serde(default = "empty_object")]
    pub payload: Value,
    /// 0-9.
    #[serde(default)]
    pub priority: u8,
    #[serde(default)]
    pub misfire: Misfire,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// A schedule that cannot be used, naming it and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule {schedule:?}, field {field}: {message}")]
pub struct ScheduleError {
    pub schedule: String,
    pub field: &'static str,
    pub message: String,
}

fn refuse(schedule: &str, field: &'static str, message: impl Into<String>) -> ScheduleError {
    ScheduleError {
        schedule: schedule.to_owned(),
        field,
        message: message.into(),
    }
}

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Timing {
    Cron {
        expression: String,
        cron: Box<Cron>,
        zone: Tz,
    },
    Every(Duration),
}

/// A valid schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    name: String,
    task_type: String,
    payload: Value,
    priority: u8,
    misfire: Misfire,
    timing: Timing,
}

impl Schedule {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn task_type(&self) -> &str {
        &self.task_type
    }
    pub fn payload(&self) -> &Value {
        &self.payload
    }
    pub fn priority(&self) -> u8 {
        self.priority
    }
    pub fn misfire(&self) -> Misfire {
        self.misfire
    }
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// Checks one schedule: its name, timing, task type (a work queue of the
    /// contract crate is bound for it) and payload (as its worker would).
    pub fn parse(raw: &ScheduleSettings) -> Result<Self, ScheduleError> {
        let name = raw.name.as_str();
        let name_ok = !name.is_empty()
            && name.len() <= 100
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !name_ok {
            return Err(refuse(
                name,
                "name",
                "must be 1 to 100 characters of [A-Za-z0-9._-]",
            ));
        }
        let timing = match (&raw.cron, raw.every) {
            (Some(_), Some(_)) => {
                return Err(refuse(name, "every", "give cron or every, not both"));
            }
            (None, None) => return Err(refuse(name, "cron", "give cron or every")),
            (None, Some(every)) => {
                if every < Duration::from_secs(1) || every.subsec_nanos() != 0 {
                    return Err(refuse(name, "every", "must be whole seconds, at least 1s"));
                }
                if raw.time_zone.is_some() {
                    return Err(refuse(
                        name,
                        "time_zone",
                        "applies to cron only (an interval has no wall clock)",
                    ));
                }
                Timing::Every(every)
            }
            (Some(expression), None) => {
                let cron = CronParser::builder()
                    .seconds(Seconds::Optional)
                    .build()
                    .parse(expression)
                    .map_err(|e| {
                        refuse(
                            name,
                            "cron",
                            format!("{expression:?} is not a cron expression: {e}"),
                        )
                    })?;
                let zone_name = raw.time_zone.as_deref().unwrap_or("UTC");
                let zone = Tz::from_str(zone_name).map_err(|_| {
                    refuse(
                        name,
                        "time_zone",
                        format!("{zone_name:?} is not an IANA time zone like Europe/Berlin"),
                    )
                })?;
                Timing::Cron {
                    expression: expression.clone(),
                    cron: Box::new(cron),
                    zone,
                }
            }
        };
        if raw.priority > MAX_PRIORITY {
            return Err(refuse(
                name,
                "priority",
                format!("{} is out of range 0-{MAX_PRIORITY}", raw.priority),
            ));
        }
        check_task_type(name, &raw.task_type)?;
        check_payload(name, &raw.task_type, &raw.payload)?;
        let schedule = Self {
            name: name.to_owned(),
            task_type: raw.task_type.clone(),
            payload: raw.payload.clone(),
            priority: raw.priority,
            misfire: raw.misfire,
            timing,
        };
        if schedule.next_after(Utc::now()).is_none() {
            return Err(refuse(name, "cron", "never fires"));
        }
        Ok(schedule)
    }

    /// The first fire strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.timing {
            Timing::Every(every) => {
                let step = i64::try_from(every.as_secs()).ok()?;
                let secs = t.timestamp().div_euclid(step) * step + step;
                DateTime::from_timestamp(secs, 0)
            }
            Timing::Cron { cron, zone, .. } => cron
                .find_next_occurrence(&t.with_timezone(zone), false)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
        }
    }

    /// The last fire at or before `t`.
    pub fn at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.timing {
            Timing::Every(every) => {
                let step = i64::try_from(every.as_secs()).ok()?;
                DateTime::from_timestamp(t.timestamp().div_euclid(step) * step, 0)
            }
            Timing::Cron { cron, zone, .. } => cron
                .find_previous_occurrence(&t.with_timezone(zone), true)
                .ok()
                .map(|d| d.with_timezone(&Utc)),
        }
    }

    /// The task id of the fire at `at`: `{schedule}@{RFC 3339 UTC}`, the
    /// same whichever conductor makes it.
    pub fn task_id(&self, at: DateTime<Utc>) -> String {
        format!(
            "{}@{}",
            self.name,
            at.to_rfc3339_opts(SecondsFormat::Secs, true)
        )
    }
}

/// The schedule name and fire time of a conductor's task id.
pub fn parse_task_id(id: &str) -> Option<(&str, DateTime<Utc>)> {
    let (name, at) = id.rsplit_once('@')?;
    let at = DateTime::parse_from_rfc3339(at).ok()?;
    Some((name, at.with_timezone(&Utc)))
}

/// Checks every schedule, and that no two share a name.
pub fn parse_all(raw: &[ScheduleSettings]) -> Result<Vec<Schedule>, ScheduleError> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        if !seen.insert(r.name.as_str()) {
            return Err(refuse(
                &r.name,
                "name",
                "two schedules have this name; names must be unique (they make the task ids)",
            ));
        }
        out.push(Schedule::parse(r)?);
    }
    Ok(out)
}

/// Whether an AMQP topic binding key matches a routing key.
fn topic_matches(binding: &[&str], key: &[&str]) -> bool {
    match (binding.first(), key.first()) {
        (None, None) => true,
        (Some(&"#"), _) => {
            topic_matches(&binding[1..], key)
                || (!key.is_empty() && topic_matches(binding, &key[1..]))
        }
        (Some(&"*"), Some(_)) => topic_matches(&binding[1..], &key[1..]),
        (Some(b), Some(k)) if b == k => topic_matches(&binding[1..], &key[1..]),
        _ => false,
    }
}

fn check_task_type(name: &str, task_type: &str) -> Result<(), ScheduleError> {
    let key: Vec<&str> = task_type.split('.').collect();
    let bound = warren_tasks::WORK_QUEUES.iter().any(|q| {
        q.binding_keys
            .iter()
            .any(|b| topic_matches(&b.split('.').collect::<Vec<_>>(), &key))
    });
    if bound {
        return Ok(());
    }
    let queues: Vec<String> = warren_tasks::WORK_QUEUES
        .iter()
        .map(|q| format!("{} ({})", q.stem, q.binding_keys.join(", ")))
        .collect();
    Err(refuse(
        name,
        "task_type",
        format!(
            "no work queue is bound for {task_type:?}; the queues are {}",
            queues.join(", ")
        ),
    ))
}

/// The sender the email worker would fill in; only its validity matters.
const PLACEHOLDER_FROM: &str = "Warren <warren@localhost>";
/// The email worker's default `email.max_attachment_bytes`.
const MAX_ATTACHMENT_BYTES: usize = 5 * 1024 * 1024;

fn check_payload(name: &str, task_type: &str, payload: &Value) -> Result<(), ScheduleError> {
    let refused = |e: &dyn std::fmt::Display| {
        refuse(name, "payload", format!("{task_type} would refuse it: {e}"))
    };
    if task_type == SendEmail::TYPE {
        let wire: SendEmail = serde_json::from_value(payload.clone()).map_err(|e| refused(&e))?;
        let from = EmailAddress::parse("default_from", PLACEHOLDER_FROM)
            .map_err(|e| refused(&e.message))?;
        let policy = ParsePolicy {
            default_from: &from,
            max_attachment_bytes: MAX_ATTACHMENT_BYTES,
        };
        EmailRequest::parse(wire, &policy).map_err(|e| refused(&error_text(&e)))?;
    } else if task_type == ThumbnailTask::TYPE {
        let wire: ThumbnailTask =
            serde_json::from_value(payload.clone()).map_err(|e| refused(&e))?;
        let policy = warren_store::policy(&warren_store::ImageSettings::default())
            .map_err(|e| refused(&e))?;
        ThumbnailSpec::parse(wire, name, &policy).map_err(|e| refused(&error_text(&e)))?;
    }
    Ok(())
}

fn error_text(e: &ParseError) -> String {
    format!("{} ({})", e.message, e.kind)
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    /// A wall-clock time in a zone (the earlier one of a repeated hour).
    fn local(zone: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Option<DateTime<Utc>> {
        zone.with_ymd_and_hms(y, mo, d, h, mi, s)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
    }

    fn raw(name: &str) -> ScheduleSettings {
        ScheduleSettings {
            name: name.into(),
            cron: Some("0 0 2 * * *".into()),
            time_zone: Some("Europe/Berlin".into()),
            every: None,
            task_type: "email.send".into(),
            payload: json!({"to": "ops@example.com", "subject": "Clean-up", "text": "done"}),
            priority: 0,
            misfire: Misfire::Skip,
        }
    }

    fn field(r: &ScheduleSettings) -> (String, &'static str) {
        let e = Schedule::parse(r).unwrap_err();
        (e.schedule, e.field)
    }

    #[test]
    fn bad_input_names_the_schedule_and_the_field() {
        let mut r = raw("nightly");
        r.cron = Some("0 0 25 * * *".into());
        assert_eq!(field(&r), ("nightly".into(), "cron"));
        let mut r = raw("nightly");
        r.time_zone = Some("Mars/Olympus".into());
        assert_eq!(field(&r), ("nightly".into(), "time_zone"));
        let mut r = raw("nightly");
        r.task_type = "report.build".into();
        assert_eq!(field(&r), ("nightly".into(), "task_type"));
        let mut r = raw("nightly");
        r.payload = json!({"to": "not-an-address", "subject": "x", "text": "y"});
        let e = Schedule::parse(&r).unwrap_err();
        assert_eq!(e.field, "payload");
        assert!(e.message.contains("email.send would refuse it"), "{e}");
        let mut r = raw("nightly");
        r.every = Some(Duration::from_secs(30));
        assert_eq!(field(&r), ("nightly".into(), "every"));
        let err = parse_all(&[raw("a"), raw("b"), raw("a")]).unwrap_err();
        assert_eq!((err.schedule.as_str(), err.field), ("a", "name"));
        assert_eq!(
            err.to_string(),
            "schedule \"a\", field name: two schedules have this name; names must be unique (they make the task ids)"
        );
        assert!(parse_all(&[raw("a"), raw("b")]).is_ok());
    }

    #[test]
    fn intervals_are_aligned_on_the_epoch() {
        let mut r = raw("tick");
        r.cron = None;
        r.time_zone = None;
        r.every = Some(Duration::from_secs(30));
        let s = Schedule::parse(&r).unwrap();
        let t = DateTime::from_timestamp(1_000_000_015, 0).unwrap();
        assert_eq!(s.next_after(t).unwrap().timestamp(), 1_000_000_020);
        assert_eq!(s.at_or_before(t).unwrap().timestamp(), 999_999_990);
        let at = s.next_after(t).unwrap();
        assert_eq!(s.task_id(at), "tick@2001-09-09T01:47:00Z");
        assert_eq!(parse_task_id(&s.task_id(at)), Some(("tick", at)));
    }

    /// Europe/Berlin: on 2026-03-29 clocks jump from 02:00 to 03:00; on
    /// 2026-10-25 they fall back from 03:00 to 02:00. The clock here is the
    /// `t` each question is asked at, not the wall clock.
    #[test]
    fn daylight_saving_transitions_follow_the_documented_rule() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let mut r = raw("at-0230");
        r.cron = Some("0 30 2 * * *".into());
        let s = Schedule::parse(&r).unwrap();
        // Spring forward: 02:30 does not exist; it fires at 03:00 CEST, the
        // first instant after the gap, once.
        let before = local(berlin, 2026, 3, 28, 12, 0, 0).unwrap();
        let fire = s.next_after(before).unwrap();
        assert_eq!(
            fire.with_timezone(&berlin).to_rfc3339(),
            "2026-03-29T03:00:00+02:00"
        );
        assert_eq!(fire.to_rfc3339(), "2026-03-29T01:00:00+00:00");
        let after = s.next_after(fire).unwrap();
        assert_eq!(
            after.with_timezone(&berlin).to_rfc3339(),
            "2026-03-30T02:30:00+02:00"
        );
        // Fall back: 02:30 happens twice; it fires once, at the first
        // (CEST, 00:30 UTC), not again an hour later.
        let before = local(berlin, 2026, 10, 24, 12, 0, 0).unwrap();
        let fire = s.next_after(before).unwrap();
        assert_eq!(fire.to_rfc3339(), "2026-10-25T00:30:00+00:00");
        let after = s.next_after(fire).unwrap();
        assert_eq!(
            after.with_timezone(&berlin).to_rfc3339(),
            "2026-10-26T02:30:00+01:00"
        );
        // An hourly wildcard schedule fires for each wall-clock hour: the
        // repeated 02:00 twice, an hour apart.
        let mut r = raw("hourly");
        r.cron = Some("0 0 * * * *".into());
        let s = Schedule::parse(&r).unwrap();
        let t = local(berlin, 2026, 10, 25, 1, 30, 0).unwrap();
        let first = s.next_after(t).unwrap();
        let second = s.next_after(first).unwrap();
        assert_eq!(first.to_rfc3339(), "2026-10-25T00:00:00+00:00");
        assert_eq!(second.to_rfc3339(), "2026-10-25T01:00:00+00:00");
    }

    #[test]
    fn the_seeds_schedules_parse() {
        let mut r = raw("send-digest-weekly");
        r.cron = Some("0 0 9 * * MON".into());
        let s = Schedule::parse(&r).unwrap();
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let sunday = local(berlin, 2026, 11, 29, 12, 0, 0).unwrap();
        assert_eq!(
            s.next_after(sunday)
                .unwrap()
                .with_timezone(&berlin)
                .to_rfc3339(),
            "2026-11-30T09:00:00+01:00"
        );
    }

    #[test]
    fn topic_binding_keys_match_as_the_broker_does() {
        let m = |b: &str, k: &str| {
            topic_matches(
                &b.split('.').collect::<Vec<_>>(),
                &k.split('.').collect::<Vec<_>>(),
            )
        };
        assert!(m("email.#", "email.send"));
        assert!(m("email.#", "email"));
        assert!(m("*.send", "email.send"));
        assert!(!m("image.#", "email.send"));
        assert!(m("#", "a.b.c"));
    }
}
