//! Configuration: defaults, then an optional TOML file, then `BERTH_*`
//! environment variables, then command-line flags; later sources win.
//!
//! Nested keys are reached from the environment with a double underscore:
//! `BERTH_UPLOADS__STALE_AFTER_SECS=3600` sets `uploads.stale_after_secs`.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The whole configuration of a `berth serve` process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address and port to listen on.
    pub listen: String,
    /// Directory holding all state of the embedded backends.
    pub data_dir: PathBuf,
    pub log: LogConfig,
    pub uploads: UploadConfig,
    pub limits: LimitConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `auto` (pretty on a terminal, JSON otherwise), `json` or `pretty`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `berth=debug,info`.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    /// Upload sessions untouched for this long are purged.
    pub stale_after_secs: u64,
    /// How often stale sessions are looked for.
    pub purge_interval_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Largest manifest accepted, in bytes.
    pub manifest_max_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:5000".into(),
            data_dir: PathBuf::from("./berth-data"),
            log: LogConfig {
                format: LogFormat::Auto,
                level: "info".into(),
            },
            uploads: UploadConfig {
                stale_after_secs: 24 * 3600,
                purge_interval_secs: 600,
            },
            limits: LimitConfig {
                manifest_max_bytes: 4 << 20,
            },
        }
    }
}

/// Values given on the command line, which override every other source.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

/// Top-level keys, so that other tools' `BERTH_*` variables (`BERTH_BIN` in
/// our own scripts, say) are not taken for misspelt settings.
const TOP_LEVEL_KEYS: [&str; 5] = ["listen", "data_dir", "log", "uploads", "limits"];

impl Config {
    fn environment() -> Env {
        Env::prefixed("BERTH_")
            .filter(|key| {
                let key = key.as_str().to_ascii_lowercase();
                TOP_LEVEL_KEYS
                    .iter()
                    .any(|top| key == *top || key.starts_with(&format!("{top}__")))
            })
            .split("__")
    }

    /// Loads the configuration from every source.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Config, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(Box::new(figment::Error::from(format!(
                    "config file {} does not exist",
                    file.display()
                ))));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(Self::environment())
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)
    }
}

#[cfg(test)]
#[expect(clippy::result_large_err, reason = "figment::Jail fixes the closures' error type")]
mod tests {
    use super::*;

    #[test]
    fn sources_override_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "berth.toml",
                "listen = \"127.0.0.1:1\"\ndata_dir = \"/from-file\"\n[uploads]\nstale_after_secs = 5\n",
            )?;
            jail.set_env("BERTH_DATA_DIR", "/from-env");
            jail.set_env("BERTH_LIMITS__MANIFEST_MAX_BYTES", "1000");
            jail.set_env("BERTH_BIN", "/not/a/setting");
            let c = Config::load(
                Some(Path::new("berth.toml")),
                Overrides {
                    listen: Some("127.0.0.1:2".into()),
                    data_dir: None,
                },
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(c.listen, "127.0.0.1:2");
            assert_eq!(c.data_dir, PathBuf::from("/from-env"));
            assert_eq!(c.uploads.stale_after_secs, 5);
            assert_eq!(c.uploads.purge_interval_secs, 600);
            assert_eq!(c.limits.manifest_max_bytes, 1000);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("berth.toml", "lisen = \"x\"\n")?;
            assert!(Config::load(Some(Path::new("berth.toml")), Overrides::default()).is_err());
            assert!(Config::load(Some(Path::new("missing.toml")), Overrides::default()).is_err());
            jail.set_env("BERTH_LOG__LEVL", "debug");
            assert!(Config::load(None, Overrides::default()).is_err());
            Ok(())
        });
    }
}
