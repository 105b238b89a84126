//! The CLI reads the services' settings: the same `warren.toml` (or
//! `$WARREN_CONFIG`) and `WARREN_...` variables. It takes `[broker]`
//! (the AMQP URL, the namespace, `management_url`) and `[consumer]` (the
//! retry ladder, for `topology verify`) and ignores the other sections, so
//! one file serves the workers and the CLI.

use serde::{Deserialize, Serialize};
use warren::settings::{BrokerSettings, ConsumerSettings, SettingsError};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct CliSettings {
    pub broker: BrokerSettings,
    pub consumer: ConsumerSettings,
}

impl CliSettings {
    pub fn load() -> Result<Self, SettingsError> {
        warren::settings::load::<Self>()
    }

    pub fn names(&self) -> warren::Names {
        self.broker.names()
    }
}
