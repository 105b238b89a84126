//! CPU time from `/proc/<pid>/stat`: what a run cost this process (the
//! in-process worker) and the broker, per message, whatever else the
//! machine runs. The inputs of docs/performance.md's "Scale on paper".

/// User plus system CPU seconds of `pid` so far (its threads included).
pub fn seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name's closing parenthesis; utime and stime
    // are fields 14 and 15 of the whole line, in clock ticks (100 a second
    // on Linux, `getconf CLK_TCK`).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3)?.parse::<f64>().ok();
    Some((ticks(14)? + ticks(15)?) / 100.0)
}

/// The local RabbitMQ node: the `beam.smp` whose home is
/// `/var/lib/rabbitmq` (the system's node), if exactly one runs.
pub fn broker_pid() -> Option<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() != "beam.smp" {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args
            .windows(2)
            .any(|w| w[0] == b"-home" && w[1] == b"/var/lib/rabbitmq")
        {
            found.push(pid);
        }
    }
    (found.len() == 1).then(|| found[0])
}

/// CPU of this process and of the broker, read together.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    own: Option<f64>,
    broker: Option<f64>,
}

impl Reading {
    pub fn now(broker: Option<u32>) -> Self {
        Self {
            own: seconds(std::process::id()),
            broker: broker.and_then(seconds),
        }
    }

    /// Microseconds per message since `earlier`: (this process, broker).
    pub fn us_per(self, earlier: Reading, n: usize) -> (Option<f64>, Option<f64>) {
        let per = |a: Option<f64>, b: Option<f64>| Some((a? - b?) * 1e6 / n as f64);
        (per(self.own, earlier.own), per(self.broker, earlier.broker))
    }
}
