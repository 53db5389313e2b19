//! The Python side of the store: opening it for a service, its snapshot thread, and the
//! `verify_store` / `recover_store` tools. Store I/O always runs with the GIL released.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::errors::store_error;
use crate::fleet::sync::{AlarmHook, Fleet, FleetOptions, FleetRound, InvalidateHook};
use crate::ledger::image::UserImage;
use crate::ledger::Ledger;
use crate::redact::{redact_url as redacted, scrub};
use crate::store::guard::quietly_failing;
use crate::store::snapshot::{ErrorHook, Snapshotter};
use crate::store::{self, Backend, LedgerStore, Loaded, StoreError};

/// Errors of background snapshots, waiting for the Python side to raise them as alarms (kind,
/// message): `store_error`, or `ledger_lost` from a fleet's sync thread. The snapshot thread
/// never runs Python: an alarm listener may then call `flush()` or `close()` (which wait for that
/// thread) without deadlock, and a snapshot failing at interpreter exit never waits for a GIL
/// that will not come back.
#[derive(Clone, Default)]
pub struct StoreErrors(Arc<Mutex<VecDeque<(&'static str, String)>>>);

/// At most this many errors wait for the alarm dispatcher; older ones are dropped (it drains
/// them every second, and one failed snapshot a `snapshot_interval` is all a full disk makes).
const MAX_QUEUED_ERRORS: usize = 64;

impl StoreErrors {
    /// A `store_error` alarm to raise.
    pub fn push(&self, message: String) {
        self.push_alarm("store_error", message);
    }

    pub fn push_alarm(&self, kind: &'static str, message: String) {
        let mut queue = self.0.lock();
        if queue.len() == MAX_QUEUED_ERRORS {
            // The oldest `store_error` makes room (one a failed round): a `ledger_lost` alarm,
            // raised once per loss, is never the one dropped while a restore fails the rounds.
            let oldest = queue.iter().position(|(k, _)| *k == "store_error");
            queue.remove(oldest.unwrap_or(0));
        }
        queue.push_back((kind, message));
    }

    pub fn take(&self) -> Vec<(&'static str, String)> {
        self.0.lock().drain(..).collect()
    }

    /// A hook for a background thread that queues its errors, prefixed with `what`.
    fn hook(&self, what: &'static str) -> ErrorHook {
        let queue = self.clone();
        Box::new(move |message: &str| queue.push(format!("{what}: {message}")))
    }
}

/// Where a service keeps its ledger.
pub enum StoreKind {
    /// An embedded store in a local directory (the backend of the store there when `None`).
    Embedded(Option<Backend>),
    /// The shared ledger of a fleet: one Redis server (`redis://`, `rediss://`, `unix://`), or a
    /// Redis Cluster (seed nodes, comma-separated).
    Shared { cluster: bool },
}

/// Whether `location` is a URL of a shared ledger.
fn is_shared_url(location: &str) -> bool {
    ["redis://", "rediss://", "unix://", "redis+unix://"]
        .iter()
        .any(|scheme| location.starts_with(scheme))
}

/// The URLs of a shared ledger, checked before anything connects: one for a server, one or
/// more (comma-separated) seed nodes for a cluster. A malformed URL is a `ValueError`.
pub fn shared_urls(location: &str, cluster: bool) -> PyResult<Vec<String>> {
    use redis::IntoConnectionInfo;
    let urls: Vec<String> = location.split(',').map(|u| u.trim().to_string()).collect();
    if urls.len() > 1 && !cluster {
        return Err(PyValueError::new_err(format!(
            "store {:?} names several servers: a Redis Cluster's seed nodes need \
             store_backend='redis-cluster'",
            redacted(location)
        )));
    }
    for url in &urls {
        if let Err(error) = url.as_str().into_connection_info() {
            return Err(PyValueError::new_err(format!(
                "store {:?} is not a Redis URL: {}",
                redacted(url),
                scrub(&error.to_string(), url)
            )));
        }
    }
    Ok(urls)
}

/// What `store` and `store_backend` name.
pub fn store_kind(location: &str, backend: Option<&str>) -> PyResult<StoreKind> {
    let shared = is_shared_url(location);
    match backend {
        Some("redis") | Some("redis-cluster") if !shared => Err(PyValueError::new_err(format!(
            "store_backend={:?} needs a redis://, rediss:// or unix:// URL as store, not {location:?}",
            backend.unwrap_or_default()
        ))),
        Some("redis") => Ok(StoreKind::Shared { cluster: false }),
        Some("redis-cluster") => Ok(StoreKind::Shared { cluster: true }),
        None if shared => Ok(StoreKind::Shared { cluster: false }),
        Some(_) if shared => Err(PyValueError::new_err(format!(
            "store {:?} is a shared ledger: store_backend must be 'redis', \
             'redis-cluster' or None",
            redacted(location)
        ))),
        None => Ok(StoreKind::Embedded(None)),
        Some(name) => parse_backend(name).map(|b| StoreKind::Embedded(Some(b))),
    }
}

/// A service's open store and its background thread (snapshots, or the fleet's sync).
pub struct Persistence {
    /// The store directory, or the shared ledger's URL.
    pub dir: String,
    /// The store directory made absolute when opened, to find its files after a fork.
    canonical_dir: Option<PathBuf>,
    /// "sled", "redb", "redis" or "redis-cluster".
    pub backend: &'static str,
    pub snapshotter: Snapshotter,
    pub errors: StoreErrors,
    /// The shared ledger, for a fleet's worker.
    pub fleet: Option<Arc<Fleet>>,
}

pub fn parse_backend(name: &str) -> PyResult<Backend> {
    Backend::parse(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "store_backend must be 'sled', 'redb', 'redis' or 'redis-cluster', not {name:?}"
        ))
    })
}

