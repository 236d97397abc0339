//! Configuration: a TOML file layered with `CHATVAULT_*` environment variables.
//!
//! [`load`] finds the file (an explicit path, else `CHATVAULT_CONFIG`, else `./chatvault.toml`
//! if it exists, else none: all defaults and no sources), checks it against the schema and
//! returns a validated [`Config`] with warnings, or *every* problem found at once
//! ([`ConfigErrors`]), each with its file, line and dotted key. `deploy/chatvault.example.toml`
//! is the commented reference of every key; a test keeps it loadable.
//!
//! The file is walked by hand (with `toml_edit` spans for line numbers) rather than through
//! `serde`, so that one pass reports all unknown keys with suggestions, keys of the wrong
//! platform and values of the wrong type, instead of stopping at the first.
//!
//! Layering: `CHATVAULT_DATABASE_URL`, `CHATVAULT_DATA_DIR`, `CHATVAULT_LISTEN` and
//! `CHATVAULT_SERVER_TOKEN` win over the file; a secret they override is not resolved from the
//! file at all. A bad value there is a problem keyed by the variable's name.
//!
//! Secrets are [`Secret`]s: their `Debug` and `Display` print `***` (invariant 7), and no
//! problem or warning ever quotes one. Each secret key `x` is given as exactly one of `x_env`
//! (a variable name), `x_file` (a path; trailing newlines are trimmed) or `x` inline, which is
//! accepted with a warning (for `database.url` only when it holds a password).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use toml_edit::{ImDocument, Item, TableLike, Value};

use crate::model::{Platform, SourceName};
use crate::retention::{self, Retention, RetentionConfig};

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
    /// `[retention]`: what is purged when, and whether the daemon purges by itself.
    pub retention: RetentionConfig,
    pub integrity: IntegrityConfig,
    /// `[attachments]`: which files messages point to are downloaded, where they go, and
    /// how fast.
    pub attachments: AttachmentsConfig,
}

/// `[attachments]` (README, "Attachments").
#[derive(Clone, Debug)]
pub struct AttachmentsConfig {
    /// Whether attachments are downloaded at all (references are recorded either way).
    pub enabled: bool,
    /// The kinds downloaded; the others are recorded as `skipped`.
    pub kinds: Vec<crate::attachments::AttachmentKind>,
    /// Where blobs go.
    pub store: BlobStoreConfig,
    /// A file larger than this is not kept (`too_large`).
    pub max_file_bytes: u64,
    /// At most this much is downloaded per source and run; the rest waits for the next run.
    pub max_run_bytes: u64,
    /// Download requests per second, per source (separate from the source's own limit).
    pub requests_per_second: f64,
    /// Downloads in flight at once, per source.
    pub concurrency: u32,
    /// Attempts before a download that keeps failing is given up (`gone` for 404 and
    /// expired URLs, `failed` otherwise).
    pub max_attempts: u32,
    /// Timeout of one download.
    pub request_timeout: Duration,
}

/// `attachments.store`: a directory (the default: `data_dir/attachments`) or an
/// S3-compatible bucket.
#[derive(Clone, Debug)]
pub enum BlobStoreConfig {
    Directory(PathBuf),
    S3(S3Config),
}

/// `store = "s3://bucket/prefix"` with `[attachments.s3]`.
#[derive(Clone, Debug)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); AWS when absent.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    /// Whether an `http://` endpoint is allowed (a server on the same machine).
    pub allow_http: bool,
}

/// `[integrity]`: where the chain heads go after each sync run, to be kept outside the
/// database (README, "Chain heads kept elsewhere").
#[derive(Clone, Debug, Default)]
pub struct IntegrityConfig {
    /// A file each run appends one line of heads to (created 0600).
    pub heads_file: Option<PathBuf>,
    /// A program and its arguments (run without a shell) that gets each run's line of heads
    /// on stdin.
    pub heads_command: Option<Vec<String>>,
    /// How long `heads_command` may take before it is killed.
    pub heads_command_timeout: Duration,
}

impl IntegrityConfig {
    /// Whether the heads go anywhere.
    pub fn is_configured(&self) -> bool {
        self.heads_file.is_some() || self.heads_command.is_some()
    }
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
    /// Host names (lowercase, without a port) the HTTP server answers to besides the
    /// loopback names and the listen address: the `Host` check against DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// The URL browsers reach the web page at, when it is not the listen address (a
    /// reverse proxy with TLS); an `https` URL makes the sign-in cookie `Secure`.
    pub public_url: Option<String>,
    /// Further tokens with names (`[[server.tokens]]`), for the access log to tell callers
    /// apart; `token` is named `default`.
    pub tokens: Vec<NamedToken>,
}

/// A `[[server.tokens]]` entry.
#[derive(Clone, Debug)]
pub struct NamedToken {
    pub name: String,
    pub token: Secret,
}

/// The shortest `server.token` accepted: a token is all that stands between the network
/// and the archive.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Settings of the engine and scheduler that apply to all sources.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    pub max_concurrent_sources: usize,
    pub schedule_jitter: Duration,
    /// Attempts per request before a transient failure fails the conversation.
    pub max_retries: u32,
    /// While a source's push channel is connected and healthy, only every n-th scheduled
    /// run polls (1: every run, as without push).
    pub push_poll_factor: u32,
}

#[derive(Clone, Debug)]
pub struct SourceConfig {
    pub name: SourceName,
    pub schedule: String,
    pub requests_per_second: f64,
    pub request_timeout: Duration,
    pub enabled: bool,
    /// Keep the platform's push channel open for this source (when the platform has one);
    /// `false` leaves the source to its schedule alone.
    pub push: bool,
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
    /// Minutes between re-reads of an active chat's trailing window; 0: every run.
    pub rescan_every_minutes: u32,
    /// The push channel's WebSocket (`ws://` or `wss://`).
    pub ws_url: String,
}

/// The file read when neither a path nor `CHATVAULT_CONFIG` is given, if it exists.
pub const DEFAULT_FILE: &str = "chatvault.toml";
/// The file format version this build reads (`version = 1`, optional).
pub const CONFIG_VERSION: i64 = 1;

const ENV_CONFIG: &str = "CHATVAULT_CONFIG";
const ENV_DATABASE_URL: &str = "CHATVAULT_DATABASE_URL";
const ENV_DATA_DIR: &str = "CHATVAULT_DATA_DIR";
const ENV_LISTEN: &str = "CHATVAULT_LISTEN";
const ENV_SERVER_TOKEN: &str = "CHATVAULT_SERVER_TOKEN";

const DEFAULT_DATA_DIR: &str = "./chatvault-data";
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_SCHEDULE: &str = "0 */5 * * * *";
const DEFAULT_YUNXIN_BASE_URL: &str = "https://open.yunxinapi.com";
const DEFAULT_YUNHU_BASE_URL: &str = "https://chat-go.jwzhd.com";
const DEFAULT_YUNHU_WS_URL: &str = crate::connector::yunhu::push::DEFAULT_WS_URL;

/// Bounds of values that would otherwise overflow a duration or never end: a request every
/// 1000 s at the slowest, a million a second at the fastest; an hour per request; a day for
/// the shutdown deadline and the schedule jitter; a hundred retries of one request.
const MIN_REQUESTS_PER_SECOND: f64 = 0.001;
const MAX_REQUESTS_PER_SECOND: f64 = 1_000_000.0;
const MAX_REQUEST_TIMEOUT_SECONDS: u64 = 3600;
const MAX_WAIT_SECONDS: u64 = 86_400;
const MAX_RETRIES: u32 = 100;

const TOP_KEYS: &[&str] = &[
    "version",
    "database",
    "storage",
    "server",
    "sync",
    "source",
    "integrity",
    "retention",
    "attachments",
];
const ATTACHMENTS_KEYS: &[&str] = &[
    "enabled",
    "kinds",
    "store",
    "max_file_mb",
    "max_run_mb",
    "requests_per_second",
    "concurrency",
    "max_attempts",
    "request_timeout",
    "s3",
];
const S3_KEYS: &[&str] = &[
    "endpoint",
    "region",
    "allow_http",
    "access_key_id",
    "access_key_id_env",
    "access_key_id_file",
    "secret_access_key",
    "secret_access_key_env",
    "secret_access_key_file",
];
const INTEGRITY_KEYS: &[&str] = &["heads_file", "heads_command", "heads_command_timeout"];
const RETENTION_KEYS: &[&str] = &["default", "auto_purge", "conversation_type"];
const DATABASE_KEYS: &[&str] = &["url", "url_env", "url_file", "max_connections"];
const STORAGE_KEYS: &[&str] = &["data_dir"];
const SERVER_KEYS: &[&str] = &[
    "listen",
    "token",
    "token_env",
    "token_file",
    "shutdown_timeout",
    "allowed_hosts",
    "public_url",
    "tokens",
];
const SERVER_TOKEN_KEYS: &[&str] = &["name", "token", "token_env", "token_file"];
const SYNC_KEYS: &[&str] = &[
    "max_concurrent_sources",
    "schedule_jitter",
    "max_retries",
    "push_poll_factor",
];
const SOURCE_KEYS: &[&str] = &[
    "name",
    "platform",
    "enabled",
    "push",
    "schedule",
    "requests_per_second",
    "request_timeout",
    "retention",
];
const TSDD_KEYS: &[&str] = &[
    "base_url",
    "username",
    "password",
    "password_env",
    "password_file",
    "token",
    "token_env",
    "token_file",
    "device_flag",
    "page_size",
];
const YUNXIN_KEYS: &[&str] = &[
    "base_url",
    "app_key",
    "app_secret",
    "app_secret_env",
    "app_secret_file",
    "accounts",
    "history_start",
    "rescan_days",
];
const YUNHU_KEYS: &[&str] = &[
    "base_url",
    "token",
    "token_env",
    "token_file",
    "rescan_messages",
    "rescan_days",
    "rescan_every_minutes",
    "ws_url",
];

fn platform_keys(platform: Platform) -> &'static [&'static str] {
    match platform {
        Platform::Tangsengdaodao => TSDD_KEYS,
        Platform::Yunxin => YUNXIN_KEYS,
        Platform::Yunhu => YUNHU_KEYS,
    }
}

/// A validated configuration and what was worth a warning on the way (inline secrets).
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// One line each, e.g. `source "acme": password is given inline; prefer password_env or
    /// password_file`. Never holds a secret.
    pub warnings: Vec<String>,
}

/// One thing wrong with the configuration. Never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file; `None` for environment variables.
    pub file: Option<PathBuf>,
    /// 1-based line in `file`, when known.
    pub line: Option<usize>,
    /// Dotted path of the key (`server.listen`, `source "acme".schedule`, `source[2]`), the
    /// environment variable, or empty for the file as a whole.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}: ", file.display())?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, Some(line)) => write!(f, "line {line}: ")?,
            (None, None) => {}
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a configuration, in file order. `Display` prints one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<Problem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Looks up an environment variable; tests pass a map instead of the process environment.
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Finds, reads and validates the configuration, layering the `CHATVAULT_*` variables on top.
///
/// The file is `path` if given (it must exist), else `$CHATVAULT_CONFIG` (it must exist), else
/// `./chatvault.toml` if it exists; with none of them, every setting takes its default and
/// there are no sources.
pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigErrors> {
    load_with(
        path,
        &|name| std::env::var(name).ok(),
        Path::new(DEFAULT_FILE),
    )
}

