//! The connection to the shared ledger: one Redis server or a Redis Cluster, with timeouts.
//! Every command is sent in a pipeline (one round trip for a whole sync step); a cluster
//! pipeline sends each command to the node of its key.

use std::time::{Duration, Instant};

use redis::cluster::{cluster_pipe, ClusterClientBuilder, ClusterConnection};
use redis::{Cmd, Connection, ErrorKind, RedisError, RedisResult, Value};

use crate::redact::{redact_url, scrub};
use crate::store::{StoreError, StoreResult};

pub struct Link {
    connection: Kind,
    /// A caller's deadline for the commands sent now (`bound`), or none (the sync thread).
    deadline: Option<Instant>,
    /// The socket timeout in force (set only when it changes).
    timeout: Duration,
}

enum Kind {
    Single(Connection),
    Cluster(Box<ClusterConnection>),
}

/// Bounds every command of the sync thread: a server that stops answering fails a sync step,
/// never hangs it. A caller's commands are bounded by its own deadline (`Link::bound`).
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// `rediss://` needs a process-wide crypto provider (ring); installed once.
fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An application that installed its own provider keeps it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The error codes with which a live server answers that it cannot serve now, and will: a
/// restart loading its data (`LOADING`), a script running (`BUSY`), a cluster failing over.
const RETRYABLE_CODES: [&str; 5] = ["LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN"];

/// Whether a server's error reply (`code`) says: not now, retry.
pub fn is_retryable_code(code: &str) -> bool {
    RETRYABLE_CODES.contains(&code)
}

/// What went wrong talking to the shared ledger at `location`, in words an operator can act on.
/// The text never holds the URL's password (`redact`).
pub fn describe(location: &str, error: &RedisError) -> String {
    let shown = redact_url(location);
    let said = scrub(&error.to_string(), location);
    match error.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => format!(
            "the server at {shown} does not answer as Redis does ({said}): is that address a \
             Redis server's port?"
        ),
        ErrorKind::AuthenticationFailed => {
            format!("the shared ledger at {shown} refused the user or password of the URL ({said})")
        }
        _ if error.is_timeout() => format!(
            "the shared ledger at {shown} did not answer in time ({said}): the server or the \
             network is stalled"
        ),
        _ if error.code() == Some("MOVED") || error.code() == Some("ASK") => format!(
            "the server at {shown} is a node of a Redis Cluster ({said}): open it with \
             store_backend='redis-cluster'"
        ),
        _ if error.code().is_some_and(is_retryable_code) => format!(
            "the shared ledger at {shown} cannot serve now ({}: {said}); it will again shortly",
            error.code().unwrap_or_default()
        ),
        _ if error.code() == Some("NOAUTH") || error.code() == Some("WRONGPASS") => format!(
            "the shared ledger at {shown} needs a password the URL does not give, or refused \
             it ({said})"
        ),
        _ => format!("the shared ledger at {shown} cannot be reached: {said}"),
    }
}

/// A connection error as the store error Python sees (`StoreUnavailableError`).
pub fn unavailable(location: &str, error: &RedisError) -> StoreError {
    StoreError::Unavailable(describe(location, error))
}

/// Whether `error` leaves a command's outcome unknown: it may have been sent and applied, and
/// no reply came (a timeout, a dropped connection), as opposed to a reply that it was not.
pub fn outcome_unknown(error: &RedisError) -> bool {
    error.is_timeout() || error.is_connection_dropped() || error.is_io_error()
}

impl Link {
    /// Connects within `timeout`; `cluster` takes `urls` as seed nodes of a Redis Cluster.
    pub fn open(urls: &[String], cluster: bool, timeout: Duration) -> StoreResult<Link> {
        install_crypto();
        let location = urls.join(",");
        let failed = |e: RedisError| unavailable(&location, &e);
        if cluster {
            let client = ClusterClientBuilder::new(urls.to_vec())
                .connection_timeout(timeout)
                .response_timeout(IO_TIMEOUT)
                .retries(1)
                .build()
                .map_err(failed)?;
            let connection = Kind::Cluster(Box::new(client.get_connection().map_err(failed)?));
            return Ok(Link::new(connection));
        }
        let client = redis::Client::open(urls[0].as_str()).map_err(|e| {
            StoreError::Other(format!(
                "not a Redis URL ({}): {}",
                redact_url(&urls[0]),
                scrub(&e.to_string(), &urls[0])
            ))
        })?;
        let started = Instant::now();
        let mut connection = client
            .get_connection_with_timeout(timeout)
            .map_err(failed)?;
        // The first command is bounded by what is left of the connect timeout: `timeout` bounds
        // the whole opening (a caller's deadline is passed down as it).
        let left = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        connection
            .set_read_timeout(Some(left.min(IO_TIMEOUT)))
            .map_err(failed)?;
        connection
            .set_write_timeout(Some(left.min(IO_TIMEOUT)))
            .map_err(failed)?;
        // A node of a Redis Cluster answers a single connection's commands for most users with
        // MOVED: said once, at connection, rather than as a write refused for some users.
        // A server that refuses INFO (an ACL without it, a renamed command) answers with an
        // error code: it is taken as no cluster, as before this check; no answer, or one that
        // is not Redis's, fails the opening.
        let info = match redis::cmd("INFO")
            .arg("cluster")
            .query::<String>(&mut connection)
        {
            Ok(info) => info,
            Err(e) if e.code().is_some() => String::new(),
            Err(e) => return Err(failed(e)),
        };
        if info.contains("cluster_enabled:1") {
            return Err(StoreError::Other(format!(
                "the server at {} is a node of a Redis Cluster: open it with \
                 store_backend='redis-cluster' (its seed nodes, comma-separated)",
                redact_url(&location)
            )));
        }
        connection
            .set_read_timeout(Some(IO_TIMEOUT))
            .map_err(failed)?;
        connection
            .set_write_timeout(Some(IO_TIMEOUT))
            .map_err(failed)?;
        Ok(Link::new(Kind::Single(connection)))
    }

