//! The conductor's settings tree: the shared sections (broker, telemetry,
//! ops), `[conductor]` (leadership and misfires) and `[[schedules]]`.
//!
//! Defaults come from [`Default`], then `warren.toml` (or `$WARREN_CONFIG`),
//! then `WARREN_CONDUCTOR__MISFIRE_GRACE`-style environment variables.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use warren::settings::{BrokerSettings, OpsSettings, SettingsError, TelemetrySettings};

use crate::schedule::ScheduleSettings;

/// Everything the conductor is configured with.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub broker: BrokerSettings,
    pub telemetry: TelemetrySettings,
    /// `/metrics`, `/healthz`, `/readyz` and `/v1/schedules`; port 9404 by
    /// default.
    pub ops: OpsSettings,
    pub conductor: ConductorSettings,
    pub schedules: Vec<ScheduleSettings>,
}

/// The conductor's default ops port.
pub const DEFAULT_OPS_PORT: u16 = 9404;

impl Default for Settings {
    fn default() -> Self {
        Self {
            broker: BrokerSettings::default(),
            telemetry: TelemetrySettings::default(),
            ops: OpsSettings::on_port(DEFAULT_OPS_PORT),
            conductor: ConductorSettings::default(),
            schedules: Vec::new(),
        }
    }
}

impl Settings {
    /// Loads the layered settings (defaults, file, environment).
    pub fn load() -> Result<Self, SettingsError> {
        warren::settings::load::<Self>()
    }
}

/// `[conductor]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConductorSettings {
    /// How often a standby tries to take the leader lock.
    #[serde(with = "humantime_serde")]
    pub takeover_poll: Duration,
    /// Fires missed by at most this long (a failover, a short broker
    /// outage) are all made, late; older ones follow the schedule's
    /// `misfire` policy.
    #[serde(with = "humantime_serde")]
    pub misfire_grace: Duration,
    /// How far back a new leader reads the events stream for each
    /// schedule's last fire (at most the stream's retention).
    #[serde(with = "humantime_serde")]
    pub lookback: Duration,
    /// The events stream's retention (`x-max-age`): must be the gateway's
    /// `events.retention`, as both declare the stream.
    #[serde(with = "humantime_serde")]
    pub events_retention: Duration,
}

impl Default for ConductorSettings {
    fn default() -> Self {
        Self {
            takeover_poll: Duration::from_millis(500),
            misfire_grace: Duration::from_secs(30),
            lookback: Duration::from_secs(7 * 24 * 3600),
            events_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ops_endpoints_and_get_schedules_default_to_port_9404() {
        assert_eq!(Settings::default().ops.addr, "0.0.0.0:9404");
    }
}