/// Validates `text` as a configuration file that was not read from disk, looking variables up
/// with `env` (for `*_env` secrets and the `CHATVAULT_*` overrides).
pub fn load_str(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, ConfigErrors> {
    parse(text, None, env)
}

fn load_with(path: Option<&Path>, env: Env, default_file: &Path) -> Result<Loaded, ConfigErrors> {
    load_with_mode(path, env, default_file, false)
}

/// Like [`load`], for commands that read the archive but never contact upstream (`status`,
/// `verify`, `migrate`): a source secret that cannot be resolved is a warning, not an error.
pub fn load_offline(path: Option<&Path>) -> Result<Loaded, ConfigErrors> {
    let env = |key: &str| std::env::var(key).ok();
    load_with_mode(path, &env, Path::new(DEFAULT_FILE), true)
}

fn load_with_mode(
    path: Option<&Path>,
    env: Env,
    default_file: &Path,
    offline: bool,
) -> Result<Loaded, ConfigErrors> {
    let Some(file) = resolve_path(path, env, default_file) else {
        return parse_with_mode("", None, env, offline);
    };
    let text = std::fs::read_to_string(&file).map_err(|err| {
        ConfigErrors(vec![Problem {
            file: Some(file.clone()),
            line: None,
            key: String::new(),
            message: format!("cannot read config file: {err}"),
        }])
    })?;
    parse_with_mode(&text, Some(&file), env, offline)
}

fn resolve_path(explicit: Option<&Path>, env: Env, default_file: &Path) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    if let Some(path) = env(ENV_CONFIG).filter(|path| !path.is_empty()) {
        return Some(PathBuf::from(path));
    }
    default_file.exists().then(|| default_file.to_path_buf())
}

fn parse(text: &str, file: Option<&Path>, env: Env) -> Result<Loaded, ConfigErrors> {
    parse_with_mode(text, file, env, false)
}

fn parse_with_mode(
    text: &str,
    file: Option<&Path>,
    env: Env,
    offline: bool,
) -> Result<Loaded, ConfigErrors> {
    let mut cx = Cx {
        file: file.map(Path::to_path_buf),
        text,
        env,
        problems: Vec::new(),
        warnings: Vec::new(),
        offline,
        source_retention: std::collections::BTreeMap::new(),
    };
    let document = match ImDocument::parse(text) {
        Ok(document) => document,
        Err(err) => {
            cx.problem(err.span(), "", one_line(err.message()));
            return Err(cx.into_errors());
        }
    };
    let root = Section {
        table: Some(document.as_table()),
        path: String::new(),
        span: None,
    };
    let config = read_config(&mut cx, &root);
    if cx.problems.is_empty() {
        Ok(Loaded {
            config,
            warnings: cx.warnings,
        })
    } else {
        Err(cx.into_errors())
    }
}

/// What one pass over the file collects.
struct Cx<'a> {
    file: Option<PathBuf>,
    text: &'a str,
    env: Env<'a>,
    problems: Vec<Problem>,
    warnings: Vec<String>,
    /// Source secrets that cannot be resolved are warnings (see [`load_offline`]).
    offline: bool,
    /// Each source's `retention`, read with the source, kept in `[retention]`'s config.
    source_retention: std::collections::BTreeMap<String, Retention>,
}

impl Cx<'_> {
    fn problem(
        &mut self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        let line = span.map(|span| {
            let start = span.start.min(self.text.len());
            1 + self.text.as_bytes()[..start]
                .iter()
                .filter(|byte| **byte == b'\n')
                .count()
        });
        self.problems.push(Problem {
            file: self.file.clone(),
            line,
            key: key.into(),
            message: message.into(),
        });
    }

    fn env_problem(&mut self, variable: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            file: None,
            line: None,
            key: variable.to_owned(),
            message: message.into(),
        });
    }

    /// A `CHATVAULT_*` override: `None` when unset, a problem when set but empty.
    fn env_override(&mut self, variable: &str) -> Option<String> {
        let value = (self.env)(variable)?;
        if value.is_empty() {
            self.env_problem(variable, "is set but empty; unset it or give a value");
            return None;
        }
        Some(value)
    }

    fn into_errors(self) -> ConfigErrors {
        let mut problems = self.problems;
        problems.sort_by_key(|problem| (problem.line.is_none(), problem.line));
        ConfigErrors(problems)
    }
}

/// A table of the file (or an absent one: every key then takes its default).
struct Section<'t> {
    table: Option<&'t dyn TableLike>,
    /// Dotted path for problems: empty for the root, `server`, `source "acme"`.
    path: String,
    /// Where the table starts, for problems about the table as a whole.
    span: Option<Range<usize>>,
}

impl<'t> Section<'t> {
    fn child(&self, cx: &mut Cx, name: &str) -> Section<'t> {
        let path = self.key_path(name);
        let Some((item, span)) = self.get(name) else {
            return Section {
                table: None,
                path,
                span: None,
            };
        };
        match item.as_table_like() {
            Some(table) => Section {
                table: Some(table),
                path,
                span: item.span().or(span),
            },
            None => {
                cx.problem(span.clone(), &path, expected("a table", item));
                Section {
                    table: None,
                    path,
                    span,
                }
            }
        }
    }

    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The item under `key` and the span of its key.
    fn get(&self, key: &str) -> Option<(&'t Item, Option<Range<usize>>)> {
        let (key, item) = self.table?.get_key_value(key)?;
        if item.is_none() {
            return None;
        }
        Some((item, key.span().or_else(|| item.span())))
    }

    fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn span_of(&self, key: &str) -> Option<Range<usize>> {
        self.get(key).and_then(|(_, span)| span)
    }

    fn missing(&self, cx: &mut Cx, key: &str, hint: &str) {
        cx.problem(
            self.span.clone(),
            &self.path,
            format!("missing required key \"{key}\"{hint}"),
        );
    }

    /// The value under `key` converted by `convert`; a problem naming `expected_type` when it
    /// does not convert. `None` when absent or wrong.
    fn typed<T>(
        &self,
        cx: &mut Cx,
        key: &str,
        expected_type: &str,
        convert: impl FnOnce(&'t Value) -> Option<T>,
    ) -> Option<(T, Option<Range<usize>>)> {
        let (item, span) = self.get(key)?;
        match item.as_value().and_then(convert) {
            Some(value) => Some((value, span)),
            None => {
                cx.problem(span, self.key_path(key), expected(expected_type, item));
                None
            }
        }
    }

    fn string(&self, cx: &mut Cx, key: &str) -> Option<(&'t str, Option<Range<usize>>)> {
        let (value, span) = self.typed(cx, key, "a string", Value::as_str)?;
        if value.is_empty() {
            cx.problem(span, self.key_path(key), "must not be empty");
            return None;
        }
        Some((value, span))
    }

    fn required_string(&self, cx: &mut Cx, key: &str) -> Option<&'t str> {
        if !self.has(key) {
            self.missing(cx, key, "");
            return None;
        }
        self.string(cx, key).map(|(value, _)| value)
    }

    fn integer(&self, cx: &mut Cx, key: &str, range: RangeInclusive<i64>) -> Option<i64> {
        let (value, span) = self.typed(cx, key, "an integer", Value::as_integer)?;
        if range.contains(&value) {
            return Some(value);
        }
        let (min, max) = (*range.start(), *range.end());
        let message = if max < 1_000_000 {
            format!("must be between {min} and {max}, got {value}")
        } else if value < min {
            format!("must be at least {min}, got {value}")
        } else {
            format!("must be at most {max}, got {value}")
        };
        cx.problem(span, self.key_path(key), message);
        None
    }

    fn u32_or(&self, cx: &mut Cx, key: &str, default: u32, range: RangeInclusive<u32>) -> u32 {
        let range = i64::from(*range.start())..=i64::from(*range.end());
        self.integer(cx, key, range)
            .and_then(|value| u32::try_from(value).ok())
            .unwrap_or(default)
    }

    /// Whole seconds in `min..=max` (a negative, fractional or absurdly large value is a
    /// problem, never a duration that could overflow later).
    fn seconds_or(&self, cx: &mut Cx, key: &str, default: u64, min: u64, max: u64) -> Duration {
        let range = i64::try_from(min).unwrap_or(i64::MAX)..=i64::try_from(max).unwrap_or(i64::MAX);
        let seconds = self
            .integer(cx, key, range)
            .and_then(|value| u64::try_from(value).ok())
            .unwrap_or(default);
        Duration::from_secs(seconds)
    }

    fn bool_or(&self, cx: &mut Cx, key: &str, default: bool) -> bool {
        self.typed(cx, key, "a boolean", Value::as_bool)
            .map_or(default, |(value, _)| value)
    }

    /// A number in `min..=max` (both positive), so that e.g. `1 / value` seconds is a
    /// duration that exists.
    fn f64_in_or(&self, cx: &mut Cx, key: &str, default: f64, min: f64, max: f64) -> f64 {
        let number = |value: &Value| {
            value
                .as_float()
                .or_else(|| value.as_integer().map(|n| n as f64))
        };
        let Some((value, span)) = self.typed(cx, key, "a number", number) else {
            return default;
        };
        if !(value.is_finite() && (min..=max).contains(&value)) {
            cx.problem(
                span,
                self.key_path(key),
                format!(
                    "must be a number from {} to {}, got {}",
                    plain_number(min),
                    plain_number(max),
                    plain_number(value)
                ),
            );
            return default;
        }
        value
    }

    /// An http(s) url, without a trailing `/`. Required when there is no default.
    fn http_url(&self, cx: &mut Cx, key: &str, default: Option<&str>) -> Option<String> {
        if !self.has(key) {
            if default.is_none() {
                self.missing(cx, key, "");
            }
            return default.map(str::to_owned);
        }
        let (raw, span) = self.string(cx, key)?;
        let problem = match reqwest::Url::parse(raw) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {
                return Some(raw.trim_end_matches('/').to_owned())
            }
            Ok(_) => format!("invalid url {raw:?}: expected an http:// or https:// url"),
            Err(err) => format!("invalid url {raw:?}: {err}"),
        };
        cx.problem(span, self.key_path(key), problem);
        None
    }

    /// A WebSocket url (`ws://` or `wss://`), `default` when absent.
    fn ws_url(&self, cx: &mut Cx, key: &str, default: &str) -> Option<String> {
        if !self.has(key) {
            return Some(default.to_owned());
        }
        let (raw, span) = self.string(cx, key)?;
        let problem = match reqwest::Url::parse(raw) {
            Ok(url) if matches!(url.scheme(), "ws" | "wss") => return Some(raw.to_owned()),
            Ok(_) => format!("invalid url {raw:?}: expected a ws:// or wss:// url"),
            Err(err) => format!("invalid url {raw:?}: {err}"),
        };
        cx.problem(span, self.key_path(key), problem);
        None
    }

    fn has_secret(&self, key: &str) -> bool {
        self.has(key) || self.has(&format!("{key}_env")) || self.has(&format!("{key}_file"))
    }

    fn missing_secret(&self, cx: &mut Cx, key: &str) {
        self.missing(cx, key, &format!(" (give {key}_env or {key}_file)"));
    }

    fn required_secret(&self, cx: &mut Cx, key: &str) -> Option<Secret> {
        if !self.has_secret(key) {
            self.missing_secret(cx, key);
            return None;
        }
        self.secret(cx, key, |_| true)
    }

    /// The secret `key`, given as one of `key_env`, `key_file` or `key` inline (with a warning
    /// when `inline_is_sensitive` says so). `None` when absent or wrong.
    fn secret(
        &self,
        cx: &mut Cx,
        key: &str,
        inline_is_sensitive: fn(&str) -> bool,
    ) -> Option<Secret> {
        let env_key = format!("{key}_env");
        let file_key = format!("{key}_file");
        let given: Vec<&str> = [env_key.as_str(), file_key.as_str(), key]
            .into_iter()
            .filter(|key| self.has(key))
            .collect();
        if given.len() > 1 {
            cx.problem(
                self.span_of(given[1]),
                &self.path,
                format!(
                    "give only one of {env_key}, {file_key} or {key}, not {}",
                    given.join(" and ")
                ),
            );
            return None;
        }
        match given.first().copied() {
            None => None,
            Some(given) if given == env_key => {
                let (variable, span) = self.string(cx, &env_key)?;
                let value = (cx.env)(variable);
                let problem = match value {
                    Some(value) if !value.is_empty() => return Some(Secret::new(value)),
                    Some(_) => format!("environment variable \"{variable}\" is empty"),
                    None => format!("environment variable \"{variable}\" is not set"),
                };
                self.unresolved(cx, span, &env_key, problem)
            }
            Some(given) if given == file_key => {
                let (path, span) = self.string(cx, &file_key)?;
                let problem = match std::fs::read_to_string(path) {
                    Ok(text) => {
                        let value = text.trim_end_matches(['\r', '\n']);
                        if !value.is_empty() {
                            return Some(Secret::new(value));
                        }
                        format!("secret file {path:?} is empty")
                    }
                    Err(err) => format!("cannot read secret file {path:?}: {err}"),
                };
                self.unresolved(cx, span, &file_key, problem)
            }
            Some(_) => {
                let (value, _) = self.string(cx, key)?;
                if inline_is_sensitive(value) {
                    cx.warnings.push(format!(
                        "{}: {key} is given inline; prefer {key}_env or {key}_file",
                        self.path
                    ));
                }
                Some(Secret::new(value))
            }
        }
    }

    /// A secret that could not be read: an error, or (offline, for a source) a warning and an
    /// empty secret, so that commands that never contact upstream still work.
    fn unresolved(
        &self,
        cx: &mut Cx,
        span: Option<Range<usize>>,
        key: &str,
        problem: String,
    ) -> Option<Secret> {
        if cx.offline && self.path.starts_with("source") {
            cx.warnings.push(format!(
                "{}: {problem} (fine for this command; syncing the source needs it)",
                self.key_path(key)
            ));
            return Some(Secret::new(""));
        }
        cx.problem(span, self.key_path(key), problem);
        None
    }

    /// Reports every key not in `allowed`, suggesting the nearest; in a source of `platform`,
    /// a key of another platform is named as such.
    fn check_keys(&self, cx: &mut Cx, allowed: &[&str], platform: Option<Platform>) {
        let Some(table) = self.table else {
            return;
        };
        for (key, item) in table.iter() {
            if allowed.contains(&key) {
                continue;
            }
            let span = table
                .key(key)
                .and_then(|key| key.span())
                .or_else(|| item.span());
            let owners: Vec<&str> = Platform::ALL
                .into_iter()
                .filter(|other| platform_keys(*other).contains(&key))
                .map(Platform::key)
                .collect();
            let message = match (platform, suggest(key, allowed.iter().copied())) {
                (Some(platform), _) if !owners.is_empty() => format!(
                    "\"{key}\" is not a key of platform {platform} (only of {})",
                    owners.join(", ")
                ),
                (_, Some(nearest)) => {
                    format!("unknown key \"{key}\", did you mean \"{nearest}\"?")
                }
                (_, None) => format!("unknown key \"{key}\""),
            };
            cx.problem(span, &self.path, message);
        }
    }
}

