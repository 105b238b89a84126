//! CPU time of processes, from `/proc/<pid>/stat`: what a run cost the
//! broker, a worker or the test itself, whatever else the machine runs.
//! A figure is the difference of two [`CpuTime`] readings over the run.

use std::path::Path;

use anyhow::{Context, bail};

/// User plus system CPU seconds a process has used so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuTime(pub f64);

impl CpuTime {
    /// The seconds used between `earlier` and this reading.
    pub fn since(self, earlier: CpuTime) -> f64 {
        self.0 - earlier.0
    }
}

/// Clock ticks per second, `sysconf(_SC_CLK_TCK)`: 100 on every Linux
/// this project runs on; `getconf` says so when it can.
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The CPU time of process `pid` (its threads included; reaped children
/// not).
pub fn of(pid: u32) -> anyhow::Result<CpuTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("no process {pid}"))?;
    // The command name is in parentheses and may hold spaces: count the
    // fields after its closing one (field 3 is the state, 14 utime, 15 stime).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no command name in /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .context("a short /proc/<pid>/stat")
    };
    Ok(CpuTime((ticks(14)? + ticks(15)?) / ticks_per_second()))
}

/// The CPU time of this test process.
pub fn own() -> anyhow::Result<CpuTime> {
    of(std::process::id())
}

/// The pid of the RabbitMQ node the tests use (the system's, on 5672):
/// the `beam.smp` whose home is `/var/lib/rabbitmq`. Extra nodes that
/// tests start run from directories of their own and are not it.
pub fn broker_pid() -> anyhow::Result<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != "beam.smp" {
            continue;
        }
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let home = args
            .windows(2)
            .find(|w| w[0] == b"-home")
            .map(|w| String::from_utf8_lossy(w[1]).into_owned());
        if home.as_deref().map(Path::new) == Some(Path::new("/var/lib/rabbitmq")) {
            found.push(pid);
        }
    }
    match found.as_slice() {
        [pid] => Ok(*pid),
        [] => bail!("no RabbitMQ node (beam.smp with -home /var/lib/rabbitmq) runs here"),
        many => bail!("several RabbitMQ nodes with the system's home: {many:?}"),
    }
}
