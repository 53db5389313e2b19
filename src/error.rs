//! The one error type of the ledger core; the binding turns each variant into a Python exception
//! in one place (`python::to_py_err`).

use std::fmt;

use crate::costmap::CostMapError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerError {
    /// A usage type that is not in the cost map, charged without a cost override.
    UnknownUsageType(String),
    /// Input outside what the ledger accepts (negative target, empty usage type, ...).
    InvalidInput(String),
    /// A total would leave the ledger's range; nothing was recorded.
    Overflow(String),
    /// `Plan::Cached` found no unexpired plan: resolve it, `set_plan`, and call again.
    PlanNeeded,
    /// The ledger was sealed by `close()`: it records nothing more.
    Closed,
    /// A live idempotency key was passed with another payload; nothing was recorded.
    KeyReused(String),
    /// A new idempotency key would pass the bound on keys held; nothing was recorded.
    KeyLimit(String),
    /// A hold settled or released before was settled, released or extended again; nothing was
    /// recorded (`ledger::holds`).
    HoldFinished(String),
    CostMap(CostMapError),
    /// The usage type is priced by a table (`price_table`), which needs the whole request, its
    /// time and service tier: price the items with `Ledger::with_tables` and call again. Only
    /// returned before anything is recorded; the binding always retries, so it never reaches
    /// Python.
    PricedByTable(String),
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerError::UnknownUsageType(name) => {
                write!(
                    f,
                    "usage type {name:?} is not in the cost map (pass a cost override or add it)"
                )
            }
            LedgerError::InvalidInput(message)
            | LedgerError::Overflow(message)
            | LedgerError::KeyReused(message)
            | LedgerError::KeyLimit(message)
            | LedgerError::HoldFinished(message) => f.write_str(message),
            LedgerError::CostMap(error) => error.fmt(f),
            LedgerError::PricedByTable(name) => write!(
                f,
                "usage type {name:?} is priced by a table (size tiers, service tiers or dated \
                 prices): its cost depends on the request, so pass the cost"
            ),
            LedgerError::PlanNeeded => f.write_str("the user's plan must be resolved first"),
            LedgerError::Closed => f.write_str("this MeteringService is closed"),
        }
    }
}

impl std::error::Error for LedgerError {}

impl From<CostMapError> for LedgerError {
    fn from(error: CostMapError) -> Self {
        LedgerError::CostMap(error)
    }
}

pub type LedgerResult<T> = Result<T, LedgerError>;

/// Shorthand for the overflow error of one named total.
pub fn overflow(what: &str) -> LedgerError {
    LedgerError::Overflow(format!(
        "{what} would leave the ledger's range; nothing was recorded"
    ))
}