/// The candidate closest to `given`, if it is close enough to be a likely typo.
/// A number as a person would write it: `0.001`, `1000000`, `1e-300`.
fn plain_number(value: f64) -> String {
    if value == 0.0 || (1e-4..1e15).contains(&value.abs()) {
        format!("{value}")
    } else {
        format!("{value:e}")
    }
}

fn suggest<'a>(given: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(given, candidate), candidate))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

fn expected(expected_type: &str, found: &Item) -> String {
    let found = match found.type_name() {
        "string" => "a string",
        "integer" => "an integer",
        "float" => "a float",
        "boolean" => "a boolean",
        "datetime" => "a datetime",
        "array" => "an array",
        "table" | "inline table" => "a table",
        "array of tables" => "an array of tables",
        _ => "nothing",
    };
    format!("expected {expected_type}, found {found}")
}

fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why `cron` rejected `expression`, on one line. Its own message repeats the expression with
/// a caret under the error on the next line, then sometimes says why.
fn cron_reason(expression: &str, err: &cron::error::Error) -> String {
    let fields = expression.split_whitespace().count();
    if !(6..=7).contains(&fields) {
        return format!(
            "expected 6 or 7 fields (sec min hour day-of-month month day-of-week [year]), \
             found {fields}"
        );
    }
    let message = err.to_string();
    let lines: Vec<&str> = message.lines().collect();
    let reason = lines.get(2..).map(|rest| one_line(&rest.join("\n")));
    match reason.filter(|reason| !reason.is_empty()) {
        Some(reason) => reason,
        None => {
            let column = lines
                .get(1)
                .map_or(0, |caret| caret.len().saturating_sub(1));
            let rest = expression.get(column..).unwrap_or(expression);
            format!("syntax error at {rest:?}")
        }
    }
}

/// Whether a database url carries a password (`user:password@host` or `password=`).
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let userinfo = authority.rsplit_once('@').map(|(userinfo, _)| userinfo);
    userinfo.is_some_and(|userinfo| userinfo.contains(':')) || url.contains("password=")
}

fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

fn valid_source_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn read_config(cx: &mut Cx, root: &Section) -> Config {
    root.check_keys(cx, TOP_KEYS, None);
    if let Some(version) = root.integer(cx, "version", i64::MIN..=i64::MAX) {
        if version != CONFIG_VERSION {
            cx.problem(
                root.span_of("version"),
                "version",
                format!(
                    "unsupported config version {version}; \
                     this chatvault reads version {CONFIG_VERSION}"
                ),
            );
        }
    }
    let database = read_database(cx, root);
    let storage = read_storage(cx, root);
    let server = read_server(cx, root);
    let sync = read_sync(cx, root);
    let sources = read_sources(cx, root);
    let integrity = read_integrity(cx, root);
    let retention = read_retention(cx, root);
    let attachments = read_attachments(cx, root, &storage.data_dir);
    Config {
        path: cx.file.clone(),
        database,
        storage,
        server,
        sync,
        sources,
        integrity,
        retention,
        attachments,
    }
}

fn read_attachments(cx: &mut Cx, root: &Section, data_dir: &Path) -> AttachmentsConfig {
    use crate::attachments::AttachmentKind;
    let section = root.child(cx, "attachments");
    section.check_keys(cx, ATTACHMENTS_KEYS, None);
    let enabled = section.bool_or(cx, "enabled", true);
    let kinds = read_kinds(cx, &section).unwrap_or_else(|| AttachmentKind::ALL.to_vec());
    let store = match section.string(cx, "store") {
        None => BlobStoreConfig::Directory(data_dir.join("attachments")),
        Some((text, span)) => match text.strip_prefix("s3://") {
            Some(rest) => read_s3(cx, &section, rest, span).map_or_else(
                || BlobStoreConfig::Directory(data_dir.join("attachments")),
                BlobStoreConfig::S3,
            ),
            None if Path::new(text).is_absolute() => {
                BlobStoreConfig::Directory(PathBuf::from(text))
            }
            None => {
                cx.problem(
                    span,
                    section.key_path("store"),
                    format!("must be an absolute directory or s3://bucket/prefix, got {text:?}"),
                );
                BlobStoreConfig::Directory(data_dir.join("attachments"))
            }
        },
    };
    if !matches!(store, BlobStoreConfig::S3(_)) && section.has("s3") {
        cx.problem(
            section.span_of("s3"),
            section.key_path("s3"),
            "is given but store is not an s3:// URL, so it would not be used",
        );
    }
    const MB: u64 = 1024 * 1024;
    let max_file_mb = section
        .integer(cx, "max_file_mb", 1..=1_000_000)
        .unwrap_or(200) as u64;
    let max_run_mb = section
        .integer(cx, "max_run_mb", 1..=1_000_000_000)
        .unwrap_or(10_240) as u64;
    AttachmentsConfig {
        enabled,
        kinds,
        store,
        max_file_bytes: max_file_mb * MB,
        max_run_bytes: max_run_mb * MB,
        requests_per_second: section.f64_in_or(
            cx,
            "requests_per_second",
            10.0,
            MIN_REQUESTS_PER_SECOND,
            MAX_REQUESTS_PER_SECOND,
        ),
        concurrency: section.u32_or(cx, "concurrency", 4, 1..=64),
        max_attempts: section.u32_or(cx, "max_attempts", 5, 1..=MAX_RETRIES),
        request_timeout: section.seconds_or(
            cx,
            "request_timeout",
            300,
            1,
            MAX_REQUEST_TIMEOUT_SECONDS,
        ),
    }
}

/// `attachments.kinds`: an array of kind names, each known.
fn read_kinds(cx: &mut Cx, section: &Section) -> Option<Vec<crate::attachments::AttachmentKind>> {
    use crate::attachments::AttachmentKind;
    if !section.has("kinds") {
        return None;
    }
    let (array, span) = section.typed(cx, "kinds", "an array of strings", Value::as_array)?;
    let mut kinds = Vec::new();
    for value in array.iter() {
        match value.as_str().and_then(AttachmentKind::parse) {
            Some(kind) => {
                if !kinds.contains(&kind) {
                    kinds.push(kind);
                }
            }
            None => {
                let names: Vec<&str> = AttachmentKind::ALL.iter().map(|k| k.as_str()).collect();
                cx.problem(
                    value.span().or(span.clone()),
                    section.key_path("kinds"),
                    match value.as_str() {
                        Some(name) => {
                            format!("{name:?} is not a kind; the kinds are {}", names.join(", "))
                        }
                        None => format!("each kind is a string, one of {}", names.join(", ")),
                    },
                );
                return None;
            }
        }
    }
    Some(kinds)
}

/// `[attachments.s3]` for `store = "s3://rest"`.
fn read_s3(
    cx: &mut Cx,
    parent: &Section,
    rest: &str,
    span: Option<Range<usize>>,
) -> Option<S3Config> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_matches('/').to_string();
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !bucket_ok {
        cx.problem(
            span,
            parent.key_path("store"),
            format!("{bucket:?} is not an S3 bucket name (3 to 63 lowercase letters, digits, '-' or '.')"),
        );
        return None;
    }
    let section = parent.child(cx, "s3");
    section.check_keys(cx, S3_KEYS, None);
    let endpoint = section
        .http_url(cx, "endpoint", None)
        .filter(|_| section.has("endpoint"));
    let allow_http = section.bool_or(cx, "allow_http", false);
    if let Some(endpoint) = &endpoint {
        if endpoint.starts_with("http://") && !allow_http {
            cx.problem(
                section.span_of("endpoint"),
                section.key_path("endpoint"),
                "is http://; set allow_http = true to send credentials unencrypted (only for a server on this machine)",
            );
        }
    }
    let region = section
        .string(cx, "region")
        .map_or_else(|| "us-east-1".to_string(), |(r, _)| r.to_string());
    let access_key_id = section.secret(cx, "access_key_id", |_| true);
    let secret_access_key = section.secret(cx, "secret_access_key", |_| true);
    if access_key_id.is_some() != secret_access_key.is_some() {
        cx.problem(
            section
                .span_of("access_key_id")
                .or(section.span_of("secret_access_key")),
            &section.path,
            "give both access_key_id and secret_access_key (as _env or _file), or neither",
        );
    }
    Some(S3Config {
        bucket: bucket.to_string(),
        prefix,
        endpoint,
        region,
        access_key_id,
        secret_access_key,
        allow_http,
    })
}

/// A retention period under `key` (`90d`, `18m`, `7y`, `forever`); `None` when absent or
/// wrong (a problem then).
fn read_period(cx: &mut Cx, section: &Section, key: &str) -> Option<Retention> {
    let (text, span) = section.string(cx, key)?;
    match retention::parse(text) {
        Ok(period) => Some(period),
        Err(message) => {
            cx.problem(span, section.key_path(key), message);
            None
        }
    }
}

