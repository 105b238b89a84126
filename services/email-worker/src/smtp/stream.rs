//! The byte stream under an SMTP connection: TCP with `TCP_NODELAY`, plain
//! or inside TLS, behind one write buffer.
//!
//! Why both: the buffer turns a pipelined command group, or a whole DATA
//! payload with its final `<CR><LF>.<CR><LF>`, into one write at the flush;
//! `TCP_NODELAY` sends that write at once instead of holding a short tail
//! segment until the server ACKs the previous one. Without them, a server
//! with delayed ACKs (stock Linux TCP: Postfix, aiosmtpd) stalls every
//! message by up to 40 ms.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, BufStream, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A connected SMTP stream, buffered both ways.
pub(crate) enum Stream {
    Plain(BufStream<TcpStream>),
    Tls(Box<BufStream<TlsStream<TcpStream>>>),
}

impl Stream {
    pub(crate) fn plain(tcp: TcpStream) -> Self {
        Stream::Plain(BufStream::new(tcp))
    }

    pub(crate) fn tls(tls: TlsStream<TcpStream>) -> Self {
        Stream::Tls(Box::new(BufStream::new(tls)))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
