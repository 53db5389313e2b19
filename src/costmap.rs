//! Cost maps: usage type -> exact price per unit, loaded from JSON text.
//!
//! Every price is read from its text (JSON number or string), never through a float. Loading is
//! strict where the system we replace was lax: a malformed file, a non-numeric, negative or NaN
//! price, an empty or reserved key and a key defined twice (in one file or across files) are all
//! errors naming the file and the key.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::money::{parse_microcents, Price};
use crate::price_table::{json_kind, PriceTable};

/// Usage type names that cannot be priced because the usage reports use them as field names.
pub const RESERVED_USAGE_TYPES: [&str; 1] = ["total"];

/// The cost maps compiled into the library (`costmaps/*.json`), as (file name, JSON text).
pub const DEFAULT_SOURCES: &[(&str, &str)] =
    include!(concat!(env!("OUT_DIR"), "/default_costmaps.rs"));

/// Index of a priced usage type inside its cost map.
pub type PriceIndex = u32;

/// A cost-map loading error: which file, which key, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostMapError {
    pub source: String,
    pub key: Option<String>,
    pub reason: String,
}

impl fmt::Display for CostMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: key {:?}: {}", self.source, key, self.reason),
            None => write!(f, "{}: {}", self.source, self.reason),
        }
    }
}

impl std::error::Error for CostMapError {}

/// One priced usage type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CostEntry {
    pub usage_type: Box<str>,
    pub price: Price,
    /// The file (or other source) the price came from.
    pub source: Arc<str>,
}

/// A price that had more than 12 fractional digits and was rounded half-even when loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundedPrice {
    pub usage_type: String,
    pub source: String,
    pub original: String,
    pub rounded: Price,
}

/// One usage type priced by a table (`price_table`): tiers, service tiers, dated prices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableEntry {
    pub usage_type: Box<str>,
    pub table: Arc<PriceTable>,
    pub source: Arc<str>,
}

/// An immutable set of prices. Lookups are one hash of the usage type name.
///
/// Plain prices and tables live apart: the plain index is what every charge looks up first, and
/// it is exactly what it was before tables existed, so a plain-priced type is priced by the same
/// code as before. A table is looked up only when the plain index misses (issue 19: the hot path
/// must not slow).
#[derive(Clone, Debug, Default)]
pub struct CostMap {
    entries: Vec<CostEntry>,
    index: HashMap<Box<str>, PriceIndex, foldhash::fast::RandomState>,
    tables: Vec<TableEntry>,
    table_index: HashMap<Box<str>, u32, foldhash::fast::RandomState>,
    rounded: Vec<RoundedPrice>,
}

