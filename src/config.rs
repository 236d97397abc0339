//! Configuration: a TOML file layered with `CHATVAULT_*` environment variables.
//!
//! Secrets are [`Secret`]s: their `Debug` and `Display` print `***` (invariant 7). Each
//! secret key `x` may be given as `x_env` (a variable name) or `x_file` (a path); inline
//! secrets are accepted with a warning.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::{Platform, SourceName};

/// A secret string. Never printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Call only where it is sent upstream.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The whole, validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from, if any.
    pub path: Option<PathBuf>,
    pub database: DatabaseConfig,
    pub storage: StorageConfig,
    pub server: ServerConfig,
    pub sync: SyncConfig,
    pub sources: Vec<SourceConfig>,
}

#[derive(Clone, Debug)]
pub struct DatabaseConfig {
    /// `None`: the embedded cluster in `storage.data_dir/postgres`.
    pub url: Option<Secret>,
    pub max_connections: u32,
}

#[derive(Clone, Debug)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub token: Option<Secret>,
    pub shutdown_timeout: Duration,
}

/// Settings of the engine and scheduler that apply to all sources.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    pub max_concurrent_sources: usize,
    pub schedule_jitter: Duration,
    /// Attempts per request before a transient failure fails the conversation.
    pub max_retries: u32,
}

#[derive(Clone, Debug)]
pub struct SourceConfig {
    pub name: SourceName,
    pub schedule: String,
    pub requests_per_second: f64,
    pub request_timeout: Duration,
    pub enabled: bool,
    pub platform: PlatformConfig,
}

impl SourceConfig {
    pub fn platform_key(&self) -> Platform {
        match self.platform {
            PlatformConfig::Tangsengdaodao(_) => Platform::Tangsengdaodao,
            PlatformConfig::Yunxin(_) => Platform::Yunxin,
            PlatformConfig::Yunhu(_) => Platform::Yunhu,
        }
    }
}

#[derive(Clone, Debug)]
pub enum PlatformConfig {
    Tangsengdaodao(TsddConfig),
    Yunxin(YunxinConfig),
    Yunhu(YunhuConfig),
}

#[derive(Clone, Debug)]
pub enum TsddAuth {
    Password { username: String, password: Secret },
    Token(Secret),
}

#[derive(Clone, Debug)]
pub struct TsddConfig {
    /// API root; `/v1/...` is appended.
    pub base_url: String,
    pub auth: TsddAuth,
    /// 1 (web) or 2 (PC); never 0, which would log the user's phone out.
    pub device_flag: u8,
    /// Messages per channel-sync window.
    pub page_size: u32,
}

#[derive(Clone, Debug)]
pub struct YunxinConfig {
    pub base_url: String,
    pub app_key: String,
    pub app_secret: Secret,
    pub accounts: Vec<String>,
    pub history_start: Option<DateTime<Utc>>,
    pub rescan_days: u32,
}

#[derive(Clone, Debug)]
pub struct YunhuConfig {
    pub base_url: String,
    pub token: Secret,
    pub rescan_messages: u32,
    pub rescan_days: u32,
}
