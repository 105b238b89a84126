//! The email worker's settings tree: the shared sections every worker has
//! (broker, consumer, idempotency, telemetry, ops) plus `[email]` and
//! `[email.smtp]`.
//!
//! Defaults come from [`Default`], then `warren.toml` (or `$WARREN_CONFIG`),
//! then `WARREN_EMAIL__SMTP__HOST`-style environment variables; see
//! [`warren::settings::load`]. The SMTP password is a secret: it never shows
//! in `Debug` output.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use warren::settings::{
    BrokerSettings, ConsumerSettings, IdempotencySettings, OpsSettings, SettingsError,
    TelemetrySettings,
};

/// Everything the email worker is configured with.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub broker: BrokerSettings,
    pub consumer: ConsumerSettings,
    pub idempotency: IdempotencySettings,
    pub telemetry: TelemetrySettings,
    /// `/metrics`, `/healthz`, `/readyz`; port 9401 by default.
    pub ops: OpsSettings,
    /// The Celery bridge and result backend (docs/celery.md).
    pub celery: warren::celery::CelerySettings,
    pub email: EmailSettings,
}

/// The email worker's default ops port.
pub const DEFAULT_OPS_PORT: u16 = 9401;

impl Default for Settings {
    fn default() -> Self {
        Self {
            broker: BrokerSettings::default(),
            consumer: ConsumerSettings::default(),
            idempotency: IdempotencySettings::default(),
            telemetry: TelemetrySettings::default(),
            ops: OpsSettings::on_port(DEFAULT_OPS_PORT),
            celery: warren::celery::CelerySettings::default(),
            email: EmailSettings::default(),
        }
    }
}

impl Settings {
    /// Loads the layered settings (defaults, file, environment).
    pub fn load() -> Result<Self, SettingsError> {
        warren::settings::load::<Self>()
    }

    /// The sections the shared runtime needs, for `warren::App`.
    pub fn worker(&self) -> warren::settings::WorkerSettings {
        warren::settings::WorkerSettings {
            broker: self.broker.clone(),
            consumer: self.consumer.clone(),
            idempotency: self.idempotency.clone(),
            telemetry: self.telemetry.clone(),
            ops: self.ops.clone(),
            celery: self.celery.clone(),
        }
    }
}

/// Where sent mail goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// Each message is written to `outbox_dir` as an `.eml` file. The
    /// default, so a fresh checkout never mails real people.
    #[default]
    Outbox,
    /// Each message is delivered to the SMTP server of `[email.smtp]`.
    Smtp,
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Outbox => "outbox",
            TransportKind::Smtp => "smtp",
        }
    }
}

/// `[email]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailSettings {
    pub transport: TransportKind,
    /// The sender of tasks that name none, e.g. `Warren <warren@localhost>`.
    /// Its domain is also the right-hand side of every Message-ID.
    pub default_from: String,
    /// Where the outbox transport writes `<task id>.eml` files.
    pub outbox_dir: PathBuf,
    /// Holds one folder per template: `<name>/subject.txt`,
    /// `<name>/body.txt`, `<name>/body.html`.
    pub templates_dir: PathBuf,
    /// Messages per second this replica hands to the transport; 0 means
    /// unlimited. Per replica, so the fleet's rate is this times replicas.
    pub rate_limit_per_second: u32,
    /// Cap on the total decoded size of a message's attachments.
    pub max_attachment_bytes: usize,
    /// Bound on one delivery, connection included (and on each SMTP
    /// command), so a server that stalls mid-DATA cannot hold a task.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Who tasks may send as (`from`, `reply_to`): addresses and `@domain`
    /// patterns, or `*` for anyone. Empty: anyone with the outbox
    /// transport, the domain of `default_from` only with SMTP. A sender
    /// outside it is parked as `from_not_allowed` (see `sender.rs`).
    pub allowed_from: Vec<String>,
    pub smtp: SmtpSettings,
}