    fn new(connection: Kind) -> Link {
        Link {
            connection,
            deadline: None,
            timeout: IO_TIMEOUT,
        }
    }

    /// Sends `commands` in one pipeline; a command's own error (a script's refusal, NOSCRIPT) is
    /// its reply (`Value::ServerError`), an I/O error fails the whole call.
    pub fn run(&mut self, commands: &[Cmd]) -> RedisResult<Vec<Value>> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        self.time_each_reply(commands.len())?;
        match &mut self.connection {
            Kind::Single(connection) => {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for command in commands {
                    pipe.add_command(command.clone());
                }
                pipe.query(connection)
            }
            Kind::Cluster(connection) => {
                let mut pipe = cluster_pipe();
                for command in commands {
                    pipe.add_command(command.clone());
                }
                match pipe.query::<Vec<Value>>(connection) {
                    Ok(values) => Ok(values),
                    // The cluster pipeline fails as a whole on one command's error: send them one
                    // by one to learn which (rare: a script to load again).
                    Err(e) if e.is_io_error() || e.is_timeout() => Err(e),
                    Err(_) => commands
                        .iter()
                        .map(|command| match command.query::<Value>(&mut **connection) {
                            Ok(value) => Ok(value),
                            Err(e) => redis::ServerError::try_from(e).map(Value::ServerError),
                        })
                        .collect(),
                }
            }
        }
    }

    /// One command.
    pub fn one(&mut self, command: &Cmd) -> RedisResult<Value> {
        let mut values = self.run(std::slice::from_ref(command))?;
        let value = values.pop().unwrap_or(Value::Nil);
        match value {
            Value::ServerError(e) => Err(e.into()),
            value => Ok(value),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.connection, Kind::Cluster(_))
    }

    /// Bounds the next commands by `deadline` (a caller's: the wait it was promised), or by
    /// `IO_TIMEOUT` alone (`None`, the sync thread's). `Err` once `deadline` passed.
    pub fn bound(&mut self, deadline: Option<Instant>) -> Result<(), Duration> {
        self.deadline = deadline;
        match deadline.map(|d| d.saturating_duration_since(Instant::now())) {
            Some(left) if left < Duration::from_millis(1) => Err(left),
            _ => Ok(()),
        }
    }

    /// Sets the socket timeouts for a pipeline of `replies` replies: the client reads every
    /// reply even after one timed out (to keep the connection in step), so each read gets its
    /// share of what is left of the deadline, and a cluster's (which may retry a command once on
    /// another node) half of that. Each read waits at most `IO_TIMEOUT` in any case.
    fn time_each_reply(&mut self, replies: usize) -> RedisResult<()> {
        let mut timeout = IO_TIMEOUT;
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let shares = replies.max(1) as u32 * if self.is_cluster() { 2 } else { 1 };
            let share = left / shares;
            if share < Duration::from_millis(1) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the caller's wait (caller_timeout) ran out",
                )
                .into());
            }
            timeout = timeout.min(share);
        }
        if timeout == self.timeout {
            return Ok(());
        }
        match &mut self.connection {
            Kind::Single(connection) => connection
                .set_read_timeout(Some(timeout))
                .and_then(|()| connection.set_write_timeout(Some(timeout)))?,
            Kind::Cluster(connection) => connection
                .set_read_timeout(Some(timeout))
                .and_then(|()| connection.set_write_timeout(Some(timeout)))?,
        }
        self.timeout = timeout;
        Ok(())
    }
}
