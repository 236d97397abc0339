//! `chatvault doctor`: checks, in order, what a sync needs and says how to fix what fails, one
//! line per check: the configuration (as `config check`), the PostgreSQL binaries or
//! `database.url`, the database reachable and migrated (pending migrations are reported, not
//! applied), the data directory's owner and modes, the attachment store (a private directory,
//! or a bucket answering one read-only request), each enabled source's credentials with one
//! read-only request, the clock against each upstream's `Date` header, the search index.
//!
//! It archives nothing and writes nothing but what starting the embedded cluster writes. A
//! TangSengDaoDao source without a kept session is not logged in (each login posts a message
//! to the user's phone) unless `--login` is given. Exit 0 when nothing failed (warnings
//! allowed), 1 otherwise.

use std::path::Path;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;

use crate::config::{self, Config, PlatformConfig, SourceConfig};
use crate::connector::{self, http::HttpClient, ConnectorError, Probe};
use crate::index::{self, SearchIndex};
use crate::pg::EmbeddedPostgres;
use crate::store::Store;

/// Clock skew beyond which the clock check warns. Yunxin signs every request with the current
/// time (`CurTime`), and times in the archive are compared with upstream's.
pub const CLOCK_SKEW_WARN_SECS: i64 = 60;

/// How long connecting to the database may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Args)]
#[command(
    after_help = "Each line is `ok`, `warn`, `FAIL` or `skip`, the check, what was \
found and, for a failure, the fix. TangSengDaoDao sources are checked with their kept session \
(data_dir/sessions); without one, a check needs a login, which posts a login notice to the \
account's phone: pass --login to allow it.\n\nExamples:\n  chatvault doctor\n  chatvault \
--config /etc/chatvault/chatvault.toml doctor --json\n  chatvault doctor --login"
)]
pub struct DoctorArgs {
    /// One JSON object per check: {"check", "status", "detail", "fix"}.
    #[arg(long)]
    pub json: bool,
    /// Log in to TangSengDaoDao sources without a kept session (posts a login notice to the
    /// account's phone; the session is kept for later runs).
    #[arg(long)]
    pub login: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

/// One check's line.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub check: String,
    pub status: Status,
    pub detail: String,
    /// What to do, for a failure or a warning.
    pub fix: Option<String>,
}

impl Check {
    fn ok(check: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn warn(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            status: Status::Warn,
            ..Check::fail(check, detail, fix)
        }
    }

    fn skip(check: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            status: Status::Skip,
            detail: detail.into(),
            fix: None,
        }
    }
}

/// Prints each check as it is made.
struct Report {
    json: bool,
    failed: bool,
}

impl Report {
    fn print(&mut self, check: Check) {
        self.failed |= check.status == Status::Fail;
        if self.json {
            println!(
                "{}",
                serde_json::to_string(&check).expect("a check serialises")
            );
            return;
        }
        let status = match check.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        };
        let detail = crate::terminal::escape_line(&check.detail);
        match &check.fix {
            Some(fix) => println!("{status} {}: {detail}; fix: {fix}", check.check),
            None => println!("{status} {}: {detail}", check.check),
        }
    }
}

