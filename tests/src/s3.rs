//! A real S3-compatible server for integration tests: moto's standalone
//! server (`moto_server`, from the `moto[server]` wheel that `scripts/prepare`
//! installs into `.tools/venv`) run as a child process on a free loopback
//! port, with one bucket created. It is killed when dropped.
//!
//! Objects are put and read over plain HTTP without signing: by default moto
//! accepts any credentials. [`S3Server::start_enforcing_credentials`] starts
//! one that checks them, and knows no key at all, so every signed request is
//! refused as a real S3 refuses an unknown access key.
//!
//! [`S3Server::stop`] and [`S3Server::restart`] take the store down and bring
//! it back on the same port (moto keeps its objects in memory: the bucket
//! comes back empty, the test puts back what it needs).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The access key the worker is given against a server that does not check
/// credentials. Any value works; it is a secret all the same, and tests
/// look for it in the worker's output.
pub const ACCESS_KEY_ID: &str = "AKIAWARRENTESTKEY";
pub const SECRET_ACCESS_KEY: &str = "warren-test-secret-9f1c2e";

/// What the helper's own requests carry: moto treats a request without an
/// `Authorization` header as anonymous (refused by the bucket's ACL), and
/// while it does not check credentials it does not check this signature.
const UNSIGNED: &str = "Authorization: AWS4-HMAC-SHA256 \
    Credential=AKIAWARRENHELPER/20260101/us-east-1/s3/aws4_request, \
    SignedHeaders=host, Signature=0";

/// A running `moto_server` with one bucket.
pub struct S3Server {
    child: Option<Child>,
    port: u16,
    bucket: String,
    enforce_credentials: bool,
}

/// Where `moto_server` is: `$TEST_DEPLOY_TOOLS` (another virtualenv's `bin`),
/// else `.tools/venv/bin` in the checkout, as `scripts/prepare` installs it.
pub fn moto_server() -> PathBuf {
    std::env::var_os("TEST_DEPLOY_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(".tools/venv/bin")
        })
        .join("moto_server")
}

impl S3Server {
    /// Starts a server that accepts any credentials, with bucket `bucket`.
    pub async fn start(bucket: &str) -> anyhow::Result<Self> {
        Self::start_on(free_port()?, bucket, false).await
    }

    /// Starts a server that checks credentials and knows none: the bucket is
    /// created by the one unauthenticated request it allows, every later
    /// request must be signed with a key it knows, and it knows none.
    pub async fn start_enforcing_credentials(bucket: &str) -> anyhow::Result<Self> {
        Self::start_on(free_port()?, bucket, true).await
    }

    async fn start_on(port: u16, bucket: &str, enforce_credentials: bool) -> anyhow::Result<Self> {
        let path = moto_server();
        anyhow::ensure!(
            path.exists(),
            "{} is missing: run scripts/prepare, which installs moto[server] into .tools/venv",
            path.display()
        );
        let mut cmd = Command::new(&path);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if enforce_credentials {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "1");
        } else {
            cmd.env_remove("INITIAL_NO_AUTH_ACTION_COUNT");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start {}", path.display()))?;
        let mut server = Self {
            child: Some(child),
            port,
            bucket: bucket.to_owned(),
            enforce_credentials,
        };
        server.wait_listening().await?;
        let (status, _, body) = server.request("PUT", &format!("/{bucket}"), &[]).await?;
        if status != 200 {
            bail!(
                "moto did not create bucket {bucket}: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(server)
    }

    async fn wait_listening(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("moto_server exited at start-up: {status}");
            }
            if Instant::now() >= deadline {
                bail!(
                    "moto_server did not listen on port {} within {START_TIMEOUT:?}",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `http://127.0.0.1:<port>`, the worker's `image.s3.endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The worker settings that point its store at this bucket, with the
    /// given credentials.
    pub fn worker_env(&self, access_key_id: &str, secret: &str) -> Vec<(&'static str, String)> {
        vec![
            ("WARREN_IMAGE__STORE", "s3".to_owned()),
            ("WARREN_IMAGE__S3__BUCKET", self.bucket.clone()),
            ("WARREN_IMAGE__S3__REGION", "us-east-1".to_owned()),
            ("WARREN_IMAGE__S3__ENDPOINT", self.endpoint()),
            ("WARREN_IMAGE__S3__ALLOW_HTTP", "true".to_owned()),
            ("WARREN_IMAGE__S3__ACCESS_KEY_ID", access_key_id.to_owned()),
            ("WARREN_IMAGE__S3__SECRET_ACCESS_KEY", secret.to_owned()),
        ]
    }

    /// Puts an object (unsigned: only on a server that accepts any
    /// credentials).
    pub async fn put(&self, key: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let (status, _, body) = self
            .request("PUT", &format!("/{}/{key}", self.bucket), bytes)
            .await?;
        if status != 200 {
            bail!("PUT {key}: {status} {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }

    /// Reads an object: its bytes and its `Content-Type`, or `None` if the
    /// bucket has no such object.
    pub async fn get(&self, key: &str) -> anyhow::Result<Option<(Vec<u8>, String)>> {
        let (status, headers, body) = self
            .request("GET", &format!("/{}/{key}", self.bucket), &[])
            .await?;
        match status {
            200 => {
                let content_type = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                Ok(Some((body, content_type)))
            }
            404 => Ok(None),
            other => bail!("GET {key}: {other} {}", String::from_utf8_lossy(&body)),
        }
    }

    /// Kills the server and waits for it to exit: the store is down.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("killing moto_server")?;
        }
        Ok(())
    }

    /// Starts the server again on the same port, with the bucket created
    /// again (empty).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        let bucket = self.bucket.clone();
        // The port was this server's until a moment ago; a start fails
        // only if someone else took it meanwhile.
        let fresh = Self::start_on(self.port, &bucket, self.enforce_credentials).await?;
        *self = fresh;
        Ok(())
    }

    /// One HTTP/1.1 request, the connection closed after the answer.
    async fn request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<(String, String)>, Vec<u8>)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{UNSIGNED}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut answer = Vec::new();
        tokio::time::timeout(START_TIMEOUT, stream.read_to_end(&mut answer))
            .await
            .context("moto did not answer")??;
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("an HTTP answer without a header end")?;
        let head = String::from_utf8_lossy(&answer[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .context("an HTTP answer without a status")?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let mut body = answer[split + 4..].to_vec();
        if headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        }) {
            body = dechunk(&body)?;
        }
        Ok((status, headers, body))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn dechunk(mut raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk without a size line")?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&raw[..end]).trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        let start = end + 2;
        out.extend_from_slice(raw.get(start..start + size).context("a short chunk")?);
        raw = raw.get(start + size + 2..).context("a short chunk")?;
    }
}
