//! `Actor`: who is metered (a user, optionally acting through an app).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

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
