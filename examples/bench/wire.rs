//! B12's round-trip counter: a TCP proxy on 127.0.0.1 between the clients
//! measured (taskflow's hosts, the raw SQL loops) and the PostgreSQL
//! server, that reads the messages clients send and counts them by kind.
//!
//! Counting on the wire, rather than with `pg_stat_statements` (which needs
//! a server restart to load) or `pg_stat_database.xact_commit` (shared with
//! everything else using the database, and reported late), counts exactly
//! what the measured clients asked of the server, whatever their code:
//!
//! - a *statement* is an `Execute` (extended protocol) or a `Query`
//!   (simple protocol, e.g. `BEGIN`, `LISTEN`);
//! - a *request* is a `Sync` or a `Query`: each is answered by one
//!   `ReadyForQuery`, so a request is one server round trip unless the
//!   client pipelines it behind another;
//! - a *prepare* is a `Parse`.
//!
//! The server's replies are copied unread. The proxy adds one hop of
//! loopback per message (tens of microseconds), so latency is measured
//! without it.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What clients sent through the proxy so far.
#[derive(Debug, Default)]
struct Counters {
    statements: AtomicU64,
    requests: AtomicU64,
    prepares: AtomicU64,
}

/// A reading of the counters.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counts {
    pub(crate) statements: u64,
    pub(crate) requests: u64,
    pub(crate) prepares: u64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, earlier: Counts) -> Counts {
        Counts {
            statements: self.statements - earlier.statements,
            requests: self.requests - earlier.requests,
            prepares: self.prepares - earlier.prepares,
        }
    }
}

/// The proxy; it stops (and its connections close) when dropped.
pub(crate) struct Proxy {
    /// The connection string that goes through it.
    pub(crate) url: String,
    counters: Arc<Counters>,
    accepting: JoinHandle<()>,
}

impl Proxy {
    /// A proxy to the server of `url`, if `url` names a TCP server in a form
    /// this can rewrite (`postgres://…@host:port/…` or `host=… port=…`).
    pub(crate) async fn start(url: &str) -> io::Result<Option<Proxy>> {
        let Some(upstream) = upstream(url) else {
            return Ok(None);
        };
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let Some(proxied) = rewrite(url, port) else {
            return Ok(None);
        };
        let counters = Arc::new(Counters::default());
        let accepting = tokio::spawn(accept(listener, upstream, counters.clone()));
        Ok(Some(Proxy {
            url: proxied,
            counters,
            accepting,
        }))
    }

    /// What was sent through it so far.
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            statements: self.counters.statements.load(Ordering::SeqCst),
            requests: self.counters.requests.load(Ordering::SeqCst),
            prepares: self.counters.prepares.load(Ordering::SeqCst),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// The server's address, from the first host and port of `url`.
fn upstream(url: &str) -> Option<String> {
    let config: tokio_postgres::Config = url.parse().ok()?;
    let host = match config.get_hosts().first()? {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => return None,
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    Some(format!("{host}:{port}"))
}

/// `url` with its host and port replaced by 127.0.0.1 and `port`.
fn rewrite(url: &str, port: u16) -> Option<String> {
    if let Some((scheme, rest)) = url.split_once("://") {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let user = authority.rfind('@').map_or("", |at| &authority[..=at]);
        if authority.contains(',') {
            return None;
        }
        return Some(format!("{scheme}://{user}127.0.0.1:{port}{tail}"));
    }
    // key=value form: drop host, hostaddr and port, then name the proxy.
    let kept: Vec<&str> = url
        .split_whitespace()
        .filter(|pair| {
            !["host=", "hostaddr=", "port="]
                .iter()
                .any(|key| pair.starts_with(key))
        })
        .collect();
    Some(format!("{} host=127.0.0.1 port={port}", kept.join(" ")))
}

async fn accept(listener: TcpListener, upstream: String, counters: Arc<Counters>) {
    // Each connection's copies end with it, or with the proxy (dropping
    // this task drops the set, which aborts them).
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        let (upstream, counters) = (upstream.clone(), counters.clone());
        connections.spawn(async move {
            if let Ok(server) = TcpStream::connect(&upstream).await {
                let _ = relay(client, server, &counters).await;
            }
        });
        while connections.try_join_next().is_some() {}
    }
}

/// Copies both ways until either side closes, counting what the client
/// sends.
async fn relay(client: TcpStream, server: TcpStream, counters: &Counters) -> io::Result<()> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upward = async {
        let mut parser = Parser::default();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = client_read.read(&mut buffer).await?;
            if read == 0 {
                return server_write.shutdown().await;
            }
            server_write.write_all(&buffer[..read]).await?;
            parser.feed(&buffer[..read], counters);
        }
    };
    let downward = async {
        tokio::io::copy(&mut server_read, &mut client_write).await?;
        client_write.shutdown().await
    };
    tokio::select! {
        outcome = upward => outcome,
        outcome = downward => outcome,
    }
}

/// Splits the client's byte stream into messages. Before the startup
/// message, messages have no type byte (`SSLRequest`, `GSSENCRequest`,
/// `CancelRequest`, the startup message itself); after it, each is a type
/// byte and a length that counts itself.
#[derive(Default)]
struct Parser {
    started: bool,
    /// Bytes of a message not yet whole.
    partial: Vec<u8>,
    /// Bytes still to pass over of the message being read.
    skip: usize,
}

/// The protocol version a startup message names (3.0).
const PROTOCOL_3: u32 = 3 << 16;

impl Parser {
    fn feed(&mut self, mut data: &[u8], counters: &Counters) {
        loop {
            if self.skip > 0 {
                let passed = self.skip.min(data.len());
                self.skip -= passed;
                data = &data[passed..];
            }
            if data.is_empty() {
                return;
            }
            // The header: 8 bytes before the startup message (length and
            // code), 5 after (type and length).
            let header = if self.started { 5 } else { 8 };
            let wanted = header - self.partial.len();
            let taken = wanted.min(data.len());
            self.partial.extend_from_slice(&data[..taken]);
            data = &data[taken..];
            if self.partial.len() < header {
                return;
            }
            let length_at = if self.started { 1 } else { 0 };
            let length = u32::from_be_bytes(
                self.partial[length_at..length_at + 4]
                    .try_into()
                    .unwrap_or([0; 4]),
            ) as usize;
            if self.started {
                match self.partial[0] {
                    b'Q' => {
                        counters.statements.fetch_add(1, Ordering::Relaxed);
                        counters.requests.fetch_add(1, Ordering::Relaxed);
                    }
                    b'E' => {
                        counters.statements.fetch_add(1, Ordering::Relaxed);
                    }
                    b'S' => {
                        counters.requests.fetch_add(1, Ordering::Relaxed);
                    }
                    b'P' => {
                        counters.prepares.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                // The length counts itself, not the type byte.
                self.skip = length.saturating_sub(4);
            } else {
                let code = u32::from_be_bytes(self.partial[4..8].try_into().unwrap_or([0; 4]));
                self.started = code == PROTOCOL_3;
                self.skip = length.saturating_sub(8);
            }
            self.partial.clear();
        }
    }
}