/// Refuses a store path that is no local directory, before anything is created: an empty path
/// (the store would be made of the working directory) and a URL (`redis://...` would silently
/// become a local directory named `redis:`).
fn check_store_path(dir: &Path) -> PyResult<()> {
    let text = dir.to_string_lossy();
    if text.is_empty() {
        return Err(PyValueError::new_err(
            "store must be a directory path, not an empty string",
        ));
    }
    if let Some((scheme, _)) = text.split_once("://") {
        let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if is_scheme {
            return Err(PyValueError::new_err(format!(
                "store must be a local directory or a redis://, rediss:// or unix:// URL, \
                 not {text:?} ({scheme}:// is not a store this version knows)"
            )));
        }
    }
    Ok(())
}

/// Opens the store (verifying every record) with the GIL released. `backend` `None` takes the
/// backend of the store already at `dir`, or sled for a new one.
pub fn open(
    py: Python<'_>,
    dir: &Path,
    backend: Option<Backend>,
) -> PyResult<(LedgerStore, Loaded)> {
    check_store_path(dir)?;
    py.detach(|| LedgerStore::open_with(dir, backend))
        .map_err(store_error)
}

impl Persistence {
    pub fn start(store: LedgerStore, ledger: Arc<Ledger>, interval: Duration) -> Persistence {
        let dir = store.dir().display().to_string();
        let canonical_dir = store
            .dir()
            .canonicalize()
            .unwrap_or_else(|_| store.dir().to_path_buf());
        let backend = store.backend().name();
        let errors = StoreErrors::default();
        let on_error = errors.hook("snapshot failed, usage is kept in memory and retried");
        let snapshotter = Snapshotter::start(ledger, store, interval, on_error);
        Persistence {
            dir,
            canonical_dir: Some(canonical_dir),
            backend,
            snapshotter,
            errors,
            fleet: None,
        }
    }

    /// Joins the fleet sharing the ledger at `url` (loading every user into `ledger`, which
    /// must be empty), and starts the sync thread.
    pub fn join_fleet(
        py: Python<'_>,
        url: &str,
        cluster: bool,
        make_ledger: impl FnOnce() -> Ledger,
        options: FleetOptions,
        on_invalidate: impl FnOnce(Arc<Ledger>) -> InvalidateHook,
    ) -> PyResult<(Arc<Ledger>, Persistence)> {
        let ledger = Arc::new(make_ledger());
        let hook = on_invalidate(Arc::clone(&ledger));
        let interval = options.interval;
        let errors = StoreErrors::default();
        let alarms = errors.clone();
        let on_alarm: AlarmHook =
            Box::new(move |message: &str| alarms.push_alarm("ledger_lost", message.to_string()));
        let opened = py.detach(|| {
            quietly_failing("opening the shared ledger", || {
                Fleet::open(Arc::clone(&ledger), options, hook, on_alarm)
            })
        });
        let (fleet, users): (Fleet, Vec<UserImage>) = opened.map_err(store_error)?;
        ledger.restore(users);
        // Opened while the ledger is being restored: offline until the restore ends.
        ledger.set_online(fleet.is_ready());
        let fleet = Arc::new(fleet);
        let on_error =
            errors.hook("sync with the shared ledger failed, usage is kept in memory and retried");
        let round = Box::new(FleetRound(Arc::clone(&fleet)));
        let snapshotter = Snapshotter::start_round(round, "usagemeter-sync", interval, on_error);
        let persistence = Persistence {
            // Shown (`store_path`, messages): the password masked. The fleet keeps the real URL.
            dir: redacted(url),
            canonical_dir: None,
            backend: if cluster { "redis-cluster" } else { "redis" },
            snapshotter,
            errors,
            fleet: Some(fleet),
        };
        Ok((ledger, persistence))
    }

