//! usagemeter's native core: exact money, cost maps and the in-memory ledger (plain Rust), and
//! the PyO3 binding that exposes them as `usagemeter._core`.

pub mod costmap;
pub mod error;
pub mod fleet;
pub mod ledger;
pub mod money;
pub mod price_table;
pub mod python;
pub mod redact;
pub mod store;

use pyo3::prelude::*;

/// `usagemeter._core`, re-exported by the `usagemeter` package.
///
/// `gil_used = false`: all shared state is behind atomics, lock-free maps (papaya) or
/// `parking_lot` mutexes that are never held while Python code runs, so the module is safe on a
/// free-threaded interpreter.
#[pymodule(gil_used = false)]
mod _core {
    #[pymodule_export]
    use crate::python::actor::PyActor;
    #[pymodule_export]
    use crate::python::costmap::PyCostMap;
    #[pymodule_export]
    use crate::python::errors::{
        CostMapError, HoldSettledError, IdempotencyKeyLimitError, IdempotencyKeyReused,
        StoreClosedError, StoreCorruptedError, StoreError, StoreLockedError,
        StoreOutcomeUnknownError, StoreUnavailableError, StoreVersionError, StoreWriteError,
        UnknownUsageType,
    };
    #[pymodule_export]
    use crate::python::meter::PyMeter;
    #[pymodule_export]
    use crate::python::persistence::{copy_store, recover_store, redact_url, verify_store};
    #[pymodule_export]
    use crate::python::service::MeteringCore;

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("GLOBAL_APP", crate::python::actor::GLOBAL_APP)?;
        m.add("MANUAL_ADJUSTMENT", crate::ledger::MANUAL_ADJUSTMENT)?;
        Ok(())
    }
}
