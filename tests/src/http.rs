//! A small HTTP/1.1 client over TCP for talking to the gateway the way a
//! web application would: GET and POST with JSON, multipart and raw
//! bodies, and Server-Sent Events read line by line as they arrive.
//!
//! Written against the socket rather than with an HTTP library so the
//! tests see exactly what goes over the wire (status, headers, chunked
//! framing), and so a server that answers before it has read the whole
//! body (413) is handled: the body is written on its own task while the
//! answer is read.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

/// How long a plain request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP response, its body read in full.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "the body is not JSON (status {}): {}",
                self.status,
                self.text()
            )
        })
    }
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Response> {
    request(addr, "GET", path, &[], &[]).await
}

/// `POST path` with a JSON body.
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<Response> {
    let bytes = serde_json::to_vec(body)?;
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        &bytes,
    )
    .await
}

/// `POST path` with any body and content type (`None`: no header).
pub async fn post(
    addr: SocketAddr,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> anyhow::Result<Response> {
    let headers: Vec<(&str, &str)> = content_type
        .map(|c| vec![("Content-Type", c)])
        .unwrap_or_default();
    request(addr, "POST", path, &headers, body).await
}

/// A `multipart/form-data` body.
#[derive(Debug, Clone)]
pub struct Multipart {
    boundary: String,
    body: Vec<u8>,
}

impl Default for Multipart {
    fn default() -> Self {
        Self::new()
    }
}

impl Multipart {
    pub fn new() -> Self {
        Self {
            boundary: format!("warren-test-{}", uuid::Uuid::new_v4().simple()),
            body: Vec::new(),
        }
    }

    /// A file part.
    pub fn file(mut self, name: &str, filename: &str, content_type: &str, bytes: &[u8]) -> Self {
        self.body.extend_from_slice(
            format!(
                "--{}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n",
                self.boundary
            )
            .as_bytes(),
        );
        self.body.extend_from_slice(bytes);
        self.body.extend_from_slice(b"\r\n");
        self
    }

    /// A text part.
    pub fn text(mut self, name: &str, value: &str) -> Self {
        self.body.extend_from_slice(
            format!(
                "--{}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n",
                self.boundary
            )
            .as_bytes(),
        );
        self
    }

    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    /// The encoded body, closing delimiter included.
    pub fn into_body(mut self) -> Vec<u8> {
        self.body
            .extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        self.body
    }
}

/// `POST path` with a multipart body.
pub async fn post_multipart(
    addr: SocketAddr,
    path: &str,
    form: Multipart,
) -> anyhow::Result<Response> {
    let content_type = form.content_type();
    let body = form.into_body();
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", content_type.as_str())],
        &body,
    )
    .await
}

/// One request on a fresh connection (`Connection: close`).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Response> {
    request_within(TIMEOUT, addr, method, path, headers, body).await
}

/// [`request`], answered within `timeout` (for answers that take long on
/// purpose, e.g. a publish the broker never confirms).
pub async fn request_within(
    timeout: Duration,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Response> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        let (read, mut write) = stream.into_split();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        // The server may answer (413, 415) before it has read the body; the
        // answer is what counts, so a failed write is not an error.
        let writer = tokio::spawn(async move {
            let _ = write.write_all(&out).await;
            let _ = write.flush().await;
            write
        });
        let mut reader = BufReader::new(read);
        let (status, headers) = read_head(&mut reader).await?;
        let body = read_body(&mut reader, &headers).await?;
        drop(writer);
        anyhow::Ok(Response {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| format!("{method} {path}: no answer within {timeout:?}"))?
}

/// One connection kept open for many GETs: for load, where a fresh
/// connection per request would run out of local ports.
pub struct KeepAlive {
    addr: SocketAddr,
    reader: BufReader<OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl KeepAlive {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let (read, writer) = TcpStream::connect(addr).await?.into_split();
        Ok(Self {
            addr,
            reader: BufReader::new(read),
            writer,
        })
    }

    /// `GET path` on this connection.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Response> {
        let exchange = async {
            let head = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr);
            self.writer.write_all(head.as_bytes()).await?;
            let (status, headers) = read_head(&mut self.reader).await?;
            let body = read_body(&mut self.reader, &headers).await?;
            anyhow::Ok(Response {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .with_context(|| format!("GET {path}: no answer within {TIMEOUT:?}"))?
    }
}

async fn read_head(
    reader: &mut BufReader<OwnedReadHalf>,
) -> anyhow::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status line: {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            bail!("the connection closed inside the headers");
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((k, v)) = trimmed.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    Ok((status, headers))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn read_body(
    reader: &mut BufReader<OwnedReadHalf>,
    headers: &[(String, String)],
) -> anyhow::Result<Vec<u8>> {
    if header(headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        while let Some(chunk) = read_chunk(reader).await? {
            body.extend_from_slice(&chunk);
        }
        return Ok(body);
    }
    if let Some(len) = header(headers, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).await?;
        return Ok(body);
    }
    let mut body = Vec::new();
    reader.read_to_end(&mut body).await?;
    Ok(body)
}

/// One chunk of a chunked body; `None` after the last.
async fn read_chunk(reader: &mut BufReader<OwnedReadHalf>) -> anyhow::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or_default(), 16)
        .with_context(|| format!("bad chunk size line {line:?}"))?;
    if size == 0 {
        // Trailers (none expected) up to the blank line.
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                return Ok(None);
            }
        }
    }
    let mut chunk = vec![0u8; size];
    reader.read_exact(&mut chunk).await?;
    let mut crlf = [0u8; 2];
    reader.read_exact(&mut crlf).await?;
    Ok(Some(chunk))
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    pub event: Option<String>,
    pub id: Option<String>,
    /// The `data` lines, joined with newlines.
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.data)
            .with_context(|| format!("the event data is not JSON: {}", self.data))
    }
}

