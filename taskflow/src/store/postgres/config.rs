//! [`PostgresConfig`]: where a PostgreSQL store lives and how it connects,
//! and the typed errors a first connection can end in.

use std::fmt;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::error::Error;

/// The schema a store uses unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "taskflow";

/// Where a PostgreSQL task store lives and how it connects.
///
/// Every table of the store is in one schema of its own (`taskflow` by
/// default), created with its tables at the first start; hosts that
/// share the work name the same database and schema. Give it to
/// [`TaskManagerBuilder::postgres`](crate::TaskManagerBuilder::postgres)
/// (which also takes a bare connection string) or to
/// [`PostgresStore::open`](super::PostgresStore::open).
///
/// ```
/// use std::time::Duration;
/// use taskflow::store::PostgresConfig;
/// let config = PostgresConfig::new("postgres://app@db.internal/app")
///     .schema("billing_tasks")
///     .pool_size(16)
///     .connect_timeout(Duration::from_secs(5));
/// # let _ = config;
/// ```
#[derive(Clone)]
pub struct PostgresConfig {
    pub(super) source: Source,
    pub(super) schema: String,
    pub(super) listen: bool,
    pub(super) listen_url: Option<String>,
    pub(super) pool_size: usize,
    pub(super) connect_timeout: Duration,
}

/// Where connections come from.
#[derive(Clone)]
pub(super) enum Source {
    /// A connection string (`postgres://…` or `host=… user=…`): the store
    /// keeps a pool of its own.
    Url(String),
    /// The application's pool.
    Pool(Pool),
}

impl PostgresConfig {
    /// The store at `url`, a libpq-style connection string
    /// (`postgres://user:password@host:port/database` or
    /// `host=… user=… dbname=…`), in schema `taskflow`, with a pool of its
    /// own of 8 connections.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig {
            source: Source::Url(url.into()),
            schema: DEFAULT_SCHEMA.to_owned(),
            listen: true,
            listen_url: None,
            pool_size: 8,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// The store on connections of the application's `pool`, in schema
    /// `taskflow`. A pool's connections drop notifications, so with a pool
    /// the store polls unless it is also given a connection string to
    /// listen on ([`listen_url`](Self::listen_url)).
    ///
    /// Connections the pool opens for the store are driven by the store's
    /// thread, so they stop with it: when the store is dropped, the pool's
    /// idle connections are taken out of it, and its next `get` opens a
    /// fresh one rather than hand out one that is closing.
    pub fn with_pool(pool: Pool) -> Self {
        PostgresConfig {
            source: Source::Pool(pool),
            ..PostgresConfig::new(String::new())
        }
    }

    /// The application's pool, when the store was lent one.
    pub(super) fn lent_pool(&self) -> Option<&Pool> {
        match &self.source {
            Source::Pool(pool) => Some(pool),
            Source::Url(_) => None,
        }
    }

    /// Keeps the store's tables in schema `name` (created if missing): one
    /// database can hold several independent stores. A name is 1 to 63
    /// lowercase ASCII letters, digits and underscores, not starting with a
    /// digit. Default `taskflow`.
    pub fn schema(mut self, name: impl Into<String>) -> Self {
        self.schema = name.into();
        self
    }

    /// Whether the store listens for other hosts' changes (`LISTEN`), so an
    /// idle instance starts work another host queued at once rather than
    /// at its next poll. Turn it off behind a pooler that drops
    /// notifications (PgBouncer in transaction mode): instances then find
    /// such work by polling. Default on.
    pub fn listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// The connection string the store listens on when its connections
    /// come from the application's pool ([`with_pool`](Self::with_pool)).
    pub fn listen_url(mut self, url: impl Into<String>) -> Self {
        self.listen_url = Some(url.into());
        self
    }

    /// The most connections the store's own pool opens. Default 8: a
    /// store call holds a connection for one statement or two, and one
    /// connection pipelines the calls made at once. Ignored with the
    /// application's pool.
    pub fn pool_size(mut self, connections: usize) -> Self {
        self.pool_size = connections.max(1);
        self
    }

    /// How long connecting may take before the server counts as
    /// unreachable, unless the connection string says
    /// (`connect_timeout`). Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The checked schema name.
    pub(super) fn checked_schema(&self) -> Result<&str, Error> {
        check_schema(&self.schema)?;
        Ok(&self.schema)
    }
}

/// Refuses a schema name that is not 1 to 63 lowercase ASCII letters,
/// digits and underscores, not starting with a digit.
pub(super) fn check_schema(name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    match valid {
        true => Ok(()),
        false => Err(Error::InvalidOption {
            option: "postgres schema",
            reason: "must be 1 to 63 lowercase ASCII letters, digits or underscores, not starting with a digit",
        }),
    }
}

impl From<&str> for PostgresConfig {
    /// [`PostgresConfig::new`].
    fn from(url: &str) -> Self {
        PostgresConfig::new(url)
    }
}

impl From<String> for PostgresConfig {
    /// [`PostgresConfig::new`].
    fn from(url: String) -> Self {
        PostgresConfig::new(url)
    }
}

