//! `CostMap`: the Python face of `crate::costmap::CostMap`.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use super::errors::{cost_map_error, missing_key};
use crate::costmap::{CostMap, CostMapError as CoreCostMapError};
use crate::money::Price;

/// Immutable prices per usage type, in µ¢ per unit, exact to 12 fractional digits.
#[pyclass(frozen, module = "usagemeter._core", name = "CostMap")]
pub struct PyCostMap {
    pub inner: Arc<CostMap>,
}

/// `(usage_type, source, original_text, rounded Decimal)`.
type RoundedRow<'py> = (String, String, String, Bound<'py, PyAny>);

fn decimal<'py>(py: Python<'py>, price: Price) -> PyResult<Bound<'py, PyAny>> {
    static DECIMAL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let class = DECIMAL.get_or_try_init(py, || {
        py.import("decimal")?.getattr("Decimal").map(Bound::unbind)
    })?;
    class
        .bind(py)
        .call1((price.as_money().to_microcent_string(),))
}

/// The text of a price given in a dict: int, str or Decimal; never a float.
fn price_text(key: &str, value: &Bound<'_, PyAny>) -> PyResult<String> {
    if value.is_instance_of::<PyFloat>() || value.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "price of {key:?} is a {}: pass prices as int, str or decimal.Decimal so they stay exact",
            value.get_type().name()?
        )));
    }
    if value.is_instance_of::<PyString>() || value.is_instance_of::<PyInt>() {
        return value.str()?.extract();
    }
    let is_decimal = value.get_type().name()?.to_str()? == "Decimal";
    if is_decimal {
        // Decimal's str() is exact ("31.25", "1E+2", "NaN"); the parser judges it.
        return value.str()?.extract();
    }
    Err(PyTypeError::new_err(format!(
        "price of {key:?} must be int, str or decimal.Decimal, not {}",
        value.get_type().name()?
    )))
}

impl PyCostMap {
    fn wrap(inner: CostMap) -> Self {
        PyCostMap {
            inner: Arc::new(inner),
        }
    }

    /// The plain price, or a table's first base price.
    fn base_price(&self, key: &str) -> Option<Price> {
        match self.inner.get(key) {
            Some(entry) => Some(entry.price),
            None => self.inner.table(key).map(|t| t.table.base_price()),
        }
    }
}

#[pymethods]
impl PyCostMap {
    /// The prices shipped with the library (one file per provider).
    #[staticmethod]
    fn default(py: Python<'_>) -> PyResult<Self> {
        static DEFAULT: PyOnceLock<Arc<CostMap>> = PyOnceLock::new();
        let inner = DEFAULT.get_or_try_init(py, || {
            CostMap::default_maps()
                .map(Arc::new)
                .map_err(cost_map_error)
        })?;
        Ok(PyCostMap {
            inner: Arc::clone(inner),
        })
    }

    /// Loads JSON files, each one object `{"usage:type": price}`; a key in two files is an error.
    #[staticmethod]
    #[pyo3(signature = (*paths))]
    fn from_files(py: Python<'_>, paths: Vec<PathBuf>) -> PyResult<Self> {
        let loaded = py.detach(|| {
            let mut texts = Vec::with_capacity(paths.len());
            for path in &paths {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| CoreCostMapError {
                    source: name.clone(),
                    key: None,
                    reason: format!("cannot read the file: {e}"),
                })?;
                texts.push((name, text));
            }
            CostMap::from_json_sources(
                texts
                    .iter()
                    .map(|(name, text)| (name.as_str(), text.as_str())),
            )
        });
        loaded.map(PyCostMap::wrap).map_err(cost_map_error)
    }

    /// Loads one JSON text, as one cost-map file (`source` names it in errors).
    #[staticmethod]
    #[pyo3(signature = (text, source="json"))]
    fn from_json(text: &str, source: &str) -> PyResult<Self> {
        CostMap::from_json_sources([(source, text)])
            .map(PyCostMap::wrap)
            .map_err(cost_map_error)
    }

    /// Builds a map from `{usage_type: price}` with int, str or Decimal prices.
    #[staticmethod]
    fn from_dict(prices: &Bound<'_, PyDict>) -> PyResult<Self> {
        let mut pairs = Vec::with_capacity(prices.len());
        for (key, value) in prices.iter() {
            let key: String = key.extract().map_err(|_| {
                PyTypeError::new_err(format!("usage types must be str, not {}", key.get_type()))
            })?;
            let text = price_text(&key, &value)?;
            pairs.push((key, text));
        }
        let map = CostMap::from_pairs("dict", pairs.iter().map(|(k, t)| (k.clone(), t.as_str())));
        map.map(PyCostMap::wrap).map_err(cost_map_error)
    }

    /// A new map with the prices of both; `other` wins where both price a usage type.
    fn merged(&self, other: &PyCostMap) -> Self {
        PyCostMap::wrap(self.inner.merged(&other.inner))
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, key: &Bound<'_, PyAny>) -> bool {
        key.extract::<&str>()
            .is_ok_and(|key| self.inner.prices(key))
    }

    fn __getitem__<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyAny>> {
        decimal(py, self.base_price(key).ok_or_else(|| missing_key(key))?)
    }

    /// The price of `key` as a Decimal, or `default`.
    #[pyo3(signature = (key, default=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &str,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.base_price(key) {
            Some(price) => decimal(py, price).map(Some),
            None => Ok(default),
        }
    }

    /// Usage types: the plain prices in load order, then the tables in load order.
    fn keys(&self) -> Vec<&str> {
        let plain = self.inner.entries().iter().map(|e| &*e.usage_type);
        let tables = self.inner.tables().iter().map(|t| &*t.usage_type);
        plain.chain(tables).collect()
    }

    /// Whether `key` is priced by a table (size tiers, service tiers or dated prices): its
    /// `map[key]` is the table's first base price, and a charge is priced for its request.
    fn is_table(&self, key: &str) -> bool {
        self.inner.table(key).is_some()
    }

    /// `(usage_type, Decimal price)` pairs in the order of `keys()` (a table's first base price).
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items = self
            .inner
            .entries()
            .iter()
            .map(|e| (&*e.usage_type, e.price))
            .chain(
                self.inner
                    .tables()
                    .iter()
                    .map(|t| (&*t.usage_type, t.table.base_price())),
            )
            .map(|(usage_type, price)| {
                PyTuple::new(
                    py,
                    [
                        usage_type.into_pyobject(py)?.into_any(),
                        decimal(py, price)?,
                    ],
                )
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        PyList::new(py, self.keys())?
            .try_iter()
            .map(Bound::into_any)
    }

    /// The file (or "dict") a usage type's price came from.
    fn source_of(&self, key: &str) -> PyResult<String> {
        self.inner
            .source_of(key)
            .map(|source| source.to_string())
            .ok_or_else(|| missing_key(key))
    }

    /// Prices that had more than 12 fractional digits, rounded half-even at load:
    /// `(usage_type, source, original_text, rounded_price)`.
    fn rounded_prices<'py>(&self, py: Python<'py>) -> PyResult<Vec<RoundedRow<'py>>> {
        self.inner
            .rounded()
            .iter()
            .map(|r| {
                Ok((
                    r.usage_type.clone(),
                    r.source.clone(),
                    r.original.clone(),
                    decimal(py, r.rounded)?,
                ))
            })
            .collect()
    }

    fn __repr__(&self) -> String {
        format!("<CostMap: {} prices>", self.inner.len())
    }
}
