//! Python exceptions of the library, and the one place where core errors become them.

use pyo3::exceptions::{PyKeyError, PyOverflowError, PyValueError};
use pyo3::{create_exception, PyErr};

use crate::costmap::CostMapError as CoreCostMapError;
use crate::error::LedgerError;

create_exception!(
    usagemeter,
    CostMapError,
    PyValueError,
    "A cost map could not be loaded; the message names the file and the key."
);
create_exception!(
    usagemeter,
    UnknownUsageType,
    PyKeyError,
    "A usage type that is not in the cost map was charged without a cost override."
);

pub fn ledger_error(error: LedgerError) -> PyErr {
    match error {
        LedgerError::UnknownUsageType(_) => UnknownUsageType::new_err(error.to_string()),
        LedgerError::InvalidInput(message) => PyValueError::new_err(message),
        LedgerError::Overflow(message) => PyOverflowError::new_err(message),
        LedgerError::CostMap(error) => cost_map_error(error),
    }
}

pub fn cost_map_error(error: CoreCostMapError) -> PyErr {
    CostMapError::new_err(error.to_string())
}

/// `KeyError` for a missing key (kept separate from the mapping error above).
pub fn missing_key(key: &str) -> PyErr {
    PyKeyError::new_err(key.to_string())
}