    pub fn flush(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.snapshotter.flush()).map_err(store_error)
    }

    /// The last snapshot, then the thread stops; if the snapshot fails the thread keeps retrying.
    pub fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.snapshotter.stop()).map_err(store_error)
    }

    /// The last snapshot, then the thread stops even if it failed (the error is returned).
    pub fn close_abandoning(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.snapshotter.stop_abandoning())
            .map_err(store_error)
    }

    /// In a child process after `fork()`: the snapshot thread does not exist here and the store
    /// is the parent's. Closes the child's copies of the store's file descriptors, so that the
    /// store's locks end with the parent's close, not with the child's exit. The caller must
    /// never use this `Persistence` again, nor drop it (its destructor would wait for the thread
    /// that the child does not have): see `MeteringCore::_forked`.
    pub fn close_inherited_descriptors(&self) {
        if let Some(dir) = &self.canonical_dir {
            close_descriptors_under(dir);
        }
    }
}

/// Closes this process's file descriptors open on files under `dir` (Linux: `/proc/self/fd`;
/// elsewhere nothing is closed and the child keeps them until it exits).
fn close_descriptors_under(dir: &Path) {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let descriptors: Vec<i32> = entries
        .flatten()
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            target.starts_with(dir).then_some(fd)
        })
        .collect();
    for fd in descriptors {
        // SAFETY: the descriptor belongs to the store forgotten by the caller, which will never
        // use it again; closing it only drops this process's reference to the open file.
        unsafe {
            libc::close(fd);
        }
    }
}

/// The backend of the store at `path`, refusing a path with no store at all (the tools never
/// create one). Data without a manifest is left to `LedgerStore::open`, which calls it corrupted.
fn existing_store(path: &Path) -> Result<Backend, StoreError> {
    let missing = || StoreError::Other(format!("no usagemeter store at {}", path.display()));
    if !path.is_dir() {
        return Err(missing());
    }
    store::detect_backend(path)?.ok_or_else(missing)
}