/// A usage type's price as written: one price, or a table.
enum Priced<'a> {
    Plain(&'a str),
    Table(&'a serde_json::Map<String, Value>),
}

impl CostMap {
    /// The cost maps shipped with the library.
    pub fn default_maps() -> Result<CostMap, CostMapError> {
        CostMap::from_json_sources(DEFAULT_SOURCES.iter().copied())
    }

    /// Loads `(source name, JSON text)` pairs; each text is one object `{"usage:type": price}`.
    pub fn from_json_sources<'a>(
        sources: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<CostMap, CostMapError> {
        let mut map = CostMap::default();
        for (source, text) in sources {
            let pairs = parse_object(source, text)?;
            let source: Arc<str> = Arc::from(source);
            for (key, value) in pairs {
                match &value {
                    Value::Object(object) => {
                        map.insert_priced(&source, key, Priced::Table(object))?
                    }
                    _ => {
                        let price_text = price_text(&source, &key, &value)?;
                        map.insert(&source, key, &price_text)?;
                    }
                }
            }
        }
        Ok(map)
    }

    /// Builds a map from `(usage type, price text)` pairs, all attributed to `source`.
    pub fn from_pairs<'a>(
        source: &str,
        pairs: impl IntoIterator<Item = (String, &'a str)>,
    ) -> Result<CostMap, CostMapError> {
        let mut map = CostMap::default();
        let source: Arc<str> = Arc::from(source);
        for (key, text) in pairs {
            map.insert(&source, key, text)?;
        }
        Ok(map)
    }

    fn insert(
        &mut self,
        source: &Arc<str>,
        key: String,
        price_text: &str,
    ) -> Result<(), CostMapError> {
        self.insert_priced(source, key, Priced::Plain(price_text))
    }

    fn insert_priced(
        &mut self,
        source: &Arc<str>,
        key: String,
        priced: Priced<'_>,
    ) -> Result<(), CostMapError> {
        let error = |reason: String| CostMapError {
            source: source.to_string(),
            key: Some(key.clone()),
            reason,
        };
        if key.is_empty() {
            return Err(error("usage type is empty".into()));
        }
        if RESERVED_USAGE_TYPES.contains(&key.as_str()) {
            return Err(error(
                "usage type name is reserved for the report's total".into(),
            ));
        }
        if let Some(first) = self.source_of(&key) {
            return Err(error(format!("defined twice (first in {first})")));
        }
        let price_text = match priced {
            Priced::Plain(text) => text,
            Priced::Table(object) => {
                let mut rounded = Vec::new();
                let table = PriceTable::parse(object, &mut rounded)
                    .map_err(|reason| error(format!("price table: {reason}")))?;
                for (at, original, price) in rounded {
                    self.rounded.push(RoundedPrice {
                        usage_type: key.clone(),
                        source: source.to_string(),
                        original: format!("{at}: {original}"),
                        rounded: price,
                    });
                }
                if table.is_plain() {
                    // `{"price": p}` alone is a plain price: priced on the plain path.
                    return self.push_plain(source, key, table.base_price());
                }
                let at = u32::try_from(self.tables.len())
                    .map_err(|_| error("too many price tables in one cost map".into()))?;
                self.table_index.insert(key.clone().into_boxed_str(), at);
                self.tables.push(TableEntry {
                    usage_type: key.into_boxed_str(),
                    table: Arc::new(table),
                    source: Arc::clone(source),
                });
                return Ok(());
            }
        };
        let parsed =
            parse_microcents(price_text).map_err(|e| error(format!("price {price_text:?} {e}")))?;
        let price = Price::from_money(parsed.money).expect("parse_microcents refuses negatives");
        if parsed.rounded {
            self.rounded.push(RoundedPrice {
                usage_type: key.clone(),
                source: source.to_string(),
                original: price_text.to_string(),
                rounded: price,
            });
        }
        self.push_plain(source, key, price)
    }

    fn push_plain(
        &mut self,
        source: &Arc<str>,
        key: String,
        price: Price,
    ) -> Result<(), CostMapError> {
        let index = PriceIndex::try_from(self.entries.len()).map_err(|_| CostMapError {
            source: source.to_string(),
            key: Some(key.clone()),
            reason: "too many usage types in one cost map".into(),
        })?;
        self.index.insert(key.clone().into_boxed_str(), index);
        self.entries.push(CostEntry {
            usage_type: key.into_boxed_str(),
            price,
            source: Arc::clone(source),
        });
        Ok(())
    }

    /// A copy of `self` with every price of `other` added; `other` wins where both define a key
    /// (a table replaces a plain price and the other way round).
    pub fn merged(&self, other: &CostMap) -> CostMap {
        let mut merged = CostMap::default();
        for entry in self.entries.iter().chain(&other.entries) {
            merged.remove_table(&entry.usage_type);
            match merged.index.get(&entry.usage_type) {
                Some(&at) => merged.entries[at as usize] = entry.clone(),
                None => {
                    let at = merged.entries.len() as PriceIndex;
                    merged.index.insert(entry.usage_type.clone(), at);
                    merged.entries.push(entry.clone());
                }
            }
        }
        for (from_other, entry) in self
            .tables
            .iter()
            .map(|t| (false, t))
            .chain(other.tables.iter().map(|t| (true, t)))
        {
            // A plain price of `other` wins over a table of `self`.
            if !from_other && other.index.contains_key(&entry.usage_type) {
                continue;
            }
            if from_other {
                merged.remove_plain(&entry.usage_type);
            }
            match merged.table_index.get(&entry.usage_type) {
                Some(&at) => merged.tables[at as usize] = entry.clone(),
                None => {
                    let at = merged.tables.len() as u32;
                    merged.table_index.insert(entry.usage_type.clone(), at);
                    merged.tables.push(entry.clone());
                }
            }
        }
        merged.rounded = self
            .rounded
            .iter()
            .chain(&other.rounded)
            .filter(|r| {
                merged
                    .source_of(&r.usage_type)
                    .is_some_and(|source| **source == *r.source)
            })
            .cloned()
            .collect();
        merged
    }

    /// Drops a table (rebuilding the small table index): only `merged` does this.
    fn remove_table(&mut self, usage_type: &str) {
        if self.table_index.remove(usage_type).is_some() {
            self.tables.retain(|t| &*t.usage_type != usage_type);
            self.table_index = self
                .tables
                .iter()
                .enumerate()
                .map(|(at, t)| (t.usage_type.clone(), at as u32))
                .collect();
        }
    }

    /// Drops a plain price (rebuilding the index): only `merged` does this, before any ledger
    /// numbers types by this map.
    fn remove_plain(&mut self, usage_type: &str) {
        if self.index.remove(usage_type).is_some() {
            self.entries.retain(|e| &*e.usage_type != usage_type);
            self.index = self
                .entries
                .iter()
                .enumerate()
                .map(|(at, e)| (e.usage_type.clone(), at as PriceIndex))
                .collect();
        }
    }

    /// The table of a usage type priced by one (`None` for plain prices and unknown types).
    pub fn table(&self, usage_type: &str) -> Option<&TableEntry> {
        self.table_index
            .get(usage_type)
            .map(|&at| &self.tables[at as usize])
    }

    /// Whether any usage type is priced by a table.
    pub fn has_tables(&self) -> bool {
        !self.tables.is_empty()
    }

    pub fn tables(&self) -> &[TableEntry] {
        &self.tables
    }

    /// Whether the map prices `usage_type` (by a plain price or a table).
    pub fn prices(&self, usage_type: &str) -> bool {
        self.index.contains_key(usage_type) || self.table_index.contains_key(usage_type)
    }

    /// The file (or other source) a usage type's price came from.
    pub fn source_of(&self, usage_type: &str) -> Option<&Arc<str>> {
        match self.get(usage_type) {
            Some(entry) => Some(&entry.source),
            None => self.table(usage_type).map(|t| &t.source),
        }
    }

    pub fn index_of(&self, usage_type: &str) -> Option<PriceIndex> {
        self.index.get(usage_type).copied()
    }

    pub fn entry(&self, index: PriceIndex) -> &CostEntry {
        &self.entries[index as usize]
    }

    pub fn get(&self, usage_type: &str) -> Option<&CostEntry> {
        self.index_of(usage_type).map(|i| self.entry(i))
    }

    pub fn entries(&self) -> &[CostEntry] {
        &self.entries
    }

    pub fn rounded(&self) -> &[RoundedPrice] {
        &self.rounded
    }

    /// How many usage types the map prices (plain and by table).
    pub fn len(&self) -> usize {
        self.entries.len() + self.tables.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.tables.is_empty()
    }
}

/// The text of a price written as a JSON number or string.
fn price_text(source: &str, key: &str, value: &Value) -> Result<String, CostMapError> {
    match value {
        // `arbitrary_precision` keeps the number's text as written in the file.
        Value::Number(number) => Ok(number.as_str().to_string()),
        Value::String(text) => Ok(text.clone()),
        other => Err(CostMapError {
            source: source.to_string(),
            key: Some(key.to_string()),
            reason: format!(
                "price must be a number or a numeric string, not {}",
                json_kind(other)
            ),
        }),
    }
}

/// Parses one JSON object into its pairs in file order, refusing duplicate keys (serde_json's own
/// map would silently keep the last one).
fn parse_object(source: &str, text: &str) -> Result<Vec<(String, Value)>, CostMapError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let pairs = deserializer
        .deserialize_map(PairsVisitor)
        .and_then(|pairs| deserializer.end().map(|()| pairs))
        .map_err(|e| CostMapError {
            source: source.to_string(),
            key: None,
            reason: format!("malformed cost map JSON: {e}"),
        })?;
    let mut seen = std::collections::HashSet::new();
    for (key, _) in &pairs {
        if !seen.insert(key.as_str()) {
            return Err(CostMapError {
                source: source.to_string(),
                key: Some(key.clone()),
                reason: "defined twice in the same file".into(),
            });
        }
    }
    Ok(pairs)
}

