//! Conversions at the boundary: Python ints to units and money, money to Python ints.
//!
//! Money crosses as `int` microcents only. A `float` never becomes money: it is a `TypeError`.

use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyString};

use crate::money::Money;

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".into(), |n| n.to_string())
}

/// Refuses everything that is not a plain `int` (bools included), naming what was given.
fn require_int(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<()> {
    if obj.is_instance_of::<PyInt>() && !obj.is_instance_of::<PyBool>() {
        return Ok(());
    }
    let hint = if obj.is_instance_of::<PyBool>() {
        " (bool is not accepted as a number)"
    } else {
        ""
    };
    Err(PyTypeError::new_err(format!(
        "{what} must be an int, not {}{hint}",
        type_name(obj)
    )))
}

/// The error for an int outside `0..=max`: `ValueError` when negative, else `OverflowError`.
fn out_of_range(obj: &Bound<'_, PyAny>, what: &str, max: &str) -> PyErr {
    match obj.lt(0) {
        Ok(true) => PyValueError::new_err(format!("{what} must not be negative, got {obj}")),
        _ => PyOverflowError::new_err(format!("{what} {obj} is larger than {max}")),
    }
}

/// Units of usage: an `int` in `0..=2**64-1`.
pub fn units(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
    require_int(obj, what)?;
    obj.extract::<u64>()
        .map_err(|_| out_of_range(obj, what, "2**64-1"))
}

/// A non-negative amount of whole microcents, as exact money.
pub fn microcents(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Money> {
    require_int(obj, what)?;
    obj.extract::<i128>()
        .ok()
        .filter(|value| *value >= 0)
        .and_then(Money::from_microcents)
        .filter(|money| money.fits_record())
        .ok_or_else(|| out_of_range(obj, what, "the ledger's range (10**18 µ¢)"))
}

/// A non-negative amount of microcents asked about (not recorded): `None` when it is beyond
/// the ledger's range, which no budget can cover.
pub fn microcents_query(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Option<Money>> {
    require_int(obj, what)?;
    match obj.extract::<i128>().ok() {
        Some(value) if value < 0 => Err(PyValueError::new_err(format!(
            "{what} must not be negative, got {obj}"
        ))),
        Some(value) => Ok(Money::from_microcents(value)),
        None if obj.lt(0)? => Err(PyValueError::new_err(format!(
            "{what} must not be negative, got {obj}"
        ))),
        None => Ok(None),
    }
}

pub fn optional_microcents(obj: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<Money>> {
    match obj {
        Some(obj) if !obj.is_none() => microcents(obj, what).map(Some),
        _ => Ok(None),
    }
}

/// A usage type name, borrowed from the Python string (no copy).
pub fn usage_type<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<&'a str> {
    let text = obj.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!("usage type must be a str, not {}", type_name(obj)))
    })?;
    text.to_str()
}

/// Money as whole microcents, rounded half up. Through `i64` when it fits: CPython builds a
/// small int directly, where an `i128` goes through a byte array.
pub fn money_to_int(py: Python<'_>, money: Money) -> Bound<'_, PyInt> {
    let microcents = money.to_microcents_half_up();
    match i64::try_from(microcents) {
        Ok(small) => small.into_pyobject(py).expect("i64 converts to int"),
        Err(_) => microcents.into_pyobject(py).expect("i128 converts to int"),
    }
}

/// An idempotency key: `None`, or a `str` the ledger accepts (`idempotency::validate_key`),
/// borrowed from the Python string.
pub fn idempotency_key<'a>(obj: Option<&'a Bound<'_, PyAny>>) -> PyResult<Option<&'a str>> {
    let Some(obj) = obj.filter(|obj| !obj.is_none()) else {
        return Ok(None);
    };
    let text = obj.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!(
            "idempotency_key must be a str or None, not {}",
            type_name(obj)
        ))
    })?;
    let key = text.to_str()?;
    crate::ledger::idempotency::validate_key(key)
        .map_err(|error| PyValueError::new_err(error.to_string()))?;
    Ok(Some(key))
}