fn read_retention(cx: &mut Cx, root: &Section) -> RetentionConfig {
    let section = root.child(cx, "retention");
    section.check_keys(cx, RETENTION_KEYS, None);
    let default = read_period(cx, &section, "default").flatten();
    let auto_purge = section.bool_or(cx, "auto_purge", false);
    let types = section.child(cx, "conversation_type");
    let names: Vec<&str> = retention::CONVERSATION_TYPES
        .iter()
        .map(|t| t.as_str())
        .collect();
    types.check_keys(cx, &names, None);
    let mut conversation_type = std::collections::BTreeMap::new();
    for name in names {
        if let Some(period) = read_period(cx, &types, name) {
            conversation_type.insert(name.to_string(), period);
        }
    }
    let any_period = default.is_some()
        || conversation_type.values().any(Option::is_some)
        || cx.source_retention.values().any(Option::is_some);
    if auto_purge && !any_period {
        cx.problem(
            section.span_of("auto_purge"),
            section.key_path("auto_purge"),
            "is true but no retention period is configured (retention.default, [retention.conversation_type] or a source's retention), so nothing would ever be purged",
        );
    }
    RetentionConfig {
        default,
        conversation_type,
        sources: std::mem::take(&mut cx.source_retention),
        auto_purge,
    }
}

fn read_integrity(cx: &mut Cx, root: &Section) -> IntegrityConfig {
    let section = &root.child(cx, "integrity");
    section.check_keys(cx, INTEGRITY_KEYS, None);
    let heads_file = section
        .string(cx, "heads_file")
        .map(|(path, _)| PathBuf::from(path));
    let heads_command = read_heads_command(cx, section);
    IntegrityConfig {
        heads_file,
        heads_command,
        heads_command_timeout: section.seconds_or(cx, "heads_command_timeout", 30, 1, 3600),
    }
}

/// `integrity.heads_command`: a non-empty array of strings, the program first.
fn read_heads_command(cx: &mut Cx, section: &Section) -> Option<Vec<String>> {
    if !section.has("heads_command") {
        return None;
    }
    let (array, span) = section.typed(
        cx,
        "heads_command",
        "an array of strings (the program, then its arguments)",
        Value::as_array,
    )?;
    let mut argv = Vec::new();
    for (index, value) in array.iter().enumerate() {
        match value.as_str() {
            Some(arg) => argv.push(arg.to_string()),
            None => {
                let key = format!("{}[{index}]", section.key_path("heads_command"));
                cx.problem(
                    value.span().or(span.clone()),
                    key,
                    expected("a string", &Item::Value(value.clone())),
                );
                return None;
            }
        }
    }
    if argv.first().is_none_or(|program| program.is_empty()) {
        cx.problem(
            span,
            section.key_path("heads_command"),
            "must name a program, e.g. [\"ssh\", \"heads@vault.example\", \"cat >> heads.log\"]",
        );
        return None;
    }
    Some(argv)
}

fn read_database(cx: &mut Cx, root: &Section) -> DatabaseConfig {
    let section = &root.child(cx, "database");
    section.check_keys(cx, DATABASE_KEYS, None);
    let max_connections = section.u32_or(cx, "max_connections", 8, 1..=u32::MAX);
    let url = if let Some(url) = cx.env_override(ENV_DATABASE_URL) {
        if !is_postgres_url(&url) {
            cx.env_problem(
                ENV_DATABASE_URL,
                "expected a postgres:// or postgresql:// url",
            );
        }
        Some(Secret::new(url))
    } else {
        let url = section.secret(cx, "url", url_has_password);
        if let Some(url) = &url {
            if !is_postgres_url(url.expose()) {
                let span = ["url", "url_env", "url_file"]
                    .into_iter()
                    .find_map(|key| section.span_of(key));
                cx.problem(
                    span,
                    section.key_path("url"),
                    "expected a postgres:// or postgresql:// url",
                );
            }
        }
        url
    };
    DatabaseConfig {
        url,
        max_connections,
    }
}

fn read_storage(cx: &mut Cx, root: &Section) -> StorageConfig {
    let section = &root.child(cx, "storage");
    section.check_keys(cx, STORAGE_KEYS, None);
    let from_file = section
        .string(cx, "data_dir")
        .map(|(dir, _)| dir.to_owned());
    let data_dir = cx
        .env_override(ENV_DATA_DIR)
        .or(from_file)
        .unwrap_or_else(|| DEFAULT_DATA_DIR.to_owned());
    StorageConfig {
        data_dir: PathBuf::from(data_dir),
    }
}

fn read_server(cx: &mut Cx, root: &Section) -> ServerConfig {
    let section = &root.child(cx, "server");
    section.check_keys(cx, SERVER_KEYS, None);
    let default_listen: SocketAddr = DEFAULT_LISTEN.parse().expect("the default is an address");
    let invalid = |listen: &str, err: std::net::AddrParseError| {
        format!(
            "invalid socket address {listen:?}: {err}; expected ip:port such as {DEFAULT_LISTEN}"
        )
    };
    let listen_from_env = cx.env_override(ENV_LISTEN);
    let listen = if let Some(listen) = &listen_from_env {
        listen
            .parse()
            .map_err(|err| cx.env_problem(ENV_LISTEN, invalid(listen, err)))
    } else if let Some((listen, span)) = section.string(cx, "listen") {
        listen
            .parse()
            .map_err(|err| cx.problem(span, section.key_path("listen"), invalid(listen, err)))
    } else if section.has("listen") {
        Err(())
    } else {
        Ok(default_listen)
    };

    let tokens = read_named_tokens(cx, section);
    let token_given = section.has_secret("token")
        || (cx.env)(ENV_SERVER_TOKEN).is_some()
        || section.has("tokens");
    let token = match cx.env_override(ENV_SERVER_TOKEN) {
        Some(token) => Some(Secret::new(token)),
        None => section.secret(cx, "token", |_| true),
    };
    if let Ok(listen) = listen {
        if !listen.ip().is_loopback() && !token_given {
            let message = format!(
                "binding a non-loopback address needs server.token \
                 (give token_env or token_file, or set {ENV_SERVER_TOKEN})"
            );
            if listen_from_env.is_some() {
                cx.env_problem(ENV_LISTEN, message);
            } else {
                cx.problem(
                    section.span_of("listen"),
                    section.key_path("listen"),
                    message,
                );
            }
        }
    }
    if let Some(short) = token
        .as_ref()
        .filter(|t| t.expose().chars().count() < MIN_TOKEN_CHARS)
    {
        let message = format!(
            "server.token is {} characters long; use at least {MIN_TOKEN_CHARS} \
             (e.g. `openssl rand -hex 32`)",
            short.expose().chars().count()
        );
        if cx.env_override(ENV_SERVER_TOKEN).is_some() {
            cx.env_problem(ENV_SERVER_TOKEN, message);
        } else {
            cx.problem(
                section
                    .span_of("token_env")
                    .or_else(|| section.span_of("token_file"))
                    .or_else(|| section.span_of("token")),
                section.key_path("token"),
                message,
            );
        }
    }
    ServerConfig {
        listen: listen.unwrap_or(default_listen),
        token,
        shutdown_timeout: section.seconds_or(cx, "shutdown_timeout", 30, 0, MAX_WAIT_SECONDS),
        allowed_hosts: read_allowed_hosts(cx, section),
        public_url: read_public_url(cx, section),
        tokens,
    }
}

/// `[[server.tokens]]`: `name` and `token_env`/`token_file` (or `token`) each, names unique
/// and not `default` (the name of `server.token`), tokens as long as `server.token`'s.
fn read_named_tokens(cx: &mut Cx, server: &Section) -> Vec<NamedToken> {
    let Some((item, span)) = server.get("tokens") else {
        return Vec::new();
    };
    let mut tables: Vec<(&dyn TableLike, Option<Range<usize>>)> = Vec::new();
    match item {
        Item::ArrayOfTables(array) => {
            for table in array.iter() {
                tables.push((table, table.span()));
            }
        }
        Item::Value(Value::Array(array)) => {
            for (index, value) in array.iter().enumerate() {
                match value.as_inline_table() {
                    Some(table) => tables.push((table, table.span())),
                    None => cx.problem(
                        value.span(),
                        format!("{}[{index}]", server.key_path("tokens")),
                        expected("a table", &Item::Value(value.clone())),
                    ),
                }
            }
        }
        other => {
            cx.problem(
                span,
                server.key_path("tokens"),
                expected("an array of tables ([[server.tokens]])", other),
            );
            return Vec::new();
        }
    }
    let mut tokens: Vec<NamedToken> = Vec::new();
    for (index, (table, span)) in tables.into_iter().enumerate() {
        let section = Section {
            table: Some(table),
            path: format!("{}[{index}]", server.key_path("tokens")),
            span,
        };
        section.check_keys(cx, SERVER_TOKEN_KEYS, None);
        let name = section.required_string(cx, "name");
        let token = section.required_secret(cx, "token");
        let (Some(name), Some(token)) = (name, token) else {
            continue;
        };
        let name_span = section.span_of("name");
        let problem = if !valid_source_name(name) {
            Some(format!(
                "invalid name {name:?}: use 1 to 64 characters of A-Z a-z 0-9 _ . -"
            ))
        } else if name == "default" {
            Some("the name \"default\" is server.token's; choose another".to_string())
        } else if tokens.iter().any(|t| t.name == name) {
            Some(format!("duplicate token name {name:?}"))
        } else if token.expose().chars().count() < MIN_TOKEN_CHARS {
            Some(format!(
                "the token is {} characters long; use at least {MIN_TOKEN_CHARS} \
                 (e.g. `openssl rand -hex 32`)",
                token.expose().chars().count()
            ))
        } else {
            None
        };
        match problem {
            Some(problem) => cx.problem(name_span, section.key_path("name"), problem),
            None => tokens.push(NamedToken {
                name: name.to_string(),
                token,
            }),
        }
    }
    tokens
}

/// `server.allowed_hosts`: host names without scheme or port.
fn read_allowed_hosts(cx: &mut Cx, section: &Section) -> Vec<String> {
    if !section.has("allowed_hosts") {
        return Vec::new();
    }
    let Some((array, span)) = section.typed(
        cx,
        "allowed_hosts",
        "an array of host names",
        Value::as_array,
    ) else {
        return Vec::new();
    };
    let mut hosts = Vec::new();
    for (index, value) in array.iter().enumerate() {
        let problem = match value.as_str() {
            Some(host) if valid_host_name(host) => {
                hosts.push(host.to_ascii_lowercase());
                continue;
            }
            Some(host) => format!(
                "{host:?} is not a host name: give a name or address without scheme, port or path, e.g. \"archive.example.com\""
            ),
            None => expected("a string", &Item::Value(value.clone())),
        };
        let key = format!("{}[{index}]", section.key_path("allowed_hosts"));
        cx.problem(value.span().or(span.clone()), key, problem);
    }
    hosts
}

/// A DNS name or an IP address literal (IPv6 in brackets or not), nothing else.
fn valid_host_name(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// `server.public_url`: an absolute http(s) URL.
fn read_public_url(cx: &mut Cx, section: &Section) -> Option<String> {
    let (url, span) = section.string(cx, "public_url")?;
    let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
    let host_ok = url
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""))
        .is_some_and(|authority| !authority.is_empty() && !authority.contains('@'));
    if scheme_ok && host_ok {
        return Some(url.trim_end_matches('/').to_string());
    }
    cx.problem(
        span,
        section.key_path("public_url"),
        format!("{url:?} is not an http(s) URL such as \"https://archive.example.com\""),
    );
    None
}

