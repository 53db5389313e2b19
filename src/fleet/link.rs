//! The connection to the shared ledger: one Redis server or a Redis Cluster, with timeouts.
//! Every command is sent in a pipeline (one round trip for a whole sync step); a cluster
//! pipeline sends each command to the node of its key.

use std::time::Duration;

use redis::cluster::{cluster_pipe, ClusterClientBuilder, ClusterConnection};
use redis::{Cmd, Connection, RedisError, RedisResult, Value};

use crate::store::{StoreError, StoreResult};

pub enum Link {
    Single(Connection),
    Cluster(Box<ClusterConnection>),
}

/// Bounds every command: a server that stops answering fails a sync step, never hangs it.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// `rediss://` needs a process-wide crypto provider (ring); installed once.
fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An application that installed its own provider keeps it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A connection error as the store error Python sees (`StoreError`).
pub fn unavailable(url: &str, error: &RedisError) -> StoreError {
    StoreError::Unavailable(format!(
        "the shared ledger at {url} cannot be reached: {error}"
    ))
}

impl Link {
    /// Connects within `timeout`; `cluster` takes `urls` as seed nodes of a Redis Cluster.
    pub fn open(urls: &[String], cluster: bool, timeout: Duration) -> StoreResult<Link> {
        install_crypto();
        let shown = urls.join(",");
        let failed = |e: RedisError| unavailable(&shown, &e);
        if cluster {
            let client = ClusterClientBuilder::new(urls.to_vec())
                .connection_timeout(timeout)
                .response_timeout(IO_TIMEOUT)
                .retries(1)
                .build()
                .map_err(failed)?;
            return Ok(Link::Cluster(Box::new(
                client.get_connection().map_err(failed)?,
            )));
        }
        let client = redis::Client::open(urls[0].as_str())
            .map_err(|e| StoreError::Other(format!("not a Redis URL ({}): {e}", urls[0])))?;
        let connection = client
            .get_connection_with_timeout(timeout)
            .map_err(failed)?;
        connection
            .set_read_timeout(Some(IO_TIMEOUT))
            .map_err(failed)?;
        connection
            .set_write_timeout(Some(IO_TIMEOUT))
            .map_err(failed)?;
        Ok(Link::Single(connection))
    }

    /// Sends `commands` in one pipeline; a command's own error (a script's refusal, NOSCRIPT) is
    /// its reply (`Value::ServerError`), an I/O error fails the whole call.
    pub fn run(&mut self, commands: &[Cmd]) -> RedisResult<Vec<Value>> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Link::Single(connection) => {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for command in commands {
                    pipe.add_command(command.clone());
                }
                pipe.query(connection)
            }
            Link::Cluster(connection) => {
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
        matches!(self, Link::Cluster(_))
    }
}
