//! `[metrics]`: where `/metrics` is served and what the storage gauges break out.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `GET /metrics` (Prometheus text format, no authentication).
    pub enabled: bool,
    /// Serve `/metrics` on this address instead of the registry's listener
    /// (`127.0.0.1:9090`, say), so that it need not be reachable by clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Top-level namespaces (the first component of a repository name, such
    /// as `team-a` or a pull-through prefix) whose storage is reported on its
    /// own; every other repository counts under `namespace="other"`. Label
    /// values are limited to this list so that the number of series stays bounded.
    pub namespaces: Vec<String>,
    /// How often the storage gauges are computed (a query over every blob
    /// link); 0 turns them off.
    pub usage_interval_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: None,
            namespaces: Vec::new(),
            usage_interval_secs: 60,
        }
    }
}
