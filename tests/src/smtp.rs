//! A real SMTP server for integration tests: `tests/smtp_sink.py` (aiosmtpd) run as
//! a child process on a free port, with everything it receives or refuses collected
//! here. What the server does with a message is chosen by the recipients' local parts
//! (`reject550…`, `tempfail451x<N>…`, `slow<MS>…`, `hold…`; see the script's
//! docstring), so
//! give every test its own recipients, for example with a UUID suffix, and filter
//! with [`SmtpSink::messages_to`].
//!
//! A `slow` or `hold` DATA is announced as it starts ([`SmtpSink::wait_for_holding_to`]):
//! the worker is then mid-`DATA`, the moment a test kills it or sends it SIGTERM.
//! A `hold` one is answered only once the test calls [`SmtpSink::release`].
//!
//! Start one sink per test: its reader task lives on the runtime of the test that
//! started it, and `#[tokio::test]` gives each test a runtime of its own.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, bail};
use mail_parser::{HeaderForm, Message, MessageParser, MimeHeaders, PartType};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A mail the sink accepted with `250`.
#[derive(Debug, Clone, Deserialize)]
pub struct ReceivedMail {
    /// Envelope sender (`MAIL FROM`), empty for the null sender.
    pub mail_from: String,
    /// Envelope recipients (`RCPT TO`), bare addresses as the client sent them.
    pub rcpt_tos: Vec<String>,
    /// The raw message as received (CRLF line ends, decoded as UTF-8 lossily).
    pub data: String,
    /// When the sink accepted it, in seconds since the Unix epoch.
    pub at: f64,
}

/// A DATA transaction the sink refused (`451` or `550`).
#[derive(Debug, Clone, Deserialize)]
pub struct Rejection {
    pub code: u16,
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    /// When the sink refused it, in seconds since the Unix epoch.
    pub at: f64,
}

#[derive(Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum Event {
    Ready {
        port: u16,
    },
    Message(ReceivedMail),
    Rejected(Rejection),
    /// The client disconnected while the sink was still answering slowly.
    Aborted(Aborted),
    /// The sink started holding back its answer to a DATA.
    Holding(Aborted),
}

/// A DATA transaction whose client went away before the final reply (the
/// sink kept nothing), or, in [`SmtpSink::holding`], one whose reply the
/// sink started holding back.
#[derive(Debug, Clone, Deserialize)]
pub struct Aborted {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    pub at: f64,
}

#[derive(Default)]
struct Received {
    messages: Vec<ReceivedMail>,
    rejections: Vec<Rejection>,
    aborted: Vec<Aborted>,
    holding: Vec<Aborted>,
    /// Set when the sink's stdout closed: nothing more will arrive.
    gone: Option<String>,
}