/// An open `text/event-stream` response, read as it arrives.
pub struct SseStream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<OwnedReadHalf>,
    _write: tokio::net::tcp::OwnedWriteHalf,
    chunked: bool,
    /// Received text not yet returned as lines.
    buffer: String,
    ended: bool,
    /// Comment lines seen (keep-alives).
    pub comments: usize,
}

/// `GET path` with `Accept: text/event-stream`; returns once the headers
/// are in. A non-2xx answer's body is available through
/// [`SseStream::rest`].
pub async fn sse(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<SseStream> {
    let open = async {
        let stream = TcpStream::connect(addr).await?;
        let (read, mut write) = stream.into_split();
        let mut head = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n"
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        write.write_all(head.as_bytes()).await?;
        let mut reader = BufReader::new(read);
        let (status, headers) = read_head(&mut reader).await?;
        let chunked = header(&headers, "transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        anyhow::Ok(SseStream {
            status,
            headers,
            reader,
            _write: write,
            chunked,
            buffer: String::new(),
            ended: false,
            comments: 0,
        })
    };
    tokio::time::timeout(TIMEOUT, open)
        .await
        .with_context(|| format!("GET {path}: no headers within {TIMEOUT:?}"))?
}

impl SseStream {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, &name.to_ascii_lowercase())
    }

    /// The next line of the body, without its line end; `None` once the
    /// server has ended the stream.
    pub async fn next_line(&mut self) -> anyhow::Result<Option<String>> {
        loop {
            if let Some(i) = self.buffer.find('\n') {
                let line: String = self.buffer.drain(..=i).collect();
                return Ok(Some(line.trim_end_matches(['\n', '\r']).to_owned()));
            }
            if self.ended {
                if self.buffer.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(std::mem::take(&mut self.buffer)));
            }
            let more = if self.chunked {
                read_chunk(&mut self.reader).await?
            } else {
                let mut buf = vec![0u8; 8192];
                let n = self.reader.read(&mut buf).await?;
                buf.truncate(n);
                (n > 0).then_some(buf)
            };
            match more {
                Some(bytes) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                None => self.ended = true,
            }
        }
    }

    /// The next event (comments are counted and skipped); `None` once the
    /// stream has ended.
    pub async fn next_event(&mut self) -> anyhow::Result<Option<SseEvent>> {
        let mut event = SseEvent::default();
        let mut has_field = false;
        let mut data: Vec<String> = Vec::new();
        while let Some(line) = self.next_line().await? {
            if line.is_empty() {
                if has_field {
                    event.data = data.join("\n");
                    return Ok(Some(event));
                }
                continue;
            }
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            has_field = true;
            match field {
                "event" => event.event = Some(value.to_owned()),
                "id" => event.id = Some(value.to_owned()),
                "data" => data.push(value.to_owned()),
                _ => {}
            }
        }
        Ok(None)
    }

    /// Everything left of the body (for error answers).
    pub async fn rest(&mut self) -> anyhow::Result<String> {
        let mut out = String::new();
        while let Some(line) = self.next_line().await? {
            out.push_str(&line);
            out.push('\n');
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_bodies_are_framed() {
        let form = Multipart::new()
            .file("file", "a.png", "image/png", b"\x89PNG")
            .text("outputs", "[]");
        let boundary = form.boundary.clone();
        let body = String::from_utf8_lossy(&form.into_body()).into_owned();
        assert!(body.starts_with(&format!("--{boundary}\r\n")));
        assert!(body.contains("name=\"file\"; filename=\"a.png\""));
        assert!(body.contains("name=\"outputs\"\r\n\r\n[]\r\n"));
        assert!(body.ends_with(&format!("--{boundary}--\r\n")));
    }
}