pub async fn run(args: DoctorArgs, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let mut report = Report {
        json: args.json,
        failed: false,
    };
    let Some(config) = check_config(config_path, &mut report) else {
        for later in [
            "database",
            "schema",
            "data_dir",
            "attachments",
            "credentials",
            "clock",
            "index",
        ] {
            report.print(Check::skip(later, "needs a valid configuration"));
        }
        return Ok(ExitCode::FAILURE);
    };
    // inspected before the embedded cluster is started, which would make it private
    let data_dir = crate::files::inspect_data_dir(&config.storage.data_dir);
    let options = check_database(&config, &mut report);
    let embedded = check_schema(&config, options, &mut report).await;
    report.print(match data_dir {
        Ok(detail) => Check::ok("data_dir", detail),
        Err((problem, fix)) => Check::fail("data_dir", problem, fix),
    });
    report.print(check_attachments(&config).await);
    check_sources(&config, args.login, &mut report).await;
    report.print(check_index(&config.storage.data_dir).await);
    if let Some(pg) = embedded {
        if let Err(e) = pg.stop().await {
            tracing::warn!(error = %e, "could not stop the embedded PostgreSQL");
        }
    }
    Ok(if report.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The configuration as `config check` reads it (secrets included).
fn check_config(path: Option<&Path>, report: &mut Report) -> Option<Config> {
    match config::load(path) {
        Ok(loaded) => {
            let file = loaded.config.path.as_ref().map_or_else(
                || "no configuration file, defaults".to_string(),
                |p| p.display().to_string(),
            );
            let enabled = loaded.config.sources.iter().filter(|s| s.enabled).count();
            let detail = format!("{file}: {enabled} enabled source(s)");
            if loaded.warnings.is_empty() {
                report.print(Check::ok("config", detail));
            } else {
                report.print(Check::warn(
                    "config",
                    format!("{detail}; {}", loaded.warnings.join("; ")),
                    "see the warnings (`chatvault config check` lists them)",
                ));
            }
            Some(loaded.config)
        }
        Err(errors) => {
            let problems: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            report.print(Check::fail(
                "config",
                problems.join("; "),
                "correct each problem named (`chatvault config check` lists them one a line)",
            ));
            None
        }
    }
}

/// `database.url` parses, or the PostgreSQL server binaries for the embedded cluster are
/// there. The options to connect with, when there is a URL.
fn check_database(config: &Config, report: &mut Report) -> Option<PgConnectOptions> {
    match &config.database.url {
        Some(url) => match PgConnectOptions::from_str(url.expose()) {
            Ok(options) => {
                let host = options
                    .get_socket()
                    .map(|s| s.display().to_string())
                    .unwrap_or_else(|| format!("{}:{}", options.get_host(), options.get_port()));
                let database = options.get_database().unwrap_or("(the user's name)");
                report.print(Check::ok(
                    "database",
                    format!("database.url: database {database} on {host}"),
                ));
                Some(options)
            }
            Err(_) => {
                report.print(Check::fail(
                    "database",
                    "database.url is not a valid PostgreSQL URL",
                    "write it as postgres://USER@HOST:PORT/DATABASE (the password in a url_file)",
                ));
                None
            }
        },
        None => {
            match crate::pg::find_binaries() {
                Ok(b) => report.print(Check::ok(
                    "database",
                    format!(
                        "embedded cluster in {}: PostgreSQL {} binaries in {}",
                        config.storage.data_dir.display(),
                        b.version,
                        b.bindir.display()
                    ),
                )),
                Err(e) => report.print(Check::fail(
                    "database",
                    format!("no database.url, and no PostgreSQL server binaries: {e}"),
                    "install them (`apt-get install postgresql`, `brew install postgresql`) or set database.url",
                )),
            }
            None
        }
    }
}

/// Connects (starting the embedded cluster when there is no URL) and lists the migrations not
/// applied yet, without applying them. Returns the embedded cluster to stop at the end.
async fn check_schema(
    config: &Config,
    options: Option<PgConnectOptions>,
    report: &mut Report,
) -> Option<EmbeddedPostgres> {
    let (options, embedded) = match (options, &config.database.url) {
        (Some(options), _) => (options, None),
        (None, Some(_)) => {
            report.print(Check::skip("schema", "needs a valid database.url"));
            return None;
        }
        (None, None) if !config.storage.data_dir.join("postgres/PG_VERSION").exists() => {
            // A doctor never creates what a first start would: no cluster yet is no failure.
            report.print(Check::skip(
                "schema",
                "no embedded cluster yet: the first sync or `chatvault run` creates it and \
                 applies the migrations",
            ));
            return None;
        }
        (None, None) => match EmbeddedPostgres::start(&config.storage.data_dir).await {
            Ok(pg) => (pg.connect_options(), Some(pg)),
            Err(e) => {
                report.print(Check::fail(
                    "schema",
                    format!("the embedded PostgreSQL did not start: {e}"),
                    format!(
                        "see {} and the data_dir check",
                        config.storage.data_dir.join("postgres.log").display()
                    ),
                ));
                return None;
            }
        },
    };
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, Store::connect(options, 2)).await;
    let store = match connected {
        Ok(Ok(store)) => store,
        Ok(Err(e)) => {
            report.print(Check::fail(
                "schema",
                format!("cannot connect to PostgreSQL: {e}"),
                "check that the server runs and database.url's host, port, user and database",
            ));
            return embedded;
        }
        Err(_) => {
            report.print(Check::fail(
                "schema",
                format!(
                    "PostgreSQL did not answer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ),
                "check that the server runs and that database.url's host and port reach it",
            ));
            return embedded;
        }
    };
    match store.pending_migrations().await {
        Ok(pending) if pending.is_empty() => {
            report.print(Check::ok("schema", "reachable; every migration is applied"))
        }
        Ok(pending) => report.print(Check::fail(
            "schema",
            format!(
                "reachable; {} migration(s) not applied: {}",
                pending.len(),
                pending.join(", ")
            ),
            "run `chatvault migrate` (every sync and the daemon also apply them at start)",
        )),
        Err(e) => report.print(Check::fail(
            "schema",
            format!("cannot read the applied migrations: {e}"),
            "give the database role read access to _sqlx_migrations",
        )),
    }
    store.pool().close().await;
    embedded
}

/// Each enabled source's credentials with one read-only request, then the clock against the
/// `Date` of the answers.
async fn check_sources(config: &Config, login: bool, report: &mut Report) {
    let sources: Vec<&SourceConfig> = config.sources.iter().filter(|s| s.enabled).collect();
    if sources.is_empty() {
        report.print(Check::skip("credentials", "no enabled source"));
        return;
    }
    let session_dir = crate::sync::session_dir(&config.storage.data_dir);
    let mut skews = Vec::new();
    for source in &sources {
        let name = format!("credentials {}", source.name);
        let http = match HttpClient::new(source.requests_per_second, source.request_timeout) {
            Ok(http) => http,
            Err(e) => {
                report.print(Check::fail(name, e.to_string(), "see the error"));
                skews.push(None);
                continue;
            }
        };
        let stats = http.stats();
        let probe = match connector::build(source, http, Some(&session_dir)) {
            Ok(connector) => connector.probe(login).await,
            Err(e) => {
                report.print(Check::fail(
                    name,
                    format!("{e:#}"),
                    "correct the source's configuration",
                ));
                skews.push(None);
                continue;
            }
        };
        report.print(match probe {
            Ok(Probe::Ok(detail)) => Check::ok(name, detail),
            Ok(Probe::LoginNeeded(why)) => Check::warn(
                name,
                format!("not checked: {why}, and a login posts a notice to the account's phone"),
                "run `chatvault doctor --login` (or a sync) once; the session is kept for later runs",
            ),
            Err(e) => Check::fail(name, e.to_string(), credentials_fix(source, &session_dir, &e)),
        });
        skews.push(stats.clock_skew());
    }
    for (source, skew) in sources.iter().zip(skews) {
        let name = format!("clock {}", source.name);
        report.print(match skew {
            None => Check::skip(name, "no answer with a Date header from upstream"),
            Some(skew) if skew.abs() > CLOCK_SKEW_WARN_SECS => Check::warn(
                name,
                format!(
                    "this machine's clock is {} s {} the upstream's",
                    skew.abs(),
                    if skew > 0 { "ahead of" } else { "behind" }
                ),
                "synchronise the clock (e.g. `timedatectl set-ntp true`): Yunxin refuses requests signed with a wrong time",
            ),
            Some(skew) => Check::ok(name, format!("within {} s of the upstream's", skew.abs())),
        });
    }
}

/// What to do about a failed credentials check, by the failure and the platform.
fn credentials_fix(source: &SourceConfig, session_dir: &Path, error: &ConnectorError) -> String {
    match (error, &source.platform) {
        (ConnectorError::Unauthorized(_), PlatformConfig::Tangsengdaodao(cfg)) => match &cfg.auth {
            config::TsddAuth::Token(_) => {
                "the server refused the configured token: set a current one (token_file or token_env)".to_string()
            }
            config::TsddAuth::Password { .. } => format!(
                "the kept session was refused: delete {} and run `chatvault doctor --login` (or a sync) to log in again; if that fails, check username and password",
                session_dir.join(format!("{}.token", source.name))
                    .display()
            ),
        },
        (ConnectorError::Unauthorized(_), PlatformConfig::Yunhu(_)) => {
            "the server refused the token: take a current one from a logged-in session (token_file or token_env)".to_string()
        }
        (ConnectorError::Unauthorized(_), PlatformConfig::Yunxin(_)) => {
            "check app_key and app_secret, and this machine's clock".to_string()
        }
        (ConnectorError::Permanent(m), PlatformConfig::Yunxin(_)) if m.contains("414") => {
            "check app_key, app_secret and this machine's clock (requests are signed with the time)".to_string()
        }
        (ConnectorError::Transient(_) | ConnectorError::RateLimited { .. }, _) => {
            "check base_url and that this machine reaches it (proxy, firewall, DNS)".to_string()
        }
        _ => "check base_url and the source's credentials".to_string(),
    }
}

/// The attachment store: a directory exists or can be created and is private, or a bucket
/// answers one read-only request with the configured credentials.
async fn check_attachments(config: &Config) -> Check {
    if !config.attachments.enabled {
        return Check::skip(
            "attachments",
            "attachments.enabled = false: no file is downloaded",
        );
    }
    match crate::attachments::blob::probe(&config.attachments.store).await {
        Ok(detail) => Check::ok("attachments", detail),
        Err((problem, fix)) => Check::fail("attachments", problem, fix),
    }
}

/// The search index opens and its watermarks read.
async fn check_index(data_dir: &Path) -> Check {
    let dir = index::index_dir(data_dir);
    let opened = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<(usize, u64)>> {
        let Some(index) = SearchIndex::open(&dir)? else {
            return Ok(None);
        };
        let generation = index.generation()?;
        let payload = generation.payload()?;
        let documents = generation.reader.searcher().num_docs();
        Ok(Some((payload.watermarks.len(), documents)))
    })
    .await;
    match opened {
        Ok(Ok(None)) => Check::ok(
            "index",
            "none yet: the first sync builds it (`chatvault reindex` too)",
        ),
        Ok(Ok(Some((sources, documents)))) => Check::ok(
            "index",
            format!("readable: {documents} documents, {sources} source(s) applied"),
        ),
        Ok(Err(e)) => Check::fail(
            "index",
            format!("{e:#}"),
            "run `chatvault reindex` to rebuild it from PostgreSQL (nothing is lost)",
        ),
        Err(e) => Check::fail(
            "index",
            format!("reading the index failed: {e}"),
            "run `chatvault reindex`",
        ),
    }
}
