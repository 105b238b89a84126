//! A RabbitMQ node of a test's own, beside the shared broker on 5672: its
//! own node name (`warren-<tag>-<pid>-<n>@localhost`), its own AMQP,
//! amqps, distribution and (optionally) management ports, chosen free on
//! loopback, its own data, log and config files in a temporary directory,
//! and its own Erlang cookie. It never touches the node on 5672.
//!
//! For tests that need a broker configured differently (a TLS listener) or
//! that stop and restart the broker (the soak): started with Debian's
//! `rabbitmq-server` in the foreground as a child process, waited on with
//! `rabbitmqctl await_startup` and `rabbitmq-diagnostics check_port_listener`, stopped
//! with `rabbitmqctl stop` (killed if that fails) on drop.
//!
//! The calls block (they run RabbitMQ's CLI tools): from async code, call
//! them in `tokio::task::spawn_blocking` when other tasks must keep running.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Where Debian keeps RabbitMQ's scripts (those in `/usr/sbin` switch to
/// the `rabbitmq` user and its cookie).
const BIN: &str = "/usr/lib/rabbitmq/bin";

/// How long a node gets to boot.
const BOOT: Duration = Duration::from_secs(120);

/// The TLS files of an amqps listener.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificates the node trusts for client certificates.
    pub ca: PathBuf,
    /// The node's certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// What the node listens on, besides plain AMQP.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// An amqps listener with these files.
    pub tls: Option<TlsFiles>,
    /// The management plugin, on a port of its own.
    pub management: bool,
}

/// A running RabbitMQ node of the test's own.
pub struct ExtraNode {
    /// `warren-<tag>-<pid>-<n>@localhost`.
    pub name: String,
    /// Plain AMQP, on 127.0.0.1.
    pub amqp_port: u16,
    /// The TLS listener, on 127.0.0.1, if asked for.
    pub amqps_port: Option<u16>,
    /// Erlang distribution.
    pub dist_port: u16,
    /// The management API, if asked for.
    pub management_port: Option<u16>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// A free port on loopback (free when asked: the node binds it shortly
/// after).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl ExtraNode {
    /// Starts a node named after `tag` and waits until it takes AMQP
    /// connections.
    pub fn start(tag: &str, options: NodeOptions) -> anyhow::Result<Self> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("warren-{tag}-{}-{n}@localhost", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix(&format!("warren-{tag}-node-"))
            .tempdir()?;
        let amqp_port = free_port()?;
        let dist_port = free_port()?;
        let amqps_port = options.tls.as_ref().map(|_| free_port()).transpose()?;
        let management_port = options.management.then(free_port).transpose()?;
        let d = dir.path();
        let mut conf = format!(
            "listeners.tcp.1 = 127.0.0.1:{amqp_port}\n\
             loopback_users = none\n\
             log.file.level = info\n\
             log.console = false\n"
        );
        if let (Some(tls), Some(port)) = (&options.tls, amqps_port) {
            conf.push_str(&format!(
                "listeners.ssl.1 = 127.0.0.1:{port}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                tls.ca.display(),
                tls.cert.display(),
                tls.key.display()
            ));
        }
        if let Some(port) = management_port {
            conf.push_str(&format!(
                "management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {port}\n"
            ));
        }
        std::fs::write(d.join("rabbitmq.conf"), conf)?;
        let plugins = if options.management {
            "[rabbitmq_management]."
        } else {
            "[]."
        };
        std::fs::write(d.join("enabled_plugins"), plugins)?;
        // Debian's /etc/rabbitmq/rabbitmq-env.conf names the shared node;
        // this one keeps its loopback-only settings and nothing else.
        std::fs::write(
            d.join("rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS=127.0.0.1\n\
             export ERL_FLAGS=\"-kernel inet_dist_use_interface {127,0,0,1}\"\n",
        )?;
        let cookie = d.join(".erlang.cookie");
        std::fs::write(&cookie, uuid::Uuid::new_v4().simple().to_string())?;
        set_mode(&cookie, 0o400)?;
        let mut node = Self {
            name,
            amqp_port,
            amqps_port,
            dist_port,
            management_port,
            dir,
            child: None,
        };
        node.boot()?;
        Ok(node)
    }

    /// The temporary directory holding the node's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// `amqps://guest:guest@<host>:<port>/%2f`: `host` is the name the
    /// client checks the certificate against.
    pub fn amqps_url(&self, host: &str) -> Option<String> {
        self.amqps_port
            .map(|p| format!("amqps://guest:guest@{host}:{p}/%2f"))
    }

    /// The Erlang VM's OS process id, from the node's pid file.
    pub fn os_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The node's log file (for a failed test's message).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self
            .dir
            .path()
            .join("log")
            .join(format!("{}.log", self.name));
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Environment of the server and its CLI tools.
    fn command(&self, program: &str) -> Command {
        let d = self.dir.path();
        let mut cmd = Command::new(Path::new(BIN).join(program));
        cmd.env("HOME", d)
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", d.join("feature_flags"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", d.join("plugins-expand"))
            .current_dir(d)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a CLI tool (`rabbitmqctl`, `rabbitmq-diagnostics`, ...) against
    /// this node.
    pub fn cli(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        self.command(program)
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .with_context(|| format!("could not run {program} (is rabbitmq-server installed?)"))
    }

    fn cli_ok(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let out = self.cli(program, args)?;
        if !out.status.success() {
            bail!(
                "{program} {} on {}: {}{}",
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts the server process and waits until it listens.
    fn boot(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.path().join("server.out"))?;
        let child = self
            .command("rabbitmq-server")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("could not start rabbitmq-server (is it installed?)")?;
        self.child = Some(child);
        let deadline = Instant::now() + BOOT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "RabbitMQ node {} exited at start-up ({status}):\n{}\n{}",
                    self.name,
                    std::fs::read_to_string(self.dir.path().join("server.out")).unwrap_or_default(),
                    self.log_tail(30)
                );
            }
            // Fails at once while the node's distribution is not up yet.
            if self
                .cli_ok("rabbitmqctl", &["-q", "await_startup", "--timeout", "60"])
                .is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "RabbitMQ node {} did not start within {BOOT:?}:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let mut ports = vec![self.amqp_port];
        ports.extend(self.amqps_port);
        for port in ports {
            self.cli_ok(
                "rabbitmq-diagnostics",
                &["-q", "check_port_listener", &port.to_string()],
            )?;
        }
        Ok(())
    }

    /// Stops the node (`rabbitmqctl stop`, which waits for the VM to
    /// exit); kills it if that fails.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = self.os_pid();
        let pid_file = self.dir.path().join("pid").display().to_string();
        // With the pid file, `stop` returns once the VM has exited.
        let stopped = match pid {
            Some(_) => self.cli_ok("rabbitmqctl", &["stop", &pid_file]),
            None => self.cli_ok("rabbitmqctl", &["stop"]),
        };
        if stopped.is_err() {
            if let Some(pid) = pid {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            let _ = child.kill();
        }
        let _ = child.wait();
        Ok(())
    }

    /// Kills the Erlang VM with SIGKILL: a crash, not a shutdown.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let pid = self.os_pid().context("the node wrote no pid file")?;
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()?;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// Starts the stopped node again, with the same name, ports and data.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("node {} is running", self.name);
        }
        let _ = std::fs::remove_file(self.dir.path().join("pid"));
        self.boot()
    }

    /// Stops the node and starts it again.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.start_again()
    }
}

impl Drop for ExtraNode {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}