impl From<Pool> for PostgresConfig {
    /// [`PostgresConfig::with_pool`].
    fn from(pool: Pool) -> Self {
        PostgresConfig::with_pool(pool)
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the connection string: it may hold a password.
        let source = match &self.source {
            Source::Url(url) => match url.parse::<tokio_postgres::Config>() {
                Ok(config) => describe(&config),
                Err(_) => "an invalid connection string".to_owned(),
            },
            Source::Pool(_) => "the application's pool".to_owned(),
        };
        f.debug_struct("PostgresConfig")
            .field("server", &source)
            .field("schema", &self.schema)
            .field("listen", &self.listen)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

/// What a store connects with, once the configuration is understood.
pub(super) struct Target {
    pub(super) pool: Pool,
    /// The settings of the listening connection, if the store listens.
    pub(super) listen: Option<tokio_postgres::Config>,
    /// host:port/database, for messages.
    pub(super) server: String,
    pub(super) user: String,
    pub(super) database: String,
}

impl PostgresConfig {
    /// The pool and listening settings this configuration describes.
    pub(super) fn target(&self) -> Result<Target, Error> {
        let parse = |url: &str| -> Result<tokio_postgres::Config, Error> {
            let mut config: tokio_postgres::Config =
                url.parse().map_err(|source| Error::OpenDatabase {
                    server: "the given connection string".to_owned(),
                    schema: self.schema.clone(),
                    source: Box::new(source),
                })?;
            if config.get_connect_timeout().is_none() {
                config.connect_timeout(self.connect_timeout);
            }
            if config.get_application_name().is_none() {
                config.application_name("taskflow");
            }
            Ok(config)
        };
        match &self.source {
            Source::Url(url) => {
                let config = parse(url)?;
                let manager = Manager::from_config(
                    config.clone(),
                    NoTls,
                    ManagerConfig {
                        recycling_method: RecyclingMethod::Fast,
                    },
                );
                let pool = Pool::builder(manager)
                    .max_size(self.pool_size)
                    .runtime(Runtime::Tokio1)
                    // Never wait forever for a free connection or a new one.
                    .wait_timeout(Some(Duration::from_secs(30)))
                    .create_timeout(Some(self.connect_timeout + Duration::from_secs(5)))
                    .build()
                    .map_err(|source| Error::OpenDatabase {
                        server: describe(&config),
                        schema: self.schema.clone(),
                        source: Box::new(source),
                    })?;
                let user = config
                    .get_user()
                    .map(str::to_owned)
                    .unwrap_or_else(|| "(the system user)".to_owned());
                Ok(Target {
                    pool,
                    server: describe(&config),
                    database: config.get_dbname().unwrap_or(&user).to_owned(),
                    user,
                    listen: self.listen.then_some(config),
                })
            }
            Source::Pool(pool) => {
                let listen = match (&self.listen_url, self.listen) {
                    (Some(url), true) => Some(parse(url)?),
                    _ => None,
                };
                Ok(Target {
                    pool: pool.clone(),
                    server: listen
                        .as_ref()
                        .map_or_else(|| "the application's pool".to_owned(), describe),
                    user: "(the pool's user)".to_owned(),
                    database: "(the pool's database)".to_owned(),
                    listen,
                })
            }
        }
    }
}

/// `host:port/database` for each host, never the password.
pub(super) fn describe(config: &tokio_postgres::Config) -> String {
    let database = config.get_dbname().or(config.get_user()).unwrap_or("");
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let port = ports.get(index).or(ports.first()).copied().unwrap_or(5432);
            match host {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    match hosts.is_empty() {
        true => format!("localhost:5432/{database}"),
        false => format!("{}/{database}", hosts.join(",")),
    }
}

/// The typed error for a first connection that failed.
pub(super) fn refused(error: PoolError, target: &Target, schema: &str) -> Error {
    let server = target.server.clone();
    let source = match error {
        PoolError::Backend(error) => error,
        PoolError::Timeout(_) => {
            return Error::DatabaseUnreachable {
                server,
                source: Box::new(error),
            };
        }
        other => {
            return Error::OpenDatabase {
                server,
                schema: schema.to_owned(),
                source: Box::new(other),
            };
        }
    };
    connect_error(source, target, schema)
}

/// The typed error for a client error met while connecting.
pub(super) fn connect_error(error: tokio_postgres::Error, target: &Target, schema: &str) -> Error {
    let server = target.server.clone();
    let code = error.code().cloned();
    let auth = code == Some(SqlState::INVALID_PASSWORD)
        || code == Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
        // The client's own: the server asked for a password none was given.
        || (code.is_none() && error.to_string() == "authentication error");
    if auth {
        return Error::DatabaseAuth {
            server,
            user: target.user.clone(),
            source: Box::new(error),
        };
    }
    if code == Some(SqlState::INVALID_CATALOG_NAME) {
        return Error::DatabaseMissing {
            server,
            database: target.database.clone(),
            source: Box::new(error),
        };
    }
    let io = std::error::Error::source(&error).is_some_and(|cause| cause.is::<std::io::Error>());
    if code.is_none() && (io || error.to_string().contains("timeout")) {
        return Error::DatabaseUnreachable {
            server,
            source: Box::new(error),
        };
    }
    Error::OpenDatabase {
        server,
        schema: schema.to_owned(),
        source: Box::new(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_description_never_shows_the_password() {
        let config: tokio_postgres::Config =
            "postgres://ada:secret@db.example:6543/app".parse().unwrap();
        assert_eq!(describe(&config), "db.example:6543/app");
        let debug = format!("{:?}", PostgresConfig::new("postgres://ada:secret@db/app"));
        assert!(!debug.contains("secret"), "{debug}");
    }

    #[test]
    fn schema_names_are_checked() {
        for good in ["taskflow", "t_1", "_x", &"a".repeat(63)] {
            assert!(
                PostgresConfig::new("")
                    .schema(good)
                    .checked_schema()
                    .is_ok(),
                "{good}"
            );
        }
        for bad in ["", "1st", "Tasks", "a-b", "a b", "x\"y", &"a".repeat(64)] {
            assert!(
                PostgresConfig::new("")
                    .schema(bad)
                    .checked_schema()
                    .is_err(),
                "{bad}"
            );
        }
    }
}