fn read_sync(cx: &mut Cx, root: &Section) -> SyncConfig {
    let section = &root.child(cx, "sync");
    section.check_keys(cx, SYNC_KEYS, None);
    let max_concurrent_sources = section.u32_or(cx, "max_concurrent_sources", 4, 1..=u32::MAX);
    SyncConfig {
        max_concurrent_sources: usize::try_from(max_concurrent_sources).unwrap_or(usize::MAX),
        schedule_jitter: section.seconds_or(cx, "schedule_jitter", 5, 0, MAX_WAIT_SECONDS),
        max_retries: section.u32_or(cx, "max_retries", 5, 1..=MAX_RETRIES),
        push_poll_factor: section.u32_or(cx, "push_poll_factor", 24, 1..=10_000),
    }
}

fn read_sources(cx: &mut Cx, root: &Section) -> Vec<SourceConfig> {
    let Some((item, span)) = root.get("source") else {
        return Vec::new();
    };
    let mut tables: Vec<(&dyn TableLike, Option<Range<usize>>)> = Vec::new();
    match item {
        Item::ArrayOfTables(array) => {
            for table in array.iter() {
                tables.push((table, table.span()));
            }
        }
        Item::Value(Value::Array(array)) => {
            for (index, value) in array.iter().enumerate() {
                match value.as_inline_table() {
                    Some(table) => tables.push((table, table.span())),
                    None => cx.problem(
                        value.span(),
                        format!("source[{index}]"),
                        expected("a table", &Item::Value(value.clone())),
                    ),
                }
            }
        }
        other => {
            cx.problem(
                span,
                "source",
                expected("an array of tables ([[source]])", other),
            );
            return Vec::new();
        }
    }
    let mut first_index_of_name: HashMap<&str, usize> = HashMap::new();
    let mut sources = Vec::new();
    for (index, (table, span)) in tables.into_iter().enumerate() {
        let section = Section {
            table: Some(table),
            path: format!("source[{index}]"),
            span,
        };
        let problems_before = cx.problems.len();
        match read_source(cx, section, index, &mut first_index_of_name) {
            Some(source) => sources.push(source),
            None => debug_assert!(
                cx.problems.len() > problems_before,
                "a source is only dropped with a problem"
            ),
        }
    }
    sources
}

fn read_source<'t>(
    cx: &mut Cx,
    mut section: Section<'t>,
    index: usize,
    first_index_of_name: &mut HashMap<&'t str, usize>,
) -> Option<SourceConfig> {
    // The name comes first: it labels the other problems of this source.
    let name = section.required_string(cx, "name");
    if let Some(name) = name {
        let span = section.span_of("name");
        if !valid_source_name(name) {
            cx.problem(
                span,
                section.key_path("name"),
                format!("invalid name {name:?}: use 1 to 64 characters of A-Z a-z 0-9 _ . -"),
            );
        } else if name == crate::store::ACCESS_LOG_CHAIN {
            cx.problem(
                span,
                section.key_path("name"),
                format!("the name {name:?} is reserved for the access log's chain; choose another"),
            );
        } else if let Some(first) = first_index_of_name.get(name) {
            cx.problem(
                span,
                &section.path,
                format!("duplicate name \"{name}\", already used by source[{first}]"),
            );
        } else {
            first_index_of_name.insert(name, index);
            section.path = format!("source \"{name}\"");
        }
    }

    let platform = if !section.has("platform") {
        section.missing(cx, "platform", " (tangsengdaodao, yunxin or yunhu)");
        None
    } else {
        section
            .string(cx, "platform")
            .and_then(|(key, span)| match Platform::from_key(key) {
                Some(platform) => Some(platform),
                None => {
                    let all = Platform::ALL.map(Platform::key);
                    let message = match suggest(key, all) {
                        Some(nearest) => {
                            format!("unknown platform \"{key}\", did you mean \"{nearest}\"?")
                        }
                        None => format!(
                            "unknown platform \"{key}\" (expected one of {})",
                            all.join(", ")
                        ),
                    };
                    cx.problem(span, section.key_path("platform"), message);
                    None
                }
            })
    };

    let mut allowed: Vec<&str> = SOURCE_KEYS.to_vec();
    match platform {
        Some(platform) => allowed.extend(platform_keys(platform)),
        // Unknown platform: only flag keys that no platform has.
        None => Platform::ALL
            .into_iter()
            .for_each(|platform| allowed.extend(platform_keys(platform))),
    }
    section.check_keys(cx, &allowed, platform);

    let enabled = section.bool_or(cx, "enabled", true);
    let push = section.bool_or(cx, "push", true);
    let schedule = match section.string(cx, "schedule") {
        Some((expression, span)) => {
            match cron::Schedule::from_str(expression) {
                Err(err) => cx.problem(
                    span,
                    section.key_path("schedule"),
                    format!(
                        "invalid cron expression {expression:?}: {}",
                        cron_reason(expression, &err)
                    ),
                ),
                // e.g. `0 0 0 30 2 *` (30 February) or a year that has passed
                Ok(schedule) if schedule.upcoming(Utc).next().is_none() => cx.problem(
                    span,
                    section.key_path("schedule"),
                    format!("cron expression {expression:?} never fires from now on"),
                ),
                Ok(_) => {}
            }
            expression.to_owned()
        }
        None => DEFAULT_SCHEDULE.to_owned(),
    };
    let requests_per_second = section.f64_in_or(
        cx,
        "requests_per_second",
        20.0,
        MIN_REQUESTS_PER_SECOND,
        MAX_REQUESTS_PER_SECOND,
    );
    let request_timeout =
        section.seconds_or(cx, "request_timeout", 30, 1, MAX_REQUEST_TIMEOUT_SECONDS);
    // Kept in `[retention]`'s config (`RetentionConfig::sources`), by source name.
    if let (Some(period), Some(name)) = (read_period(cx, &section, "retention"), name) {
        cx.source_retention.insert(name.to_string(), period);
    }

    let platform = match platform? {
        Platform::Tangsengdaodao => PlatformConfig::Tangsengdaodao(read_tsdd(cx, &section)?),
        Platform::Yunxin => PlatformConfig::Yunxin(read_yunxin(cx, &section)?),
        Platform::Yunhu => PlatformConfig::Yunhu(read_yunhu(cx, &section)?),
    };
    Some(SourceConfig {
        name: SourceName::new(name?),
        schedule,
        requests_per_second,
        request_timeout,
        enabled,
        push,
        platform,
    })
}

fn read_tsdd(cx: &mut Cx, section: &Section) -> Option<TsddConfig> {
    let base_url = section.http_url(cx, "base_url", None);
    let auth = read_tsdd_auth(cx, section);
    let device_flag = match section.integer(cx, "device_flag", i64::MIN..=i64::MAX) {
        None | Some(1) => 1,
        Some(2) => 2,
        Some(flag) => {
            let message = if flag == 0 {
                "device_flag 0 is the APP device class: logging in with it logs the user's \
                 phone out; use 1 (web) or 2 (PC)"
                    .to_owned()
            } else {
                format!("must be 1 (web) or 2 (PC), got {flag}")
            };
            cx.problem(
                section.span_of("device_flag"),
                section.key_path("device_flag"),
                message,
            );
            1
        }
    };
    let page_size = section.u32_or(cx, "page_size", 2000, 1..=10_000);
    Some(TsddConfig {
        base_url: base_url?,
        auth: auth?,
        device_flag,
        page_size,
    })
}

fn read_tsdd_auth(cx: &mut Cx, section: &Section) -> Option<TsddAuth> {
    let password_given = section.has("username") || section.has_secret("password");
    let token_given = section.has_secret("token");
    match (password_given, token_given) {
        (true, true) => {
            cx.problem(
                section.span.clone(),
                &section.path,
                "give either username and password, or token, not both",
            );
            None
        }
        (false, false) => {
            cx.problem(
                section.span.clone(),
                &section.path,
                "missing credentials: give username and password_env (or password_file), \
                 or token_env (or token_file)",
            );
            None
        }
        (false, true) => section.secret(cx, "token", |_| true).map(TsddAuth::Token),
        (true, false) => {
            let username = section.required_string(cx, "username");
            let password = section.required_secret(cx, "password");
            Some(TsddAuth::Password {
                username: username?.to_owned(),
                password: password?,
            })
        }
    }
}

fn read_yunxin(cx: &mut Cx, section: &Section) -> Option<YunxinConfig> {
    let base_url = section.http_url(cx, "base_url", Some(DEFAULT_YUNXIN_BASE_URL));
    let app_key = section.required_string(cx, "app_key");
    let app_secret = section.required_secret(cx, "app_secret");
    let accounts = read_accounts(cx, section);
    let history_start = read_history_start(cx, section);
    let rescan_days = section.u32_or(cx, "rescan_days", 7, 0..=u32::MAX);
    Some(YunxinConfig {
        base_url: base_url?,
        app_key: app_key?.to_owned(),
        app_secret: app_secret?,
        accounts: accounts?,
        history_start: history_start?,
        rescan_days,
    })
}

fn read_accounts(cx: &mut Cx, section: &Section) -> Option<Vec<String>> {
    if !section.has("accounts") {
        section.missing(cx, "accounts", "");
        return None;
    }
    let (array, span) = section.typed(cx, "accounts", "an array of strings", Value::as_array)?;
    if array.is_empty() {
        cx.problem(
            span,
            section.key_path("accounts"),
            "must list at least one account",
        );
        return None;
    }
    let mut accounts: Vec<String> = Vec::new();
    let mut all_valid = true;
    for (index, value) in array.iter().enumerate() {
        let problem = match value.as_str() {
            Some("") => "must not be empty".to_owned(),
            Some(account) if accounts.iter().any(|seen| seen == account) => {
                format!("account \"{account}\" is listed twice")
            }
            Some(account) => {
                accounts.push(account.to_owned());
                continue;
            }
            None => expected("a string", &Item::Value(value.clone())),
        };
        all_valid = false;
        let key = format!("{}[{index}]", section.key_path("accounts"));
        cx.problem(value.span().or(span.clone()), key, problem);
    }
    all_valid.then_some(accounts)
}

/// `Some(None)` when absent, `None` when wrong.
fn read_history_start(cx: &mut Cx, section: &Section) -> Option<Option<DateTime<Utc>>> {
    let Some((item, span)) = section.get("history_start") else {
        return Some(None);
    };
    let key = section.key_path("history_start");
    let text = match item.as_value() {
        Some(Value::String(text)) => text.value().clone(),
        Some(Value::Datetime(datetime)) => datetime.value().to_string(),
        _ => {
            cx.problem(span, key, expected("an RFC 3339 timestamp", item));
            return None;
        }
    };
    match DateTime::parse_from_rfc3339(&text) {
        Ok(start) => Some(Some(start.with_timezone(&Utc))),
        Err(err) => {
            cx.problem(
                span,
                key,
                format!(
                    "invalid RFC 3339 timestamp {text:?}: {err}; write e.g. 2024-01-01T00:00:00Z"
                ),
            );
            None
        }
    }
}

