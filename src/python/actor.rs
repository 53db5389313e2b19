//! `Actor`: who is metered (a user, optionally acting through an app).

use std::sync::OnceLock;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::ledger::{Account, AccountHandle, Ledger};

/// App under which usage of an actor without an app is booked.
pub const GLOBAL_APP: &str = "os-global";

/// Key used in usage reports for the sum of an app actor's other apps.
pub const OTHER_APPS: &str = "others";

/// A user, optionally acting through an app. Frozen and hashable.
#[pyclass(frozen, eq, hash, module = "usagemeter._core", name = "Actor")]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PyActor {
    /// The user whose budget pays.
    #[pyo3(get)]
    pub user_id: String,
    /// The app acting for the user, or None.
    #[pyo3(get)]
    pub app_id: Option<String>,
    /// The user's email; users with one default to the `user_free` plan.
    #[pyo3(get)]
    pub email: Option<String>,
    /// True only for `Actor.system()`, which is never metered.
    #[pyo3(get)]
    pub is_system: bool,
    /// The user's account in the first ledger that metered this object.
    pub account: AccountCache,
}

/// An `Actor` object's handle on its user's account (see `AccountHandle`), filled by the first
/// ledger that meters it: a server that keeps its actor objects skips the account lookup on
/// every later call. Not part of the actor's value: equality, hashing and copies ignore it.
#[derive(Default)]
pub struct AccountCache(OnceLock<(u64, AccountHandle)>);

impl AccountCache {
    /// The user's account in `ledger`: the cached one, or (when the cache holds another
    /// ledger's) `None`, and the caller looks it up.
    pub fn get(&self, ledger: &Ledger, user_id: &str) -> Option<&Account> {
        let (ledger_id, account) = self
            .0
            .get_or_init(|| (ledger.id(), ledger.account(user_id)));
        (*ledger_id == ledger.id()).then_some(&**account)
    }

    /// The user's account in `ledger` if it has one, kept like `get` but never created: for
    /// read-only checks, which must not allocate an account for a user never charged, yet should
    /// skip the lookup by id as charges do once the account exists.
    pub fn existing(&self, ledger: &Ledger, user_id: &str) -> Option<&Account> {
        let (ledger_id, account) = match self.0.get() {
            Some(kept) => kept,
            None => {
                let account = ledger.existing_account(user_id)?;
                self.0.get_or_init(|| (ledger.id(), account))
            }
        };
        (*ledger_id == ledger.id()).then_some(&**account)
    }
}

impl Clone for AccountCache {
    fn clone(&self) -> Self {
        AccountCache::default()
    }
}

impl PartialEq for AccountCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for AccountCache {}

impl std::hash::Hash for AccountCache {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl std::fmt::Debug for AccountCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccountCache")
    }
}

impl PyActor {
    /// The app this actor's usage is booked under.
    pub fn booking_app(&self) -> &str {
        self.app_id.as_deref().unwrap_or(GLOBAL_APP)
    }
}

#[pymethods]
impl PyActor {
    #[new]
    #[pyo3(signature = (user_id, app_id=None, *, email=None))]
    fn new(user_id: String, app_id: Option<String>, email: Option<String>) -> PyResult<Self> {
        if user_id.is_empty() {
            return Err(PyValueError::new_err("user_id must be a non-empty string"));
        }
        match app_id.as_deref() {
            Some("") => {
                return Err(PyValueError::new_err(
                    "app_id must be a non-empty string or None",
                ))
            }
            Some(OTHER_APPS) => {
                return Err(PyValueError::new_err(
                    "app_id 'others' is reserved: reports use it for other apps",
                ))
            }
            _ => {}
        }
        Ok(PyActor {
            user_id,
            app_id,
            email,
            is_system: false,
            account: AccountCache::default(),
        })
    }

    /// The system actor: never metered, its calls record nothing.
    #[staticmethod]
    pub fn system() -> Self {
        PyActor {
            user_id: "system".into(),
            app_id: None,
            email: None,
            is_system: true,
            account: AccountCache::default(),
        }
    }

    fn __repr__(&self) -> String {
        if self.is_system {
            return "Actor.system()".into();
        }
        let mut text = format!("Actor({:?}", self.user_id);
        if let Some(app) = &self.app_id {
            text += &format!(", app_id={app:?}");
        }
        if let Some(email) = &self.email {
            text += &format!(", email={email:?}");
        }
        text + ")"
    }
}