/// Checks every record of the store at `path` (taking its lock) and describes it:
/// `{"backend", "format_version", "generation", "records", "users", "user_months"}` (records are
/// the credit and user-month records; the meta record and the type table are not counted).
#[pyfunction]
pub fn verify_store(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, PyDict>> {
    let (backend, loaded) = py
        .detach(|| {
            let backend = existing_store(&path)?;
            LedgerStore::open(&path, backend).map(|(_, loaded)| (backend, loaded))
        })
        .map_err(store_error)?;
    let summary = PyDict::new(py);
    summary.set_item("backend", backend.name())?;
    summary.set_item("format_version", store::codec::FORMAT_VERSION)?;
    summary.set_item("generation", loaded.generation)?;
    summary.set_item("records", loaded.records)?;
    summary.set_item("users", loaded.users.len())?;
    summary.set_item("user_months", loaded.months)?;
    Ok(summary)
}

/// Keeps every record of the store at `path` whose checksum holds and deletes the others:
/// `{"kept": int, "dropped": [description, ...]}`.
#[pyfunction]
pub fn recover_store(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, PyDict>> {
    let recovery = py
        .detach(|| existing_store(&path).and_then(|_| store::recover(&path)))
        .map_err(store_error)?;
    let summary = PyDict::new(py);
    summary.set_item("kept", recovery.kept)?;
    summary.set_item("dropped", recovery.dropped)?;
    Ok(summary)
}

/// `location` as it may be shown: a shared ledger's URL with its password masked (`***`);
/// anything else (a directory) as it is.
#[pyfunction]
pub fn redact_url(location: &str) -> String {
    redacted(location)
}

/// Opens the shared ledger at `url` for a tool (no worker joins).
fn tool_link(url: &str, cluster: bool) -> Result<crate::fleet::link::Link, StoreError> {
    let urls: Vec<String> = url.split(',').map(|u| u.trim().to_string()).collect();
    crate::fleet::link::Link::open(&urls, cluster, Duration::from_secs(5))
}

/// Every user of the store at `location` (a directory or a shared ledger's URL), verified.
fn load_any(location: &str, kind: &StoreKind) -> Result<Vec<UserImage>, StoreError> {
    match kind {
        StoreKind::Embedded(backend) => {
            let path = Path::new(location);
            let found = existing_store(path)?;
            let (_, loaded) = LedgerStore::open(path, backend.unwrap_or(found))?;
            Ok(loaded.users)
        }
        StoreKind::Shared { cluster } => {
            crate::fleet::bulk::load(&mut tool_link(location, *cluster)?, location)
        }
    }
}

/// Writes `users` into a new store at `location` (refusing one that holds data).
fn write_new_any(location: &str, kind: &StoreKind, users: &[UserImage]) -> Result<(), StoreError> {
    match kind {
        StoreKind::Embedded(backend) => {
            let path = Path::new(location);
            if path.exists() && store::detect_backend(path)?.is_some() {
                return Err(StoreError::Other(format!(
                    "{location} already holds a usagemeter store: copy into a new directory"
                )));
            }
            let (mut store, _) = LedgerStore::open_with(path, *backend)?;
            store.write_snapshot(users)
        }
        StoreKind::Shared { cluster } => {
            crate::fleet::bulk::write_new(&mut tool_link(location, *cluster)?, location, users)
        }
    }
}

/// Why a copy of a source without users is refused before the destination is written: a copy
/// of nothing is a mistake (a wrong database number, a flushed Redis, a lost user list) that a
/// "copied 0 users" line would hide, and a new empty destination would then block the real copy.
fn nothing_to_copy(source: &StoreKind) -> StoreError {
    StoreError::Other(match source {
        StoreKind::Embedded(_) => {
            "the source store holds no users: nothing to copy, and nothing was written".to_owned()
        }
        StoreKind::Shared { .. } => format!(
            "the source ledger lists no users (its set {} is empty or missing: a wrong database \
             number in the URL, a flushed or restarted Redis, or a lost user list): nothing to copy, \
             and nothing was written",
            crate::fleet::record::USERS_KEY
        ),
    })
}

/// Copies every user of the store at `source` into a new store at `destination`: an embedded
/// store (a directory) or a shared ledger (`redis://...`), either way. The source is verified
/// record by record first; the destination must be new (an empty Redis database, or a
/// directory with no store). A source without users is a `StoreError` (`nothing_to_copy`), the
/// destination untouched. Returns `{"users": int, "user_months": int}`.
#[pyfunction]
#[pyo3(signature = (source, destination, source_backend=None, destination_backend=None))]
pub fn copy_store<'py>(
    py: Python<'py>,
    source: &str,
    destination: &str,
    source_backend: Option<&str>,
    destination_backend: Option<&str>,
) -> PyResult<Bound<'py, PyDict>> {
    let from = store_kind(source, source_backend)?;
    let to = store_kind(destination, destination_backend)?;
    for (location, kind) in [(source, &from), (destination, &to)] {
        match kind {
            StoreKind::Shared { cluster } => drop(shared_urls(location, *cluster)?),
            StoreKind::Embedded(_) => check_store_path(Path::new(location))?,
        }
    }
    let users = py
        .detach(|| {
            quietly_failing("the copy", || {
                let users = load_any(source, &from)?;
                if users.is_empty() {
                    return Err(nothing_to_copy(&from));
                }
                write_new_any(destination, &to, &users).map(|()| users)
            })
        })
        .map_err(store_error)?;
    let summary = PyDict::new(py);
    summary.set_item("users", users.len())?;
    summary.set_item(
        "user_months",
        users.iter().map(|u| u.months.len()).sum::<usize>(),
    )?;
    Ok(summary)
}
