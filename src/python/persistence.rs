//! The Python side of the store: opening it for a service, its snapshot thread, and the
//! `verify_store` / `recover_store` tools. Store I/O always runs with the GIL released.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::actor::PyActor;
use super::errors::store_error;
use crate::ledger::Ledger;
use crate::store::snapshot::{ErrorHook, Snapshotter};
use crate::store::{self, Backend, LedgerStore, Loaded, StoreError};

/// The Python callable that raises `metering:alarm` (installed after the service is built).
pub type AlarmHook = Arc<OnceLock<Py<PyAny>>>;

/// A service's open store and its snapshot thread.
pub struct Persistence {
    pub dir: String,
    pub backend: Backend,
    pub snapshotter: Snapshotter,
}

pub fn parse_backend(name: &str) -> PyResult<Backend> {
    Backend::parse(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "store_backend must be 'sled' or 'redb', not {name:?}"
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
                "store must be a local directory, not a URL ({text:?}): shared stores \
                 ({scheme}://) are not supported yet"
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

/// A failed background snapshot: logged and raised as a `store_error` alarm by the service.
fn alarm_on_error(alarm: AlarmHook) -> ErrorHook {
    Box::new(move |message: &str| {
        Python::attach(|py| {
            let Some(raise_alarm) = alarm.get() else {
                return;
            };
            let system = PyActor::system();
            let text = format!("snapshot failed, usage is kept in memory and retried: {message}");
            if let Err(error) = raise_alarm.call1(py, ("store_error", system, None::<&str>, text)) {
                error.write_unraisable(py, Some(raise_alarm.bind(py)));
            }
        })
    })
}

impl Persistence {
    pub fn start(
        store: LedgerStore,
        ledger: Arc<Ledger>,
        interval: Duration,
        alarm: AlarmHook,
    ) -> Persistence {
        let dir = store.dir().display().to_string();
        let backend = store.backend();
        let snapshotter = Snapshotter::start(ledger, store, interval, alarm_on_error(alarm));
        Persistence {
            dir,
            backend,
            snapshotter,
        }
    }

    pub fn flush(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.snapshotter.flush()).map_err(store_error)
    }

    pub fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.snapshotter.stop()).map_err(store_error)
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
