//! Warren's conductor: periodic tasks from cron expressions (with seconds,
//! in a time zone) and intervals, made by exactly one active leader whose
//! lock the broker holds. It replaces Celery Beat; see
//! `docs/conductor.md`.
//!
//! The rooms: [`schedule`] (settings into valid schedules, fire times, the
//! deterministic task id), [`leader`] (the lock, fencing, the stream's
//! tail, the fires), [`state`] (what `GET /v1/schedules` shows),
//! [`settings`] and [`metrics`].

pub mod chord;
pub mod leader;
pub mod metrics;
pub mod schedule;
pub mod settings;
pub mod state;

pub use leader::Conductor;
pub use schedule::{Misfire, Schedule, ScheduleError, ScheduleSettings};
pub use settings::Settings;