fn read_yunhu(cx: &mut Cx, section: &Section) -> Option<YunhuConfig> {
    let base_url = section.http_url(cx, "base_url", Some(DEFAULT_YUNHU_BASE_URL));
    let token = section.required_secret(cx, "token");
    let ws_url = section.ws_url(cx, "ws_url", DEFAULT_YUNHU_WS_URL);
    Some(YunhuConfig {
        base_url: base_url?,
        token: token?,
        rescan_messages: section.u32_or(cx, "rescan_messages", 200, 0..=u32::MAX),
        rescan_days: section.u32_or(cx, "rescan_days", 7, 0..=u32::MAX),
        rescan_every_minutes: section.u32_or(cx, "rescan_every_minutes", 60, 0..=u32::MAX),
        ws_url: ws_url?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../deploy/chatvault.example.toml");

    fn env_from(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    fn check(text: &str, vars: &[(&str, &str)]) -> Result<Loaded, ConfigErrors> {
        parse(text, Some(Path::new("chatvault.toml")), &env_from(vars))
    }

    fn problems(text: &str, vars: &[(&str, &str)]) -> Vec<String> {
        match check(text, vars) {
            Ok(loaded) => panic!("expected problems, loaded {:?}", loaded.config),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    fn loaded(text: &str, vars: &[(&str, &str)]) -> Loaded {
        check(text, vars).unwrap_or_else(|errors| panic!("unexpected problems:\n{errors}"))
    }

    #[test]
    fn attachments_default_to_every_kind_in_the_data_dir_and_check_s3() {
        use crate::attachments::AttachmentKind;
        let config = loaded("", &[]).config.attachments;
        assert!(config.enabled);
        assert_eq!(config.kinds, AttachmentKind::ALL.to_vec());
        assert!(
            matches!(&config.store, BlobStoreConfig::Directory(d) if d.ends_with("attachments"))
        );
        assert_eq!(config.max_file_bytes, 200 * 1024 * 1024);

        let config = loaded(
            "[attachments]\nkinds = [\"image\", \"file\"]\nstore = \"s3://archive-media/chat/\"\nmax_file_mb = 5\n[attachments.s3]\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\naccess_key_id_env = \"K\"\nsecret_access_key_env = \"S\"\n",
            &[("K", "AKIA"), ("S", "very-secret")],
        )
        .config
        .attachments;
        assert_eq!(
            config.kinds,
            vec![AttachmentKind::Image, AttachmentKind::File]
        );
        assert_eq!(config.max_file_bytes, 5 * 1024 * 1024);
        let BlobStoreConfig::S3(s3) = &config.store else {
            panic!("{:?}", config.store)
        };
        assert_eq!(
            (s3.bucket.as_str(), s3.prefix.as_str()),
            ("archive-media", "chat")
        );
        assert!(!format!("{config:?}").contains("very-secret"));

        let found = problems(
            "[attachments]\nkinds = [\"gif\"]\nstore = \"relative/dir\"\nconcurrency = 0\n",
            &[],
        );
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("\"gif\" is not a kind"), "{found:?}");
        assert!(
            found[1].contains("absolute directory or s3://"),
            "{found:?}"
        );
        let found = problems("[attachments]\nstore = \"s3://B\"\n", &[]);
        assert!(found[0].contains("not an S3 bucket name"), "{found:?}");
        let found = problems(
            "[attachments]\nstore = \"s3://media\"\n[attachments.s3]\nendpoint = \"http://10.0.0.1:9000\"\naccess_key_id_env = \"K\"\n",
            &[("K", "x")],
        );
        assert!(found.iter().any(|p| p.contains("allow_http")), "{found:?}");
        assert!(found.iter().any(|p| p.contains("give both")), "{found:?}");
    }

    #[test]
    fn integrity_takes_a_file_and_an_argv_and_refuses_a_shell_line() {
        let config = loaded(
            "[integrity]\nheads_file = \"/tmp/heads.log\"\nheads_command = [\"ssh\", \"h\", \"cat >> x\"]\nheads_command_timeout = 5\n",
            &[],
        )
        .config;
        assert_eq!(
            config.integrity.heads_file.as_deref(),
            Some(Path::new("/tmp/heads.log"))
        );
        assert_eq!(
            config.integrity.heads_command.as_deref(),
            Some(&["ssh".to_string(), "h".into(), "cat >> x".into()][..])
        );
        assert_eq!(
            config.integrity.heads_command_timeout,
            Duration::from_secs(5)
        );
        assert!(!loaded("", &[]).config.integrity.is_configured());
        let found = problems(
            "[integrity]\nheads_command = \"ssh h 'cat >> x'\"\nheads_command_timeout = 0\nheads_fil = \"x\"\n",
            &[],
        );
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("an array of strings"), "{found:?}");
        assert!(found[1].contains("between 1 and 3600"), "{found:?}");
        assert!(
            found[2].contains("did you mean \"heads_file\""),
            "{found:?}"
        );
        let found = problems("[integrity]\nheads_command = []\n", &[]);
        assert!(found[0].contains("must name a program"), "{found:?}");
    }

    /// A valid tangsengdaodao source named "a" with `extra` appended.
    fn tsdd(extra: &str) -> String {
        format!(
            "[[source]]\nname = \"a\"\nplatform = \"tangsengdaodao\"\n\
             base_url = \"https://im.example/api\"\n{extra}"
        )
    }

    const TSDD_PASSWORD_ENV: &str = "username = \"u\"\npassword_env = \"PW\"\n";

    #[test]
    fn unknown_key_suggests_the_nearest() {
        let text = tsdd(&format!("{TSDD_PASSWORD_ENV}pasword = \"x\"\n"));
        assert_eq!(
            problems(&text, &[("PW", "p")]),
            [r#"chatvault.toml:7: source "a": unknown key "pasword", did you mean "password"?"#]
        );
        assert_eq!(
            problems("[sources]\nx = 1\n", &[]),
            [r#"chatvault.toml:1: unknown key "sources", did you mean "source"?"#]
        );
        assert_eq!(
            problems("[server]\nlisten_addr = \"127.0.0.1:1\"\nzzz = 1\n", &[]),
            [
                r#"chatvault.toml:2: server: unknown key "listen_addr", did you mean "listen"?"#,
                r#"chatvault.toml:3: server: unknown key "zzz""#,
            ]
        );
    }

    #[test]
    fn key_of_another_platform_is_named_as_such() {
        let text = tsdd(&format!(
            "{TSDD_PASSWORD_ENV}app_key = \"k\"\nrescan_days = 3\n"
        ));
        assert_eq!(
            problems(&text, &[("PW", "p")]),
            [
                r#"chatvault.toml:7: source "a": "app_key" is not a key of platform tangsengdaodao (only of yunxin)"#,
                r#"chatvault.toml:8: source "a": "rescan_days" is not a key of platform tangsengdaodao (only of yunxin, yunhu)"#,
            ]
        );
    }

    #[test]
    fn unknown_platform_suggests_the_nearest() {
        let text = "[[source]]\nname = \"a\"\nplatform = \"yunxn\"\n";
        assert_eq!(
            problems(text, &[]),
            [
                r#"chatvault.toml:3: source "a".platform: unknown platform "yunxn", did you mean "yunxin"?"#
            ]
        );
        let text = "[[source]]\nname = \"a\"\nplatform = \"wechat\"\n";
        assert_eq!(
            problems(text, &[]),
            [
                r#"chatvault.toml:3: source "a".platform: unknown platform "wechat" (expected one of tangsengdaodao, yunxin, yunhu)"#
            ]
        );
    }

    #[test]
    fn bad_cron_expression() {
        let text = tsdd(&format!(
            "{TSDD_PASSWORD_ENV}schedule = \"every 5 minutes\"\n"
        ));
        assert_eq!(
            problems(&text, &[("PW", "p")]),
            [
                r#"chatvault.toml:7: source "a".schedule: invalid cron expression "every 5 minutes": expected 6 or 7 fields (sec min hour day-of-month month day-of-week [year]), found 3"#
            ]
        );
        let text = tsdd(&format!(
            "{TSDD_PASSWORD_ENV}schedule = \"0 0 0 * * Mox\"\n"
        ));
        assert_eq!(
            problems(&text, &[("PW", "p")]),
            [
                r#"chatvault.toml:7: source "a".schedule: invalid cron expression "0 0 0 * * Mox": 'Mox' is not a valid day of the week."#
            ]
        );
        let text = tsdd(&format!("{TSDD_PASSWORD_ENV}schedule = \"0 0 0 * * 1/\"\n"));
        assert_eq!(
            problems(&text, &[("PW", "p")]),
            [
                r#"chatvault.toml:7: source "a".schedule: invalid cron expression "0 0 0 * * 1/": syntax error at "/""#
            ]
        );
    }

    #[test]
    fn duplicate_source_names() {
        let one = "[[source]]\nname = \"a\"\nplatform = \"yunhu\"\ntoken_env = \"T\"\n";
        let text = format!("{one}{one}");
        assert_eq!(
            problems(&text, &[("T", "t")]),
            [r#"chatvault.toml:6: source[1]: duplicate name "a", already used by source[0]"#]
        );
    }

    #[test]
    fn invalid_source_name() {
        let text = "[[source]]\nname = \"a b\"\nplatform = \"yunhu\"\ntoken_env = \"T\"\n";
        assert_eq!(
            problems(text, &[("T", "t")]),
            [
                r#"chatvault.toml:2: source[0].name: invalid name "a b": use 1 to 64 characters of A-Z a-z 0-9 _ . -"#
            ]
        );
    }

    #[test]
    fn missing_environment_variable() {
        let text = tsdd("token_env = \"TSDD_TOKEN\"\n");
        assert_eq!(
            problems(&text, &[]),
            [
                r#"chatvault.toml:5: source "a".token_env: environment variable "TSDD_TOKEN" is not set"#
            ]
        );
        assert_eq!(
            problems(&text, &[("TSDD_TOKEN", "")]),
            [
                r#"chatvault.toml:5: source "a".token_env: environment variable "TSDD_TOKEN" is empty"#
            ]
        );
    }

    #[test]
    fn unreadable_secret_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let text = tsdd(&format!("token_file = {:?}\n", missing.to_str().unwrap()));
        assert_eq!(
            problems(&text, &[]),
            [format!(
                r#"chatvault.toml:5: source "a".token_file: cannot read secret file {:?}: No such file or directory (os error 2)"#,
                missing.to_str().unwrap()
            )]
        );
    }

    #[test]
    fn offline_loading_turns_a_missing_source_secret_into_a_warning() {
        let text = "[[source]]\nname = \"a\"\nplatform = \"yunhu\"\ntoken_env = \"NOT_THERE\"\n";
        let env = |_: &str| None;
        assert!(parse(text, None, &env).is_err());
        let loaded = parse_with_mode(text, None, &env, true).expect("offline load");
        assert_eq!(loaded.config.sources.len(), 1);
        assert_eq!(loaded.warnings.len(), 1);
        assert!(
            loaded.warnings[0].contains("NOT_THERE"),
            "{:?}",
            loaded.warnings
        );
        // a database URL that cannot be read is still an error: the command needs it
        let db = "[database]\nurl_env = \"NOT_THERE\"\n";
        assert!(parse_with_mode(db, None, &env, true).is_err());
    }

    #[test]
    fn secret_file_is_read_and_trailing_newline_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "t0ken\n").unwrap();
        let text = tsdd(&format!("token_file = {:?}\n", path.to_str().unwrap()));
        let loaded = loaded(&text, &[]);
        assert!(loaded.warnings.is_empty());
        let PlatformConfig::Tangsengdaodao(tsdd) = &loaded.config.sources[0].platform else {
            panic!("not tangsengdaodao");
        };
        let TsddAuth::Token(token) = &tsdd.auth else {
            panic!("not a token");
        };
        assert_eq!(token.expose(), "t0ken");
    }

    #[test]
    fn device_flag_0_is_rejected_with_the_reason() {
        let text = tsdd(&format!("{TSDD_PASSWORD_ENV}device_flag = 0\n"));
        assert_eq!(
            problems(&text, &[("PW", "p")]),
            [
                r#"chatvault.toml:7: source "a".device_flag: device_flag 0 is the APP device class: logging in with it logs the user's phone out; use 1 (web) or 2 (PC)"#
            ]
        );
        let text = tsdd(&format!("{TSDD_PASSWORD_ENV}device_flag = 3\n"));
        assert_eq!(
            problems(&text, &[("PW", "p")]),
            [r#"chatvault.toml:7: source "a".device_flag: must be 1 (web) or 2 (PC), got 3"#]
        );
    }

    #[test]
    fn missing_required_keys() {
        let text = "[[source]]\nname = \"a\"\nplatform = \"tangsengdaodao\"\nusername = \"u\"\n";
        assert_eq!(
            problems(text, &[]),
            [
                r#"chatvault.toml:1: source "a": missing required key "base_url""#,
                r#"chatvault.toml:1: source "a": missing required key "password" (give password_env or password_file)"#,
            ]
        );
        let text = "[[source]]\nplatform = \"yunxin\"\napp_key = \"k\"\napp_secret_env = \"S\"\n";
        assert_eq!(
            problems(text, &[("S", "s")]),
            [
                r#"chatvault.toml:1: source[0]: missing required key "name""#,
                r#"chatvault.toml:1: source[0]: missing required key "accounts""#,
            ]
        );
    }

    #[test]
    fn password_and_token_together() {
        let text = tsdd(&format!("{TSDD_PASSWORD_ENV}token_env = \"TOKEN\"\n"));
        assert_eq!(
            problems(&text, &[("PW", "p"), ("TOKEN", "t")]),
            [
                r#"chatvault.toml:1: source "a": give either username and password, or token, not both"#
            ]
        );
        let text = tsdd("");
        assert_eq!(
            problems(&text, &[]),
            [
                r#"chatvault.toml:1: source "a": missing credentials: give username and password_env (or password_file), or token_env (or token_file)"#
            ]
        );
    }

    #[test]
    fn more_than_one_form_of_a_secret() {
        let text = tsdd("token_env = \"T\"\ntoken_file = \"/t\"\n");
        assert_eq!(
            problems(&text, &[("T", "t")]),
            [
                r#"chatvault.toml:6: source "a": give only one of token_env, token_file or token, not token_env and token_file"#
            ]
        );
    }

    #[test]
    fn wrong_types_name_the_expected_type() {
        let text = "[database]\nmax_connections = \"8\"\n[server]\nshutdown_timeout = 1.5\n\
                    [sync]\nmax_concurrent_sources = 0\n";
        assert_eq!(
            problems(text, &[]),
            [
                "chatvault.toml:2: database.max_connections: expected an integer, found a string",
                "chatvault.toml:4: server.shutdown_timeout: expected an integer, found a float",
                "chatvault.toml:6: sync.max_concurrent_sources: must be at least 1, got 0",
            ]
        );
        let text = tsdd(&format!(
            "{TSDD_PASSWORD_ENV}enabled = \"yes\"\npage_size = 0\n"
        ));
        assert_eq!(
            problems(&text, &[("PW", "p")]),
            [
                r#"chatvault.toml:7: source "a".enabled: expected a boolean, found a string"#,
                r#"chatvault.toml:8: source "a".page_size: must be between 1 and 10000, got 0"#,
            ]
        );
        assert_eq!(
            problems("server = 1\nsource = \"x\"\n", &[]),
            [
                "chatvault.toml:1: server: expected a table, found an integer",
                "chatvault.toml:2: source: expected an array of tables ([[source]]), found a string",
            ]
        );
    }

    /// Regression: `requests_per_second = 1e-300` passed the check and panicked when the
    /// rate limiter turned it into an interval.
    #[test]
    fn extreme_values_are_problems_not_panics() {
        let text = tsdd(&format!(
            "{TSDD_PASSWORD_ENV}requests_per_second = 1e-300\nrequest_timeout = 9999999999\n\
             schedule = \"0 0 0 30 2 *\"\n"
        ));
        assert_eq!(
            problems(&text, &[("PW", "p")]),
            [
                r#"chatvault.toml:7: source "a".requests_per_second: must be a number from 0.001 to 1000000, got 1e-300"#,
                r#"chatvault.toml:8: source "a".request_timeout: must be between 1 and 3600, got 9999999999"#,
                r#"chatvault.toml:9: source "a".schedule: cron expression "0 0 0 30 2 *" never fires from now on"#,
            ]
        );
        for (value, shown) in [("1e300", "1e300"), ("0", "0"), ("-5", "-5"), ("nan", "NaN")] {
            let text = tsdd(&format!(
                "{TSDD_PASSWORD_ENV}requests_per_second = {value}\n"
            ));
            let problems = problems(&text, &[("PW", "p")]);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].ends_with(&format!("got {shown}")),
                "{problems:?}"
            );
        }
        let text = "[server]\nshutdown_timeout = -1\n[sync]\nschedule_jitter = 100000000\n\
                    max_retries = 4000000000\n";
        assert_eq!(
            problems(text, &[]),
            [
                "chatvault.toml:2: server.shutdown_timeout: must be between 0 and 86400, got -1",
                "chatvault.toml:4: sync.schedule_jitter: must be between 0 and 86400, got 100000000",
                "chatvault.toml:5: sync.max_retries: must be between 1 and 100, got 4000000000",
            ]
        );
        let text = tsdd(&format!(
            "{TSDD_PASSWORD_ENV}requests_per_second = 0.001\nrequest_timeout = 3600\n"
        ));
        let config = loaded(&text, &[("PW", "p")]).config;
        assert_eq!(config.sources[0].requests_per_second, 0.001);
    }

    #[test]
    fn all_problems_are_reported_in_file_order() {
        let text = "[[source]]\nname = \"a\"\nplatform = \"yunhu\"\ntoken_env = \"T\"\n\
                    schedule = \"x\"\n[server]\nlisten = \"nowhere\"\n[database]\nurl = 1\n";
        let errors = check(text, &[]).unwrap_err();
        let lines: Vec<Option<usize>> = errors.0.iter().map(|problem| problem.line).collect();
        assert_eq!(lines, [Some(4), Some(5), Some(7), Some(9)], "{errors}");
        assert_eq!(errors.to_string().lines().count(), 4);
    }

    #[test]
    fn retention_values_and_every_problem_with_them() {
        use crate::retention::Period;
        let config = loaded(
            &format!(
                "{}retention = \"5y\"\n[retention]\ndefault = \"7y\"\nauto_purge = true\n\
                 [retention.conversation_type]\ngroup = \"18m\"\nbot = \"forever\"\n",
                tsdd(TSDD_PASSWORD_ENV)
            ),
            &[("PW", "p")],
        )
        .config;
        let r = &config.retention;
        assert_eq!(r.default, Some(Period::Years(7)));
        assert!(r.auto_purge);
        assert_eq!(r.conversation_type["group"], Some(Period::Months(18)));
        assert_eq!(r.conversation_type["bot"], None);
        assert_eq!(r.sources["a"], Some(Period::Years(5)));
        assert_eq!(
            loaded(&tsdd(TSDD_PASSWORD_ENV), &[("PW", "p")])
                .config
                .retention,
            RetentionConfig::default()
        );

        let found = problems(
            &format!(
                "{}retention = \"0d\"\n[retention]\ndefault = \"7 years\"\nauto_purge = \"yes\"\n\
                 keep = 1\n[retention.conversation_type]\ngrup = \"3y\"\ndirect = 5\n",
                tsdd(TSDD_PASSWORD_ENV)
            ),
            &[("PW", "p")],
        );
        let expected = [
            "source \"a\".retention: retention period \"0d\" would purge everything at once",
            "retention.default: invalid retention period \"7 years\"",
            "retention.auto_purge: expected a boolean",
            "retention: unknown key \"keep\"",
            "retention.conversation_type: unknown key \"grup\", did you mean \"group\"?",
            "retention.conversation_type.direct: expected a string",
        ];
        assert_eq!(found.len(), expected.len(), "{found:#?}");
        for (line, want) in found.iter().zip(expected) {
            assert!(line.contains(want), "{line:?} does not contain {want:?}");
        }

        let found = problems("[retention]\nauto_purge = true\n", &[]);
        assert!(
            found[0].contains("nothing would ever be purged"),
            "{found:?}"
        );
    }

    #[test]
    fn toml_syntax_error_has_its_line() {
        let problems = problems("[server]\nlisten = \n", &[]);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("chatvault.toml:2: "),
            "{problems:?}"
        );
    }

    #[test]
    fn named_server_tokens_are_read_and_checked() {
        let text = "[server]\ntoken_env = \"T0\"\n\n[[server.tokens]]\nname = \"legal\"\ntoken_env = \"T1\"\n\n[[server.tokens]]\nname = \"ops\"\ntoken = \"ops-0123456789abcdef\"\n";
        let vars = [("T0", "t0-0123456789abcdef"), ("T1", "t1-0123456789abcdef")];
        let loaded = loaded(text, &vars);
        let names: Vec<&str> = loaded
            .config
            .server
            .tokens
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, ["legal", "ops"]);
        assert_eq!(
            loaded.config.server.tokens[0].token.expose(),
            "t1-0123456789abcdef"
        );
        let inline = "[server]\ntokens = [{ name = \"a\", token_env = \"T1\" }]\n";
        assert_eq!(loaded_tokens(inline, &vars), ["a"]);
        let bad = "[server]\ntokens = [{ name = \"default\", token_env = \"T1\" }, { name = \"b\", token = \"short\" }, { token_env = \"T1\" }]\n";
        let found = problems(bad, &vars);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found[0].contains("server.tokens[0].name") && found[0].contains("\"default\""),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.contains("5 characters long")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("missing required key \"name\"")),
            "{found:?}"
        );
        assert!(problems(
            "[[source]]\nname = \"access-log\"\nplatform = \"yunhu\"\ntoken_env = \"T1\"\n",
            &vars
        )
        .iter()
        .any(|p| p.contains("reserved for the access log")));
    }

    fn loaded_tokens(text: &str, vars: &[(&str, &str)]) -> Vec<String> {
        loaded(text, vars)
            .config
            .server
            .tokens
            .into_iter()
            .map(|t| t.name)
            .collect()
    }

    #[test]
    fn non_loopback_listen_needs_a_token() {
        let text = "[server]\nlisten = \"0.0.0.0:8080\"\n";
        assert_eq!(
            problems(text, &[]),
            ["chatvault.toml:2: server.listen: binding a non-loopback address needs server.token \
              (give token_env or token_file, or set CHATVAULT_SERVER_TOKEN)"]
        );
        let with_token = "[server]\nlisten = \"0.0.0.0:8080\"\ntoken_env = \"API\"\n";
        let token = "t0ken-0123456789abcdef";
        let config = loaded(with_token, &[("API", token)]).config;
        assert_eq!(config.server.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.server.token.unwrap().expose(), token);
        let config = loaded(text, &[("CHATVAULT_SERVER_TOKEN", token)]).config;
        assert_eq!(config.server.token.unwrap().expose(), token);
        assert_eq!(
            problems("", &[("CHATVAULT_LISTEN", "0.0.0.0:80")]),
            [
                "CHATVAULT_LISTEN: binding a non-loopback address needs server.token \
              (give token_env or token_file, or set CHATVAULT_SERVER_TOKEN)"
            ]
        );
    }

    #[test]
    fn environment_wins_over_the_file() {
        let text = "[storage]\ndata_dir = \"/from/file\"\n[server]\nlisten = \"127.0.0.1:1\"\n";
        let env = [
            ("CHATVAULT_DATA_DIR", "/from/env"),
            ("CHATVAULT_LISTEN", "[::1]:9000"),
            ("CHATVAULT_DATABASE_URL", "postgres://u:pw@db/chatvault"),
        ];
        let config = loaded(text, &env).config;
        assert_eq!(config.storage.data_dir, PathBuf::from("/from/env"));
        assert_eq!(config.server.listen, "[::1]:9000".parse().unwrap());
        assert_eq!(
            config.database.url.unwrap().expose(),
            "postgres://u:pw@db/chatvault"
        );

        let config = loaded(text, &[]).config;
        assert_eq!(config.storage.data_dir, PathBuf::from("/from/file"));
        assert_eq!(config.server.listen, "127.0.0.1:1".parse().unwrap());
    }

    #[test]
    fn bad_environment_values_are_keyed_by_the_variable() {
        let env = [
            ("CHATVAULT_LISTEN", "localhost"),
            ("CHATVAULT_DATA_DIR", ""),
            ("CHATVAULT_DATABASE_URL", "mysql://u:pw@db/x"),
        ];
        let problems = problems("", &env);
        assert_eq!(
            problems,
            [
                "CHATVAULT_DATABASE_URL: expected a postgres:// or postgresql:// url",
                "CHATVAULT_DATA_DIR: is set but empty; unset it or give a value",
                "CHATVAULT_LISTEN: invalid socket address \"localhost\": invalid socket address \
                 syntax; expected ip:port such as 127.0.0.1:8080",
            ]
        );
        assert!(!problems.concat().contains("pw"));
    }

    #[test]
    fn defaults_when_there_is_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("chatvault.toml");
        let loaded = load_with(None, &env_from(&[]), &absent).unwrap();
        assert!(loaded.warnings.is_empty());
        let config = loaded.config;
        assert_eq!(config.path, None);
        assert!(config.database.url.is_none());
        assert_eq!(config.database.max_connections, 8);
        assert_eq!(config.storage.data_dir, PathBuf::from("./chatvault-data"));
        assert_eq!(config.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(config.server.token.is_none());
        assert_eq!(config.server.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(config.sync.max_concurrent_sources, 4);
        assert_eq!(config.sync.schedule_jitter, Duration::from_secs(5));
        assert_eq!(config.sync.max_retries, 5);
        assert!(config.sources.is_empty());
    }

    #[test]
    fn file_resolution_order() {
        let dir = tempfile::tempdir().unwrap();
        let default_file = dir.path().join("chatvault.toml");
        let from_env = dir.path().join("from-env.toml");
        std::fs::write(&default_file, "[sync]\nmax_retries = 1\n").unwrap();
        std::fs::write(&from_env, "[sync]\nmax_retries = 2\n").unwrap();
        let env_path = from_env.to_str().unwrap();

        let retries = |explicit: Option<&Path>, vars: &[(&str, &str)]| {
            let loaded = load_with(explicit, &env_from(vars), &default_file).unwrap();
            (loaded.config.path, loaded.config.sync.max_retries)
        };
        assert_eq!(retries(None, &[]), (Some(default_file.clone()), 1));
        assert_eq!(
            retries(None, &[("CHATVAULT_CONFIG", env_path)]),
            (Some(from_env.clone()), 2)
        );
        assert_eq!(
            retries(Some(&default_file), &[("CHATVAULT_CONFIG", env_path)]),
            (Some(default_file.clone()), 1)
        );

        let missing = dir.path().join("missing.toml");
        let errors = load_with(Some(&missing), &env_from(&[]), &default_file).unwrap_err();
        assert_eq!(
            errors.to_string(),
            format!(
                "{}: cannot read config file: No such file or directory (os error 2)",
                missing.display()
            )
        );
    }

    #[test]
    fn secrets_never_show_in_debug_or_warnings() {
        let text = "[database]\nurl = \"postgres://u:db-s3cret@db/x\"\n\
                    [server]\ntoken = \"api-s3cret-0123456789\"\n\
                    [[source]]\nname = \"a\"\nplatform = \"tangsengdaodao\"\n\
                    base_url = \"https://im.example\"\nusername = \"u\"\npassword = \"pw-s3cret\"\n\
                    [[source]]\nname = \"b\"\nplatform = \"yunhu\"\ntoken = \"yh-s3cret\"\n";
        let loaded = loaded(text, &[]);
        let debug = format!("{:?}", loaded.config);
        assert!(debug.contains("***"), "{debug}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert_eq!(
            loaded.warnings,
            [
                "database: url is given inline; prefer url_env or url_file",
                "server: token is given inline; prefer token_env or token_file",
                r#"source "a": password is given inline; prefer password_env or password_file"#,
                r#"source "b": token is given inline; prefer token_env or token_file"#,
            ]
        );
        // A database url without a password is not a secret worth a warning.
        let loaded = check("[database]\nurl = \"postgres://u@db/x\"\n", &[]).unwrap();
        assert!(loaded.warnings.is_empty());
        assert_eq!(format!("{}", Secret::new("x")), "***");
    }

    #[test]
    fn short_tokens_and_bad_server_names_are_problems() {
        assert_eq!(
            problems("[server]\ntoken_env = \"T\"\n", &[("T", "short-token")]),
            ["chatvault.toml:2: server.token: server.token is 11 characters long; use at least 16 \
              (e.g. `openssl rand -hex 32`)"]
        );
        assert_eq!(
            problems("", &[("CHATVAULT_SERVER_TOKEN", "short")]),
            [
                "CHATVAULT_SERVER_TOKEN: server.token is 5 characters long; use at least 16 \
              (e.g. `openssl rand -hex 32`)"
            ]
        );
        let text = "[server]\nallowed_hosts = [\"Archive.Example.com\", \"10.0.0.5\", \"[::1]\"]\n\
                    public_url = \"https://archive.example.com/\"\n";
        let server = loaded(text, &[]).config.server;
        assert_eq!(
            server.allowed_hosts,
            ["archive.example.com", "10.0.0.5", "[::1]"]
        );
        assert_eq!(
            server.public_url.as_deref(),
            Some("https://archive.example.com")
        );
        let problems = problems(
            "[server]\nallowed_hosts = [\"https://a.example\", \"a.example:8080\", 3]\n\
             public_url = \"archive.example.com\"\n",
            &[],
        );
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(
            problems[0].contains("server.allowed_hosts[0]"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("server.allowed_hosts[1]"),
            "{problems:?}"
        );
        assert!(problems[2].contains("expected a string"), "{problems:?}");
        assert!(problems[3].contains("server.public_url"), "{problems:?}");
    }

    #[test]
    fn yunhu_values() {
        let text = "[[source]]\nname = \"y\"\nplatform = \"yunhu\"\ntoken_env = \"T\"\n";
        let source = loaded(text, &[("T", "t")]).config.sources.remove(0);
        let PlatformConfig::Yunhu(yunhu) = source.platform else {
            panic!("not yunhu");
        };
        assert_eq!(yunhu.base_url, "https://chat-go.jwzhd.com");
        assert_eq!(
            (
                yunhu.rescan_messages,
                yunhu.rescan_days,
                yunhu.rescan_every_minutes
            ),
            (200, 7, 60)
        );
        let text = format!("{text}rescan_every_minutes = 0\nrescan_messages = 40\n");
        let source = loaded(&text, &[("T", "t")]).config.sources.remove(0);
        let PlatformConfig::Yunhu(yunhu) = source.platform else {
            panic!("not yunhu");
        };
        assert_eq!((yunhu.rescan_messages, yunhu.rescan_every_minutes), (40, 0));
        let text = "[[source]]\nname = \"y\"\nplatform = \"yunhu\"\ntoken_env = \"T\"\n\
                    rescan_every_minutes = -1\n";
        assert_eq!(problems(text, &[("T", "t")]).len(), 1);
    }

    #[test]
    fn push_is_on_unless_a_source_turns_it_off() {
        let text = "[[source]]\nname = \"y\"\nplatform = \"yunhu\"\ntoken_env = \"T\"\n";
        assert!(loaded(text, &[("T", "t")]).config.sources[0].push);
        let off = format!("{text}push = false\n");
        assert!(!loaded(&off, &[("T", "t")]).config.sources[0].push);
        let wrong = format!("{text}push = \"no\"\n");
        let problems = problems(&wrong, &[("T", "t")]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("push"), "{problems:?}");
    }

    #[test]
    fn yunhu_push_url() {
        let text = "[[source]]\nname = \"y\"\nplatform = \"yunhu\"\ntoken_env = \"T\"\n";
        let source = loaded(text, &[("T", "t")]).config.sources.remove(0);
        let PlatformConfig::Yunhu(yunhu) = source.platform else {
            panic!("not yunhu");
        };
        assert_eq!(yunhu.ws_url, "wss://chat-ws-go.jwzhd.com/ws");
        let text2 = format!("{text}ws_url = \"ws://127.0.0.1:9/ws\"\n");
        let source = loaded(&text2, &[("T", "t")]).config.sources.remove(0);
        let PlatformConfig::Yunhu(yunhu) = source.platform else {
            panic!("not yunhu");
        };
        assert_eq!(yunhu.ws_url, "ws://127.0.0.1:9/ws");
        // an http url, and a bad base_url at the same time: both reported
        let text3 = "[[source]]\nname = \"y\"\nplatform = \"yunhu\"\ntoken_env = \"T\"\n\
                     base_url = \"ftp://x\"\nws_url = \"https://chat-ws-go.jwzhd.com/ws\"\n";
        let problems = problems(text3, &[("T", "t")]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[1].contains("ws_url") && problems[1].contains("ws://"),
            "{problems:?}"
        );
    }

    #[test]
    fn yunxin_values() {
        let text = "[[source]]\nname = \"x\"\nplatform = \"yunxin\"\napp_key = \"k\"\n\
                    app_secret_env = \"S\"\naccounts = [\"a\", \"b\"]\n\
                    history_start = 2024-01-01T08:00:00+08:00\n";
        let source = loaded(text, &[("S", "s")]).config.sources.remove(0);
        assert_eq!(source.platform_key(), Platform::Yunxin);
        assert_eq!(source.schedule, "0 */5 * * * *");
        assert_eq!(source.requests_per_second, 20.0);
        let PlatformConfig::Yunxin(yunxin) = source.platform else {
            panic!("not yunxin");
        };
        assert_eq!(yunxin.base_url, "https://open.yunxinapi.com");
        assert_eq!(yunxin.accounts, ["a", "b"]);
        assert_eq!(
            yunxin.history_start.unwrap().to_rfc3339(),
            "2024-01-01T00:00:00+00:00"
        );
        assert_eq!(yunxin.rescan_days, 7);

        let text = "[[source]]\nname = \"x\"\nplatform = \"yunxin\"\napp_key = \"k\"\n\
                    app_secret_env = \"S\"\naccounts = []\nhistory_start = \"2024-01-01\"\n";
        let problems = problems(text, &[("S", "s")]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(
            problems[0],
            r#"chatvault.toml:6: source "x".accounts: must list at least one account"#
        );
        assert!(problems[1]
            .starts_with(r#"chatvault.toml:7: source "x".history_start: invalid RFC 3339 timestamp "2024-01-01": "#));
    }

    #[test]
    fn example_file_loads_without_problems() {
        let env = [
            ("ACME_TSDD_PASSWORD", "p"),
            ("ACME_YUNXIN_APP_SECRET", "s"),
            ("ACME_YUNHU_TOKEN", "t"),
        ];
        let loaded = check(EXAMPLE, &env).unwrap_or_else(|errors| panic!("{errors}"));
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let platforms: Vec<Platform> = loaded
            .config
            .sources
            .iter()
            .map(SourceConfig::platform_key)
            .collect();
        assert_eq!(platforms, Platform::ALL);
    }

    #[test]
    fn example_file_mentions_every_key() {
        let keys = [
            TOP_KEYS,
            DATABASE_KEYS,
            STORAGE_KEYS,
            SERVER_KEYS,
            SYNC_KEYS,
            SOURCE_KEYS,
            RETENTION_KEYS,
            TSDD_KEYS,
            YUNXIN_KEYS,
            YUNHU_KEYS,
        ];
        for key in keys.concat() {
            // Inline secrets are described once in the header, not shown per key.
            let inline_secret = ["token", "password", "app_secret"].contains(&key);
            let mentioned = [format!("{key} ="), format!("[{key}]"), format!("[[{key}]]")]
                .iter()
                .any(|form| EXAMPLE.contains(form.as_str()));
            assert!(
                inline_secret || mentioned,
                "the example does not mention {key}"
            );
        }
    }
}
