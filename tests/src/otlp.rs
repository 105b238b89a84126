//! A minimal OTLP/HTTP receiver for tests: it accepts `POST /v1/traces`
//! with JSON bodies (`OTEL_EXPORTER_OTLP_PROTOCOL=http/json`), answers 200
//! and keeps every span, so a test can follow a trace across processes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One received span, flattened.
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub kind: Value,
    pub attributes: Value,
}

impl Span {
    /// A string or integer attribute, as a string.
    pub fn attribute(&self, key: &str) -> Option<String> {
        let attr = self
            .attributes
            .as_array()?
            .iter()
            .find(|a| a["key"] == key)?;
        let v = &attr["value"];
        v["stringValue"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| v["intValue"].as_str().map(str::to_owned))
            .or_else(|| v["intValue"].as_i64().map(|n| n.to_string()))
            .or_else(|| v["boolValue"].as_bool().map(|b| b.to_string()))
    }
}

pub struct OtlpReceiver {
    pub port: u16,
    spans: Arc<Mutex<Vec<Span>>>,
    task: JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OtlpReceiver {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, sink).await;
                });
            }
        });
        Ok(Self { port, spans, task })
    }

    /// The endpoint for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until `pred` holds for at least `n` spans.
    pub async fn wait_for(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Span) -> bool,
    ) -> anyhow::Result<Vec<Span>> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<Span> = self.spans().into_iter().filter(|s| pred(s)).collect();
            if found.len() >= n {
                return Ok(found);
            }
            if Instant::now() > deadline {
                let names: Vec<_> = self
                    .spans()
                    .iter()
                    .map(|s| format!("{} {}", s.name, s.trace_id))
                    .collect();
                bail!(
                    "{} of {n} spans within {timeout:?}; received: {names:?}",
                    found.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Serves HTTP/1.1 requests on one connection (keep-alive).
async fn serve(stream: tokio::net::TcpStream, sink: Arc<Mutex<Vec<Span>>>) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().context("content-length")?;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await?;
        if request_line.starts_with("POST /v1/traces")
            && let Ok(json) = serde_json::from_slice::<Value>(&body)
            && let Ok(mut spans) = sink.lock()
        {
            spans.extend(flatten(&json));
        }
        let reply =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        write.write_all(reply.as_bytes()).await?;
    }
}

fn flatten(export: &Value) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in export["resourceSpans"].as_array().into_iter().flatten() {
        let service = rs["resource"]["attributes"]
            .as_array()
            .and_then(|a| a.iter().find(|kv| kv["key"] == "service.name"))
            .and_then(|kv| kv["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_owned();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                out.push(Span {
                    service: service.clone(),
                    name: s["name"].as_str().unwrap_or_default().to_owned(),
                    trace_id: s["traceId"].as_str().unwrap_or_default().to_lowercase(),
                    span_id: s["spanId"].as_str().unwrap_or_default().to_lowercase(),
                    parent_span_id: s["parentSpanId"]
                        .as_str()
                        .unwrap_or_default()
                        .to_lowercase(),
                    kind: s["kind"].clone(),
                    attributes: s["attributes"].clone(),
                });
            }
        }
    }
    out
}