impl Default for EmailSettings {
    fn default() -> Self {
        Self {
            transport: TransportKind::Outbox,
            default_from: "Warren <warren@localhost>".to_owned(),
            outbox_dir: PathBuf::from("outbox"),
            templates_dir: PathBuf::from("templates"),
            rate_limit_per_second: 0,
            max_attachment_bytes: 5 * 1024 * 1024,
            send_timeout: Duration::from_secs(30),
            allowed_from: Vec::new(),
            smtp: SmtpSettings::default(),
        }
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS; refusing to upgrade is an
    /// error, so credentials never travel in clear. Port 587 by default.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS). Port 465 by default.
    Implicit,
    /// No encryption at all: for a local relay or a test server only.
    /// Port 25 by default.
    None,
}

/// `[email.smtp]`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSettings {
    pub host: String,
    /// Defaults by TLS mode; see [`SmtpSettings::port`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub tls: SmtpTls,
    /// Authenticate only when this is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Used only with `username`. Secret. From the environment it is read
    /// as it is: `WARREN_EMAIL__SMTP__PASSWORD=0123456` is the password
    /// `0123456` (the older quoted form `'"0123456"'` means the same).
    #[serde(with = "warren::settings::secret")]
    pub password: SecretString,
    /// Most SMTP connections this replica keeps open to one destination
    /// host (its pool); also the most emails in flight to that host. A
    /// server that answers `421` (too many connections) gets fewer, for a
    /// while.
    pub pool_max_size: u32,
    /// Send a message's MAIL, RCPT and DATA commands in one write when the
    /// server offers `PIPELINING` (RFC 2920). Off: one command, one reply.
    pub pipelining: bool,
    /// A pooled connection unused for this long is closed instead of
    /// reused (servers drop idle clients; Postfix after 300 s).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Bound on opening a connection: TCP connect, TLS handshake, greeting,
    /// EHLO and AUTH.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for SmtpSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: None,
            tls: SmtpTls::Starttls,
            username: None,
            password: SecretString::from(""),
            pool_max_size: 10,
            pipelining: true,
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl SmtpSettings {
    /// The configured port, or the usual one for the TLS mode.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Implicit => 465,
            SmtpTls::None => 25,
        })
    }
}

impl fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Say whether a password is set, never what it is.
        let password = if self.password.expose_secret().is_empty() {
            "<unset>"
        } else {
            "***"
        };
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port())
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &password)
            .field("pool_max_size", &self.pool_max_size)
            .field("pipelining", &self.pipelining)
            .field("idle_timeout", &self.idle_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_smtp_password() {
        let mut settings = Settings::default();
        settings.email.smtp.username = Some("mailer".to_owned());
        settings.email.smtp.password = SecretString::from("hunter2");
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("password: \"***\""), "{shown}");
        assert!(shown.contains("mailer"), "{shown}");
    }

    #[test]
    fn defaults_load_through_figment() {
        // figment seeds itself with the serialized defaults; this catches a
        // field whose Serialize and Deserialize disagree. Assumes no
        // `warren.toml` next to the crate and no stray WARREN_EMAIL__ vars.
        let settings = Settings::load().unwrap();
        assert_eq!(settings.email.smtp.pool_max_size, 10);
        assert_eq!(settings.email.smtp.connect_timeout, Duration::from_secs(10));
        assert!(settings.email.smtp.pipelining);
        assert_eq!(settings.email.smtp.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn port_defaults_follow_the_tls_mode() {
        let mut smtp = SmtpSettings::default();
        assert_eq!(smtp.port(), 587);
        smtp.tls = SmtpTls::Implicit;
        assert_eq!(smtp.port(), 465);
        smtp.tls = SmtpTls::None;
        assert_eq!(smtp.port(), 25);
        smtp.port = Some(2525);
        assert_eq!(smtp.port(), 2525);
    }

    #[test]
    fn defaults_survive_a_serialize_deserialize_round_trip() {
        // figment seeds its defaults by serializing `Settings::default()` and
        // reads them back through `Deserialize`, so both halves must agree.
        let mut original = Settings::default();
        original.email.smtp.password = SecretString::from("s3cret");
        let json = serde_json::to_value(&original).expect("settings serialize");
        let back: Settings = serde_json::from_value(json).expect("settings deserialize");
        assert_eq!(back.email.smtp.password.expose_secret(), "s3cret");
        assert_eq!(back.email.smtp.port, None);
        assert_eq!(back.email.transport, TransportKind::Outbox);
        assert_eq!(back.email.send_timeout, Duration::from_secs(30));
        assert_eq!(back.email.max_attachment_bytes, 5 * 1024 * 1024);
    }

    #[test]
    fn tls_modes_and_durations_parse_from_their_text_forms() {
        let smtp: SmtpSettings = serde_json::from_value(serde_json::json!({
            "host": "smtp.example.org",
            "tls": "implicit",
            "connect_timeout": "3s",
        }))
        .expect("smtp settings parse");
        assert_eq!(smtp.tls, SmtpTls::Implicit);
        assert_eq!(smtp.port(), 465);
        assert_eq!(smtp.connect_timeout, Duration::from_secs(3));
        let none: SmtpTls = serde_json::from_value(serde_json::json!("none")).expect("tls parses");
        assert_eq!(none, SmtpTls::None);
    }

    #[test]
    fn unknown_email_keys_are_rejected() {
        let result: Result<EmailSettings, _> =
            serde_json::from_value(serde_json::json!({ "transprot": "smtp" }));
        assert!(result.is_err());
    }
}
