//! A small, fast SMTP server for the email run: it speaks enough SMTP for
//! lettre (EHLO/HELO, MAIL, RCPT, DATA with dot-stuffing, RSET, NOOP,
//! QUIT), accepts every message and counts it. It runs on a thread and
//! runtime of its own, so the clients being measured do not share their
//! scheduler with it.
//!
//! With `quick_ack` it acknowledges every TCP segment at once
//! (`TCP_QUICKACK`). lettre writes a message's body and its final
//! `<CR><LF>.<CR><LF>` in two writes without `TCP_NODELAY`, so against a
//! server that delays its ACKs (Linux does, by up to 40 ms) every message
//! waits for that ACK; a quick-ACK sink takes the stall away and measures
//! the client alone.

use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct SmtpSink {
    pub port: u16,
    received: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl SmtpSink {
    pub fn start(quick_ack: bool) -> anyhow::Result<Self> {
        let listener = StdListener::bind("127.0.0.1:0").context("could not bind the SMTP sink")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let received = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("smtp-sink".to_owned())
            .spawn({
                let received = received.clone();
                let connections = connections.clone();
                let stop = stop.clone();
                move || {
                    runtime.block_on(async move {
                        let Ok(listener) = TcpListener::from_std(listener) else {
                            return;
                        };
                        loop {
                            let accepted = tokio::select! {
                                _ = stop.cancelled() => return,
                                a = listener.accept() => a,
                            };
                            if let Ok((stream, _)) = accepted {
                                connections.fetch_add(1, Ordering::Relaxed);
                                let received = received.clone();
                                tokio::spawn(async move {
                                    let _ = session(stream, &received, quick_ack).await;
                                });
                            }
                        }
                    });
                }
            })?;
        Ok(Self {
            port,
            received,
            connections,
            stop,
            thread: Some(thread),
        })
    }

    /// Messages accepted so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn session(stream: TcpStream, received: &AtomicU64, quick_ack: bool) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    // Linux leaves quick-ACK mode by itself; set it again after every read.
    let ack_now = |read: &BufReader<tokio::net::tcp::OwnedReadHalf>| {
        if quick_ack {
            let _ = socket2::SockRef::from(read.get_ref().as_ref()).set_tcp_quickack(true);
        }
    };
    ack_now(&read);
    write.write_all(b"220 bench-sink ESMTP\r\n").await?;
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        if read.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        ack_now(&read);
        let verb: String = line
            .iter()
            .take(4)
            .map(|b| b.to_ascii_uppercase() as char)
            .collect();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-bench-sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
            "HELO" => b"250 bench-sink\r\n",
            "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 2.0.0 OK\r\n",
            "DATA" => {
                write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                loop {
                    line.clear();
                    if read.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    ack_now(&read);
                    if line == b".\r\n" || line == b".\n" {
                        break;
                    }
                }
                received.fetch_add(1, Ordering::Relaxed);
                b"250 2.0.0 OK: queued\r\n"
            }
            "QUIT" => {
                write.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 5.5.2 Command not recognized\r\n",
        };
        write.write_all(reply).await?;
    }
}
