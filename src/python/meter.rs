//! `Meter`: `increment_usage` for one (actor, usage type) pair, resolved once.

use pyo3::prelude::*;
use pyo3::types::{PyInt, PyString};

use super::actor::PyActor;
use super::service::MeteringCore;
use crate::ledger::record::TypeId;
use crate::ledger::AccountHandle;

/// `service.meter(actor, usage_type)`: `add(amount)` is `increment_usage(actor, usage_type,
/// amount)`, with the actor's account and the usage type's price found once, when the meter is
/// made, instead of on every call.
#[pyclass(frozen, module = "usagemeter._core", name = "Meter")]
pub struct PyMeter {
    service: Py<MeteringCore>,
    actor: Py<PyActor>,
    usage_type: Py<PyString>,
    /// `None`: the cost map has no price and the service records such usage for free; `add`
    /// then goes through `increment_usage`, which raises the unmapped-usage alarm.
    type_id: Option<TypeId>,
    /// `None` for the system actor, which is never metered.
    account: Option<AccountHandle>,
}

impl PyMeter {
    pub fn new(
        service: Py<MeteringCore>,
        actor: Py<PyActor>,
        usage_type: Py<PyString>,
        type_id: Option<TypeId>,
        account: Option<AccountHandle>,
    ) -> PyMeter {
        PyMeter {
            service,
            actor,
            usage_type,
            type_id,
            account,
        }
    }
}

#[pymethods]
impl PyMeter {
    /// Records `amount` units; returns the user's month total in µ¢ (as `increment_usage`).
    fn add<'py>(&self, py: Python<'py>, amount: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyInt>> {
        let service = self.service.get();
        let actor_obj = self.actor.bind(py).as_any();
        match (self.type_id, &self.account) {
            (Some(type_id), Some(account)) => {
                service.add_priced(py, actor_obj, self.actor.get(), account, type_id, amount)
            }
            _ => service.increment_usage(
                py,
                actor_obj,
                self.usage_type.bind(py).as_any(),
                amount,
                None,
            ),
        }
    }

    /// The actor this meter records for.
    #[getter]
    fn actor(&self, py: Python<'_>) -> Py<PyActor> {
        self.actor.clone_ref(py)
    }

    /// The usage type this meter records.
    #[getter]
    fn usage_type(&self, py: Python<'_>) -> Py<PyString> {
        self.usage_type.clone_ref(py)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Meter({}, {})",
            self.actor.bind(py).repr()?,
            self.usage_type.bind(py).repr()?
        ))
    }
}