#[derive(Default)]
struct Shared {
    received: Mutex<Received>,
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Received> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.received
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running `smtp_sink.py`; the process is killed when this is dropped.
pub struct SmtpSink {
    port: u16,
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
    /// Where [`SmtpSink::release`] writes.
    commands: tokio::sync::Mutex<ChildStdin>,
    _child: Child,
}

impl SmtpSink {
    /// Starts the sink on 127.0.0.1 with a port chosen by the kernel.
    ///
    /// The interpreter is `$TEST_PYTHON`, else `/usr/bin/python3` if present, else
    /// `python3` from `PATH`; it needs aiosmtpd.
    pub async fn start() -> anyhow::Result<SmtpSink> {
        let python = python();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp_sink.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "Could not run {} {}: is Python 3 installed?",
                    python.display(),
                    script.display()
                )
            })?;
        let stdout = child
            .stdout
            .take()
            .context("The SMTP sink's stdout was not piped")?;
        let mut lines = BufReader::new(stdout).lines();
        let commands = child
            .stdin
            .take()
            .context("The SMTP sink's stdin was not piped")?;

        let sink = format!("The SMTP sink ({} {})", python.display(), script.display());
        let hint = "It needs aiosmtpd: run `apt-get install python3-aiosmtpd` (or scripts/prepare), \
                    or point TEST_PYTHON at a python3 that has it. Its stderr is above.";
        let first = tokio::time::timeout(START_TIMEOUT, lines.next_line())
            .await
            .map_err(|_| {
                anyhow::anyhow!("{sink} did not report ready within {START_TIMEOUT:?}. {hint}")
            })?
            .with_context(|| format!("Reading the stdout of {sink} failed"))?;
        let port = match first.as_deref().map(serde_json::from_str::<Event>) {
            Some(Ok(Event::Ready { port })) => port,
            Some(_) => bail!("{sink} printed {first:?} instead of the ready event. {hint}"),
            None => {
                let status = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
                let status = match status {
                    Ok(Ok(status)) => status.to_string(),
                    _ => "status unknown".to_owned(),
                };
                bail!("{sink} exited before becoming ready ({status}). {hint}")
            }
        };

        let shared = Arc::new(Shared::default());
        let reader = tokio::spawn(read_events(lines, Arc::clone(&shared)));
        Ok(SmtpSink {
            port,
            shared,
            reader,
            commands: tokio::sync::Mutex::new(commands),
            _child: child,
        })
    }

    /// The port the sink listens on, at 127.0.0.1, without TLS or AUTH.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every accepted mail so far, in arrival order.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.shared.lock().messages.clone()
    }

    /// Every DATA whose client went away mid-answer, in arrival order.
    pub fn aborted(&self) -> Vec<Aborted> {
        self.shared.lock().aborted.clone()
    }

    /// Every DATA whose answer the sink started holding back, in arrival
    /// order.
    pub fn holding(&self) -> Vec<Aborted> {
        self.shared.lock().holding.clone()
    }

    /// Waits until the sink holds back its answer to at least `n` DATA
    /// transactions to `rcpt` (the client is then mid-`DATA`) and returns
    /// them.
    pub async fn wait_for_holding_to(
        &self,
        rcpt: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Aborted>> {
        self.wait(&format!("{n} held DATA to {rcpt}"), timeout, |r| {
            let to: Vec<_> = r
                .holding
                .iter()
                .filter(|m| has_rcpt(&m.rcpt_tos, rcpt))
                .cloned()
                .collect();
            (to.len() >= n).then_some(to)
        })
        .await
    }

    /// Waits until the sink holds back its answer to at least `n` DATA
    /// transactions in all, and returns them.
    pub async fn wait_for_holding(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Aborted>> {
        self.wait(&format!("{n} held DATA"), timeout, |r| {
            (r.holding.len() >= n).then(|| r.holding.clone())
        })
        .await
    }

    /// Answers every held DATA to `rcpt` (a `hold…` address), now and from
    /// now on.
    pub async fn release(&self, rcpt: &str) -> anyhow::Result<()> {
        let mut line = serde_json::json!({ "release": rcpt }).to_string();
        line.push('\n');
        let mut commands = self.commands.lock().await;
        commands.write_all(line.as_bytes()).await?;
        commands.flush().await?;
        Ok(())
    }

    /// Every refused DATA so far, in arrival order.
    pub fn rejections(&self) -> Vec<Rejection> {
        self.shared.lock().rejections.clone()
    }

    /// Accepted mail with `rcpt` (a bare address, any case) among its envelope recipients.
    pub fn messages_to(&self, rcpt: &str) -> Vec<ReceivedMail> {
        let received = self.shared.lock();
        received
            .messages
            .iter()
            .filter(|m| has_rcpt(&m.rcpt_tos, rcpt))
            .cloned()
            .collect()
    }

    /// Refusals with `rcpt` (a bare address, any case) among their envelope recipients.
    pub fn rejections_to(&self, rcpt: &str) -> Vec<Rejection> {
        let received = self.shared.lock();
        received
            .rejections
            .iter()
            .filter(|r| has_rcpt(&r.rcpt_tos, rcpt))
            .cloned()
            .collect()
    }

    /// Waits until at least `n` mails were accepted and returns all of them.
    pub async fn wait_for_messages(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<ReceivedMail>> {
        self.wait(&format!("{n} accepted mail(s)"), timeout, |r| {
            (r.messages.len() >= n).then(|| r.messages.clone())
        })
        .await
    }

    /// Waits until at least `n` mails to `rcpt` were accepted and returns all of those.
    pub async fn wait_for_messages_to(
        &self,
        rcpt: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<ReceivedMail>> {
        self.wait(&format!("{n} accepted mail(s) to {rcpt}"), timeout, |r| {
            let to: Vec<_> = r
                .messages
                .iter()
                .filter(|m| has_rcpt(&m.rcpt_tos, rcpt))
                .cloned()
                .collect();
            (to.len() >= n).then_some(to)
        })
        .await
    }

    /// Waits until at least `n` DATA transactions were refused and returns all refusals.
    pub async fn wait_for_rejections(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Rejection>> {
        self.wait(&format!("{n} refusal(s)"), timeout, |r| {
            (r.rejections.len() >= n).then(|| r.rejections.clone())
        })
        .await
    }

    async fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut(&Received) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register for a wake-up before looking, so an event in between is not missed.
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let received = self.shared.lock();
                if let Some(found) = ready(&received) {
                    return Ok(found);
                }
                if let Some(why) = &received.gone {
                    bail!("Waited for {what}, but {why}.\n{}", summary(&received));
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                bail!(
                    "Waited {timeout:?} for {what}.\n{}",
                    summary(&self.shared.lock())
                );
            }
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl ReceivedMail {
    /// The message parsed by mail-parser, for anything the helpers below do not cover.
    pub fn parsed(&self) -> Option<Message<'_>> {
        MessageParser::default().parse(self.data.as_bytes())
    }

    /// The decoded `Subject`.
    pub fn subject(&self) -> Option<String> {
        self.parsed()?.subject().map(str::to_owned)
    }

    /// The first header called `name` (any case), unfolded and with encoded words decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers(name).into_iter().next()
    }

    /// Every header called `name` (any case), unfolded and with encoded words decoded.
    pub fn headers(&self, name: &str) -> Vec<String> {
        let Some(message) = self.parsed() else {
            return Vec::new();
        };
        message
            .header_as(name, HeaderForm::Text)
            .iter()
            .map(|value| value.as_text().unwrap_or_default().to_owned())
            .collect()
    }

    /// The `Message-ID`, without its angle brackets.
    pub fn message_id(&self) -> Option<String> {
        self.parsed()?.message_id().map(str::to_owned)
    }

    /// The first `text/plain` body part, decoded (`None` if the mail has only HTML).
    pub fn text_body(&self) -> Option<String> {
        let message = self.parsed()?;
        match &message.text_part(0)?.body {
            PartType::Text(text) => Some(text.to_string()),
            _ => None,
        }
    }

    /// The first `text/html` body part, decoded (`None` if the mail has only plain text).
    pub fn html_body(&self) -> Option<String> {
        let message = self.parsed()?;
        match &message.html_part(0)?.body {
            PartType::Html(html) => Some(html.to_string()),
            _ => None,
        }
    }

    /// Every attachment as (file name, decoded bytes); the name is empty if it has none.
    pub fn attachments(&self) -> Vec<(String, Vec<u8>)> {
        let Some(message) = self.parsed() else {
            return Vec::new();
        };
        message
            .attachments()
            .map(|part| {
                let name = part.attachment_name().unwrap_or_default().to_owned();
                (name, part.contents().to_vec())
            })
            .collect()
    }
}

fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("TEST_PYTHON") {
        return python.into();
    }
    let system = Path::new("/usr/bin/python3");
    if system.exists() {
        return system.to_owned();
    }
    "python3".into()
}

fn has_rcpt(rcpt_tos: &[String], rcpt: &str) -> bool {
    rcpt_tos.iter().any(|r| r.eq_ignore_ascii_case(rcpt))
}

async fn read_events(mut lines: tokio::io::Lines<BufReader<ChildStdout>>, shared: Arc<Shared>) {
    let gone = loop {
        match lines.next_line().await {
            Ok(Some(line)) => match serde_json::from_str::<Event>(&line) {
                Ok(Event::Message(mail)) => shared.lock().messages.push(mail),
                Ok(Event::Rejected(rejection)) => shared.lock().rejections.push(rejection),
                Ok(Event::Aborted(aborted)) => shared.lock().aborted.push(aborted),
                Ok(Event::Holding(held)) => shared.lock().holding.push(held),
                Ok(Event::Ready { .. }) => {}
                Err(error) => eprintln!("smtp sink: unreadable line ({error}): {line:.200}"),
            },
            Ok(None) => break "the SMTP sink exited".to_owned(),
            Err(error) => break format!("reading the SMTP sink's output failed: {error}"),
        }
        shared.changed.notify_waiters();
    };
    shared.lock().gone = Some(gone);
    shared.changed.notify_waiters();
}

/// What arrived so far, for error messages.
fn summary(received: &Received) -> String {
    let mut out = format!("Accepted {} mail(s):", received.messages.len());
    for m in &received.messages {
        let subject = m.subject().unwrap_or_default();
        let _ = write!(
            out,
            "\n  from {:?} to {:?}: {subject:?}",
            m.mail_from, m.rcpt_tos
        );
    }
    let _ = write!(out, "\nRefused {}:", received.rejections.len());
    for r in &received.rejections {
        let _ = write!(
            out,
            "\n  {} from {:?} to {:?}",
            r.code, r.mail_from, r.rcpt_tos
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_multipart_mail_with_an_attachment() {
        let data = "From: a@example.com\r\nTo: b@example.com\r\n\
            Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nMessage-ID: <id-1@warren>\r\n\
            X-Long: one\r\n two\r\nMIME-Version: 1.0\r\n\
            Content-Type: multipart/mixed; boundary=\"m\"\r\n\r\n\
            --m\r\nContent-Type: multipart/alternative; boundary=\"a\"\r\n\r\n\
            --a\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello\r\n\
            --a\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hello</p>\r\n--a--\r\n\
            --m\r\nContent-Type: application/octet-stream\r\n\
            Content-Disposition: attachment; filename=\"r.bin\"\r\n\
            Content-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--m--\r\n";
        let mail = ReceivedMail {
            mail_from: "a@example.com".into(),
            rcpt_tos: vec!["b@example.com".into()],
            data: data.into(),
            at: 0.0,
        };
        assert_eq!(mail.subject().as_deref(), Some("Grüße"));
        assert_eq!(mail.message_id().as_deref(), Some("id-1@warren"));
        assert_eq!(mail.header("x-long").as_deref(), Some("one two"));
        assert_eq!(mail.text_body().as_deref(), Some("Hello"));
        assert_eq!(mail.html_body().as_deref(), Some("<p>Hello</p>"));
        assert_eq!(
            mail.attachments(),
            vec![("r.bin".to_owned(), vec![0, 1, 2])]
        );
    }

    #[test]
    fn a_text_only_mail_has_no_html_body() {
        let mail = ReceivedMail {
            mail_from: String::new(),
            rcpt_tos: Vec::new(),
            data: "Subject: s\r\n\r\nplain\r\n".into(),
            at: 0.0,
        };
        assert_eq!(mail.text_body().as_deref(), Some("plain\r\n"));
        assert_eq!(mail.html_body(), None);
    }
}
