//! Tests of the test harness itself: `SmtpSink` spoken to over TCP by a minimal
//! hand-written SMTP client, so a failure here points at the sink, not at Warren.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use warren_tests::smtp::SmtpSink;
use warren_tests::{WAIT, rcpt};

/// Just enough SMTP to drive the sink: one command, one (possibly multi-line) reply.
struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    async fn connect(port: u16) -> anyhow::Result<Client> {
        let (read, writer) = TcpStream::connect(("127.0.0.1", port)).await?.into_split();
        let mut client = Client {
            reader: BufReader::new(read),
            writer,
        };
        expect(client.reply().await?, 220, "greeting")?;
        expect(client.command("EHLO test.local").await?, 250, "EHLO")?;
        Ok(client)
    }

    async fn reply(&mut self) -> anyhow::Result<u16> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await? == 0 {
                bail!("The server closed the connection");
            }
            let code = line.get(..3).and_then(|c| c.parse().ok());
            match (code, line.as_bytes().get(3)) {
                (Some(_), Some(b'-')) => continue,
                (Some(code), _) => return Ok(code),
                (None, _) => bail!("Not an SMTP reply: {line:?}"),
            }
        }
    }

    async fn command(&mut self, line: &str) -> anyhow::Result<u16> {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await?;
        self.reply().await
    }

    /// Sends one mail and returns the reply code to the end of DATA.
    async fn send(&mut self, from: &str, to: &str, message: &str) -> anyhow::Result<u16> {
        expect(
            self.command(&format!("MAIL FROM:<{from}>")).await?,
            250,
            "MAIL",
        )?;
        expect(self.command(&format!("RCPT TO:<{to}>")).await?, 250, "RCPT")?;
        expect(self.command("DATA").await?, 354, "DATA")?;
        // The messages here have no line starting with '.', so no dot-stuffing.
        self.command(&format!("{message}\r\n.")).await
    }
}

fn expect(code: u16, want: u16, step: &str) -> anyhow::Result<()> {
    if code != want {
        bail!("{step}: expected {want}, got {code}");
    }
    Ok(())
}

#[tokio::test]
async fn records_an_accepted_mail_with_envelope_and_content() -> anyhow::Result<()> {
    let sink = SmtpSink::start().await?;
    let to = rcpt("someone");
    let message = format!(
        "From: Warren <warren@example.com>\r\nTo: {to}\r\nSubject: Hello sink\r\n\
         Message-ID: <harness-1@warren.test>\r\nX-Warren-Test: yes\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello over TCP\r\n\
         --b\r\nContent-Type: application/octet-stream\r\n\
         Content-Disposition: attachment; filename=\"a.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\nAAEC/w==\r\n--b--"
    );

    let mut client = Client::connect(sink.port()).await?;
    let code = client.send("warren@example.com", &to, &message).await?;
    assert_eq!(code, 250);

    let mails = sink.wait_for_messages_to(&to, 1, WAIT).await?;
    let mail = mails.first().context("no mail")?;
    assert_eq!(mail.mail_from, "warren@example.com");
    assert_eq!(mail.rcpt_tos, vec![to.clone()]);
    assert!(mail.data.contains("Hello over TCP"), "{}", mail.data);
    assert_eq!(mail.subject().as_deref(), Some("Hello sink"));
    assert_eq!(mail.message_id().as_deref(), Some("harness-1@warren.test"));
    assert_eq!(mail.header("x-warren-test").as_deref(), Some("yes"));
    assert_eq!(mail.text_body().as_deref(), Some("Hello over TCP"));
    assert_eq!(
        mail.attachments(),
        vec![("a.bin".into(), vec![0, 1, 2, 255])]
    );
    assert!(sink.rejections().is_empty());
    Ok(())
}

#[tokio::test]
async fn tempfail_recipient_gets_451_twice_then_250() -> anyhow::Result<()> {
    let sink = SmtpSink::start().await?;
    let to = rcpt("tempfail451x2");
    let message = "Subject: retry me\r\n\r\nbody";

    let mut client = Client::connect(sink.port()).await?;
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(client.send("warren@example.com", &to, message).await?);
    }
    assert_eq!(codes, [451, 451, 250]);

    let rejections = sink.wait_for_rejections(2, WAIT).await?;
    assert!(
        rejections
            .iter()
            .all(|r| r.code == 451 && r.rcpt_tos == [to.clone()])
    );
    sink.wait_for_messages_to(&to, 1, WAIT).await?;
    Ok(())
}

#[tokio::test]
async fn reject_recipient_gets_550_and_nothing_is_recorded() -> anyhow::Result<()> {
    let sink = SmtpSink::start().await?;
    let to = rcpt("reject550");

    let mut client = Client::connect(sink.port()).await?;
    let code = client
        .send("warren@example.com", &to, "Subject: no\r\n\r\nbody")
        .await?;
    assert_eq!(code, 550);

    let rejections = sink.wait_for_rejections(1, WAIT).await?;
    assert_eq!(rejections[0].code, 550);
    assert_eq!(sink.rejections_to(&to).len(), 1);
    assert!(sink.messages().is_empty());

    // The error of a wait that times out says what did arrive.
    let error = sink
        .wait_for_messages(1, Duration::from_millis(200))
        .await
        .err()
        .context("no mail should have been accepted")?;
    assert!(error.to_string().contains("Refused 1"), "{error:#}");
    Ok(())
}