struct PairsVisitor;

impl<'de> Visitor<'de> for PairsVisitor {
    type Value = Vec<(String, Value)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object mapping usage types to prices")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut pairs = Vec::with_capacity(access.size_hint().unwrap_or(0));
        while let Some(pair) = access.next_entry::<String, Value>()? {
            pairs.push(pair);
        }
        Ok(pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Money;

    fn load(text: &str) -> Result<CostMap, CostMapError> {
        CostMap::from_json_sources([("test.json", text)])
    }

    #[test]
    fn default_maps_load_every_shipped_price() {
        let map = CostMap::default_maps().unwrap();
        assert_eq!(map.len(), 1105);
        assert_eq!(
            map.get("kv:write").unwrap().price.as_money(),
            Money::from_microcents(125).unwrap()
        );
        assert_eq!(
            map.get("kv:read").unwrap().price.as_money(),
            Money::from_microcents(63).unwrap()
        );
        assert!(map.get("openrouter:openrouter/auto:prompt").is_none());
        let rounded: Vec<_> = map
            .rounded()
            .iter()
            .map(|r| r.usage_type.as_str())
            .collect();
        assert_eq!(
            rounded,
            ["filesystem:egress:bytes", "filesystem:cached-egress:bytes"]
        );
    }

    #[test]
    fn numbers_and_strings_are_read_from_their_text() {
        let map = load(r#"{"a": 31.25, "b": "31.25", "c": 0.1, "d": 1e2}"#).unwrap();
        assert_eq!(map.get("a").unwrap().price, map.get("b").unwrap().price);
        assert_eq!(
            map.get("c").unwrap().price.as_money().attocents(),
            100_000_000_000
        );
        assert_eq!(
            map.get("d").unwrap().price.as_money(),
            Money::from_microcents(100).unwrap()
        );
    }

    #[test]
    fn keys_come_back_unchanged() {
        let map = load(r#"{"openrouter:meta-llama/llama-3.1-8b:prompt": 1, "a.b.c": 2}"#).unwrap();
        let keys: Vec<_> = map.entries().iter().map(|e| &*e.usage_type).collect();
        assert_eq!(keys, ["openrouter:meta-llama/llama-3.1-8b:prompt", "a.b.c"]);
    }

    #[test]
    fn every_loading_error_names_file_and_key() {
        let cases = [
            (r#"{"a": 1"#, None, "malformed"),
            (r#"[1, 2]"#, None, "malformed"),
            (r#"{"a": "cheap"}"#, Some("a"), "not a decimal number"),
            (r#"{"a": "NaN"}"#, Some("a"), "not a decimal number"),
            (r#"{"a": -1}"#, Some("a"), "negative"),
            (r#"{"a": null}"#, Some("a"), "not null"),
            (r#"{"a": true}"#, Some("a"), "not a boolean"),
            (r#"{"a": 1, "a": 2}"#, Some("a"), "twice in the same file"),
            (r#"{"": 1}"#, Some(""), "empty"),
            (r#"{"total": 1}"#, Some("total"), "reserved"),
            (r#"{"a": 1e30}"#, Some("a"), "larger"),
        ];
        for (text, key, reason) in cases {
            let error = load(text).unwrap_err();
            assert_eq!(error.source, "test.json");
            assert_eq!(error.key.as_deref(), key, "{text}");
            assert!(error.reason.contains(reason), "{text}: {error}");
        }
    }

    #[test]
    fn a_key_in_two_files_is_an_error() {
        let error =
            CostMap::from_json_sources([("one.json", r#"{"a": 1}"#), ("two.json", r#"{"a": 2}"#)])
                .unwrap_err();
        assert_eq!(error.source, "two.json");
        assert_eq!(error.key.as_deref(), Some("a"));
        assert!(error.reason.contains("one.json"));
    }

    #[test]
    fn merged_lets_the_other_map_win() {
        let base = load(r#"{"a": 1, "b": 2}"#).unwrap();
        let other = CostMap::from_json_sources([("o.json", r#"{"b": 20, "c": 30}"#)]).unwrap();
        let merged = base.merged(&other);
        assert_eq!(merged.len(), 3);
        assert_eq!(
            merged.get("b").unwrap().price.as_money(),
            Money::from_microcents(20).unwrap()
        );
        assert_eq!(&*merged.get("b").unwrap().source, "o.json");
        assert_eq!(
            merged.get("a").unwrap().price.as_money(),
            Money::from_microcents(1).unwrap()
        );
    }

    #[test]
    fn a_table_is_priced_apart_from_the_plain_index() {
        let map = load(
            r#"{"g:p": {"price": "125", "tiers": [{"above": 200000, "price": 250}]},
                "g:o": 1000, "g:flat": {"price": "7"}}"#,
        )
        .unwrap();
        assert_eq!(map.len(), 3);
        // The plain index (the hot path) does not know the table; `{"price": p}` is plain.
        assert!(map.get("g:p").is_none() && map.index_of("g:p").is_none());
        assert!(map.get("g:flat").is_some());
        let table = map.table("g:p").unwrap();
        assert_eq!(&*table.source, "test.json");
        assert_eq!(
            table.table.base_price().as_money(),
            Money::from_microcents(125).unwrap()
        );
        assert!(map.prices("g:p") && map.prices("g:o") && !map.prices("g:x"));
        assert!(map.has_tables());
        assert_eq!(map.source_of("g:p").map(|s| &**s), Some("test.json"));
    }

    #[test]
    fn a_malformed_table_names_file_key_and_reason() {
        let error = load(r#"{"a": 1, "b": {"price": 1, "tiers": [{"above": 0, "price": 2}]}}"#)
            .unwrap_err();
        assert_eq!(error.source, "test.json");
        assert_eq!(error.key.as_deref(), Some("b"));
        assert!(
            error
                .reason
                .contains("tiers[0].above must be a positive integer"),
            "{error}"
        );
        let twice = CostMap::from_json_sources([
            (
                "one.json",
                r#"{"a": {"price": 1, "service_tiers": {"flex": 1}}}"#,
            ),
            ("two.json", r#"{"a": 2}"#),
        ])
        .unwrap_err();
        assert_eq!(twice.key.as_deref(), Some("a"));
        assert!(twice.reason.contains("one.json"));
    }

    #[test]
    fn merged_replaces_tables_and_plain_prices_both_ways() {
        let base = load(r#"{"a": 1, "t": {"price": 1, "service_tiers": {"flex": 1}}}"#).unwrap();
        let other = CostMap::from_json_sources([(
            "o.json",
            r#"{"a": {"price": 2, "service_tiers": {"flex": 1}}, "t": 5}"#,
        )])
        .unwrap();
        let merged = base.merged(&other);
        assert_eq!(merged.len(), 2);
        assert!(merged.get("a").is_none() && merged.table("a").is_some());
        assert!(merged.table("t").is_none());
        assert_eq!(
            merged.get("t").unwrap().price.as_money(),
            Money::from_microcents(5).unwrap()
        );
        let back = merged.merged(&base);
        assert!(back.get("a").is_some() && back.table("t").is_some() && back.len() == 2);
    }
}
