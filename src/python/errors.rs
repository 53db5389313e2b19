//! Python exceptions of the library, and the one place where core errors become them.

use pyo3::exceptions::{PyException, PyKeyError, PyOverflowError, PyRuntimeError, PyValueError};
use pyo3::{create_exception, PyErr};

use crate::costmap::CostMapError as CoreCostMapError;
use crate::error::LedgerError;
use crate::store::StoreError as CoreStoreError;

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
create_exception!(
    usagemeter,
    IdempotencyKeyReused,
    PyValueError,
    "An idempotency key still kept was passed again with another payload (method, app or items); nothing was recorded."
);
create_exception!(
    usagemeter,
    HoldSettledError,
    PyValueError,
    "A hold settled or released before was settled, released or extended again: a hold is \
     finished once, and nothing was recorded."
);
create_exception!(
    usagemeter,
    IdempotencyKeyLimitError,
    PyRuntimeError,
    "A new idempotency key would pass the bound on keys kept (per user or in the process); nothing was recorded."
);

create_exception!(
    usagemeter,
    StoreError,
    PyException,
    "The store could not be opened, read or written."
);
create_exception!(
    usagemeter,
    StoreLockedError,
    StoreError,
    "Another process or service holds the store; the message names the path."
);
create_exception!(
    usagemeter,
    StoreCorruptedError,
    StoreError,
    "The store is damaged, truncated or lost data; the message names what failed."
);
create_exception!(
    usagemeter,
    StoreVersionError,
    StoreError,
    "The store was written by a newer version of usagemeter."
);
create_exception!(
    usagemeter,
    StoreWriteError,
    StoreError,
    "A snapshot could not be written (disk full, read-only); usage stays in memory and is retried."
);
create_exception!(
    usagemeter,
    StoreClosedError,
    StoreError,
    "The service was closed."
);
create_exception!(
    usagemeter,
    StoreUnavailableError,
    StoreError,
    "The shared ledger (a Redis server or cluster) cannot be reached; the message names the URL (its password masked)."
);
create_exception!(
    usagemeter,
    StoreOutcomeUnknownError,
    StoreUnavailableError,
    "A call was sent to the shared ledger and no answer came back in time: it may have been recorded or not. A retry with the same idempotency key is safe (it replays or records once)."
);

pub fn store_error(error: CoreStoreError) -> PyErr {
    let message = error.to_string();
    match error {
        CoreStoreError::Locked(_) => StoreLockedError::new_err(message),
        CoreStoreError::Corrupted(_) => StoreCorruptedError::new_err(message),
        CoreStoreError::NewerVersion(_) => StoreVersionError::new_err(message),
        CoreStoreError::Write(_) => StoreWriteError::new_err(message),
        CoreStoreError::Closed(_) => StoreClosedError::new_err(message),
        CoreStoreError::Unavailable(_) => StoreUnavailableError::new_err(message),
        CoreStoreError::OutcomeUnknown(_) => StoreOutcomeUnknownError::new_err(message),
        CoreStoreError::Other(_) => StoreError::new_err(message),
    }
}

pub fn ledger_error(error: LedgerError) -> PyErr {
    match error {
        LedgerError::UnknownUsageType(_) => UnknownUsageType::new_err(error.to_string()),
        LedgerError::InvalidInput(message) => PyValueError::new_err(message),
        LedgerError::PricedByTable(_) => PyValueError::new_err(error.to_string()),
        LedgerError::Overflow(message) => PyOverflowError::new_err(message),
        LedgerError::CostMap(error) => cost_map_error(error),
        // Handled where it arises (the binding resolves the plan and retries); never expected here.
        LedgerError::PlanNeeded => PyRuntimeError::new_err(error.to_string()),
        LedgerError::Closed => StoreClosedError::new_err(error.to_string()),
        LedgerError::KeyReused(message) => IdempotencyKeyReused::new_err(message),
        LedgerError::KeyLimit(message) => IdempotencyKeyLimitError::new_err(message),
        LedgerError::HoldFinished(message) => HoldSettledError::new_err(message),
    }
}

pub fn cost_map_error(error: CoreCostMapError) -> PyErr {
    CostMapError::new_err(error.to_string())
}

/// `KeyError` for a missing key (kept separate from the mapping error above).
pub fn missing_key(key: &str) -> PyErr {
    PyKeyError::new_err(key.to_string())
}
