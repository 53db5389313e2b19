//! Priced tables: a cost-map entry whose price per unit depends on the request (issue 19.1).
//!
//! A plain entry is one `Price`; a table is a JSON object:
//!
//! ```json
//! {"price": "125",
//!  "tiers": [{"above": 200000, "count": ["gemini:gemini-2.5-pro:prompt_tokens"], "price": "250"}],
//!  "service_tiers": {"flex": "62.5", "priority": {"price": "225", "tiers": [...]}},
//!  "from": [{"date": "2026-01-01", "price": "130", "tiers": [...], "service_tiers": {...}}]}
//! ```
//!
//! - `tiers`: once the request's size passes `above` (strictly more units), the tier's price
//!   prices *every* unit of this type in the request, not only those above it. The size is the
//!   sum of the units, in the same request, of the usage types listed in `count` (default: this
//!   type alone). Thresholds increase, and a tier is never cheaper than the price below it.
//! - `service_tiers`: a price (or `{"price", "tiers"}`) per service tier name. `"default"` and
//!   `"standard"` always mean the base price; any other name the table does not list is an error
//!   naming it (a typo must not bill the wrong price silently). A request without a service tier,
//!   or to a type without service tiers, uses the base price.
//! - `from`: later prices, each a whole new price (`price`, `tiers`, `service_tiers`) in force
//!   from 00:00 UTC of its `date` (YYYY-MM-DD, increasing). The top level is in force before.
//!
//! Every price is an exact decimal read from its text, as for plain entries. Pricing is out of
//! line: a table is looked up only after the plain index missed (`CostMap::table`).

use serde_json::{Map, Value};

use crate::money::{parse_microcents, Price};

/// Service tier names that always mean the table's base price (OpenAI's "default", Anthropic's
/// "standard": what the providers report for a request that asked for no tier).
pub const STANDARD_SERVICE_TIERS: [&str; 2] = ["default", "standard"];

/// One size tier: from more than `above` units of the counted types, every unit costs `price`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tier {
    pub above: u64,
    /// The usage types whose units make the request's size; `None`: this type's own units.
    pub count: Option<Box<[Box<str>]>>,
    pub price: Price,
}

/// A base price and its size tiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub price: Price,
    pub tiers: Vec<Tier>,
}

/// The prices in force from `from_ms` (epoch ms, UTC midnight; `i64::MIN` for the first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Period {
    pub from_ms: i64,
    pub base: Schedule,
    pub service_tiers: Vec<(Box<str>, Schedule)>,
}

/// A priced table: its periods in date order, the first in force from the beginning of time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceTable {
    pub periods: Vec<Period>,
}

/// A price read from a table's text that had more than 12 fractional digits: (where, text, price).
pub type RoundedInTable = (String, String, Price);

impl PriceTable {
    /// Parses a table object. The error is the reason (the caller names file and key); rounded
    /// prices are appended to `rounded`.
    pub fn parse(
        object: &Map<String, Value>,
        rounded: &mut Vec<RoundedInTable>,
    ) -> Result<PriceTable, String> {
        let mut parser = Parser { rounded };
        parser.table(object)
    }

    /// Whether the table prices anything more than one base price (else it is loaded as plain).
    pub fn is_plain(&self) -> bool {
        self.periods.len() == 1
            && self.periods[0].base.tiers.is_empty()
            && self.periods[0].service_tiers.is_empty()
    }

    /// The base price in force first (the table's top-level `price`): what a reader of the map
    /// (`CostMap[...]`) is shown; a charge is priced by `price_for`.
    pub fn base_price(&self) -> Price {
        self.periods[0].base.price
    }

    /// The price per unit of this type for a request at `at_ms` (epoch ms, the service's clock)
    /// in `service_tier`, where `size_of(count)` is the request's size for a tier's `count`.
    pub fn price_for(
        &self,
        at_ms: i64,
        service_tier: Option<&str>,
        size_of: impl Fn(Option<&[Box<str>]>) -> u64,
    ) -> Result<Price, String> {
        let period = self
            .periods
            .iter()
            .rev()
            .find(|p| p.from_ms <= at_ms)
            .unwrap_or(&self.periods[0]);
        let schedule = match service_tier {
            None => &period.base,
            Some(name) if STANDARD_SERVICE_TIERS.contains(&name) => &period.base,
            Some(_) if period.service_tiers.is_empty() => &period.base,
            Some(name) => match period.service_tiers.iter().find(|(n, _)| &**n == name) {
                Some((_, schedule)) => schedule,
                None => {
                    let known: Vec<&str> = period.service_tiers.iter().map(|(n, _)| &**n).collect();
                    return Err(format!(
                        "service tier {name:?} has no price (priced tiers: {}; \"default\" and \
                         \"standard\" mean the base price)",
                        known.join(", ")
                    ));
                }
            },
        };
        let mut price = schedule.price;
        for tier in &schedule.tiers {
            if size_of(tier.count.as_deref()) > tier.above {
                price = tier.price;
            }
        }
        Ok(price)
    }
}

struct Parser<'r> {
    rounded: &'r mut Vec<RoundedInTable>,
}

impl Parser<'_> {
    fn table(&mut self, object: &Map<String, Value>) -> Result<PriceTable, String> {
        only_fields(
            object,
            &["price", "tiers", "service_tiers", "from"],
            "the table",
        )?;
        let mut periods = vec![self.period(object, i64::MIN, "")?];
        if let Some(from) = object.get("from") {
            let Value::Array(later) = from else {
                return Err(format!("\"from\" must be a list, not {}", json_kind(from)));
            };
            for (at, entry) in later.iter().enumerate() {
                let where_ = format!("from[{at}]");
                let Value::Object(entry) = entry else {
                    return Err(format!(
                        "{where_} must be an object, not {}",
                        json_kind(entry)
                    ));
                };
                only_fields(entry, &["date", "price", "tiers", "service_tiers"], &where_)?;
                let date = match entry.get("date") {
                    Some(Value::String(date)) => date,
                    Some(other) => {
                        return Err(format!(
                            "{where_}.date must be a \"YYYY-MM-DD\" string, not {}",
                            json_kind(other)
                        ))
                    }
                    None => return Err(format!("{where_} has no \"date\"")),
                };
                let from_ms = date_ms(date)
                    .ok_or_else(|| format!("{where_}.date {date:?} is not a YYYY-MM-DD date"))?;
                let previous = periods.last().expect("the first period").from_ms;
                if from_ms <= previous {
                    return Err(format!(
                        "{where_}.date {date:?} is not after the date before it (dates must increase)"
                    ));
                }
                periods.push(self.period(entry, from_ms, &format!("{where_}."))?);
            }
        }
        Ok(PriceTable { periods })
    }

    fn period(
        &mut self,
        object: &Map<String, Value>,
        from_ms: i64,
        where_: &str,
    ) -> Result<Period, String> {
        let base = self.schedule(object, where_)?;
        let mut service_tiers = Vec::new();
        if let Some(value) = object.get("service_tiers") {
            let Value::Object(tiers) = value else {
                return Err(format!(
                    "{where_}service_tiers must be an object {{name: price}}, not {}",
                    json_kind(value)
                ));
            };
            for (name, value) in tiers {
                let at = format!("{where_}service_tiers.{name}");
                if name.is_empty() {
                    return Err(format!("{where_}service_tiers has an empty name"));
                }
                if STANDARD_SERVICE_TIERS.contains(&name.as_str()) {
                    return Err(format!(
                        "{at}: {name:?} always means the base price; set \"price\" instead"
                    ));
                }
                let schedule = match value {
                    Value::Object(object) => {
                        only_fields(object, &["price", "tiers"], &at)?;
                        self.schedule(object, &format!("{at}."))?
                    }
                    other => Schedule {
                        price: self.price(other, &at)?,
                        tiers: Vec::new(),
                    },
                };
                service_tiers.push((name.clone().into_boxed_str(), schedule));
            }
        }
        Ok(Period {
            from_ms,
            base,
            service_tiers,
        })
    }

    fn schedule(&mut self, object: &Map<String, Value>, where_: &str) -> Result<Schedule, String> {
        let price = match object.get("price") {
            Some(value) => self.price(value, &format!("{where_}price"))?,
            None => return Err(format!("{where_}price is missing")),
        };
        let mut tiers: Vec<Tier> = Vec::new();
        if let Some(value) = object.get("tiers") {
            let Value::Array(list) = value else {
                return Err(format!(
                    "{where_}tiers must be a list, not {}",
                    json_kind(value)
                ));
            };
            for (at, tier) in list.iter().enumerate() {
                let at = format!("{where_}tiers[{at}]");
                let Value::Object(tier) = tier else {
                    return Err(format!("{at} must be an object, not {}", json_kind(tier)));
                };
                only_fields(tier, &["above", "count", "price"], &at)?;
                let above = match tier.get("above") {
                    Some(Value::Number(n)) => n.as_u64().filter(|&n| n > 0),
                    _ => None,
                }
                .ok_or_else(|| format!("{at}.above must be a positive integer (units)"))?;
                let count = match tier.get("count") {
                    None => None,
                    Some(Value::Array(names)) if !names.is_empty() => Some(
                        names
                            .iter()
                            .map(|name| match name {
                                Value::String(name) if !name.is_empty() => {
                                    Ok(name.clone().into_boxed_str())
                                }
                                _ => Err(format!("{at}.count must list usage types (strings)")),
                            })
                            .collect::<Result<Box<[_]>, _>>()?,
                    ),
                    Some(_) => {
                        return Err(format!(
                            "{at}.count must be a non-empty list of usage types"
                        ))
                    }
                };
                let price = match tier.get("price") {
                    Some(value) => self.price(value, &format!("{at}.price"))?,
                    None => return Err(format!("{at}.price is missing")),
                };
                if let Some(below) = tiers.last() {
                    if above <= below.above {
                        return Err(format!(
                            "{at}.above {above} is not above the tier before it ({}): \
                             thresholds must increase",
                            below.above
                        ));
                    }
                }
                tiers.push(Tier {
                    above,
                    count,
                    price,
                });
            }
        }
        // A tier is never cheaper than the price below it: a bigger request never costs less
        // per unit, so splitting a request can never lower its bill below the tier's.
        let mut below = price;
        for (at, tier) in tiers.iter().enumerate() {
            if tier.price < below {
                return Err(format!(
                    "{where_}tiers[{at}].price {} is cheaper than the price below it ({})",
                    tier.price.as_money().to_microcent_string(),
                    below.as_money().to_microcent_string()
                ));
            }
            below = tier.price;
        }
        Ok(Schedule { price, tiers })
    }

    fn price(&mut self, value: &Value, where_: &str) -> Result<Price, String> {
        let text = match value {
            // `arbitrary_precision` keeps the number's text as written.
            Value::Number(number) => number.as_str().to_string(),
            Value::String(text) => text.clone(),
            other => {
                return Err(format!(
                    "{where_} must be a number or a numeric string, not {}",
                    json_kind(other)
                ))
            }
        };
        let parsed = parse_microcents(&text).map_err(|e| format!("{where_} {text:?} {e}"))?;
        let price =
            Price::from_money(parsed.money).ok_or_else(|| format!("{where_} is negative"))?;
        if parsed.rounded {
            self.rounded.push((where_.to_string(), text, price));
        }
        Ok(price)
    }
}

fn only_fields(object: &Map<String, Value>, known: &[&str], where_: &str) -> Result<(), String> {
    match object.keys().find(|k| !known.contains(&k.as_str())) {
        Some(field) => Err(format!(
            "{where_} has an unknown field {field:?} (known: {})",
            known.join(", ")
        )),
        None => Ok(()),
    }
}

/// What a JSON value is, for error messages ("a string", "an object"...).
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Epoch ms of 00:00 UTC on a `YYYY-MM-DD` date, or `None` if it is not one.
fn date_ms(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = &text[range];
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month[(month - 1) as usize] {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Money;

    fn table(text: &str) -> Result<PriceTable, String> {
        let value: Value = serde_json::from_str(text).unwrap();
        PriceTable::parse(value.as_object().unwrap(), &mut Vec::new())
    }

    fn microcents(price: Price) -> String {
        price.as_money().to_microcent_string()
    }

    const GEMINI: &str = r#"{"price": "125", "tiers": [{"above": 200000,
        "count": ["p"], "price": "250"}]}"#;

    #[test]
    fn a_tier_prices_the_whole_request_once_it_passes_the_threshold() {
        let t = table(GEMINI).unwrap();
        let at = |size: u64| microcents(t.price_for(0, None, |_| size).unwrap());
        assert_eq!(at(1), "125");
        assert_eq!(at(200_000), "125");
        assert_eq!(at(200_001), "250");
        assert_eq!(at(250_000), "250");
    }

    #[test]
    fn count_names_the_meters_whose_units_make_the_size() {
        let t = table(GEMINI).unwrap();
        let seen = std::cell::RefCell::new(Vec::new());
        t.price_for(0, None, |count| {
            seen.borrow_mut().push(count.map(|c| c.to_vec()));
            0
        })
        .unwrap();
        assert_eq!(*seen.borrow(), [Some(vec![Box::from("p")])]);
    }

    #[test]
    fn service_tiers_choose_their_price_and_unknown_names_are_errors() {
        let t = table(
            r#"{"price": 100, "service_tiers": {"flex": "50", "priority": {"price": 180,
            "tiers": [{"above": 10, "price": 200}]}}}"#,
        )
        .unwrap();
        let price = |tier: Option<&str>, size: u64| t.price_for(0, tier, |_| size).map(microcents);
        assert_eq!(price(None, 99).unwrap(), "100");
        assert_eq!(price(Some("default"), 99).unwrap(), "100");
        assert_eq!(price(Some("standard"), 1).unwrap(), "100");
        assert_eq!(price(Some("flex"), 99).unwrap(), "50");
        assert_eq!(price(Some("priority"), 10).unwrap(), "180");
        assert_eq!(price(Some("priority"), 11).unwrap(), "200");
        let error = price(Some("flx"), 1).unwrap_err();
        assert!(
            error.contains("\"flx\"") && error.contains("flex, priority"),
            "{error}"
        );
        // A type without service tiers ignores the name.
        let plain = table(GEMINI).unwrap();
        assert_eq!(
            microcents(plain.price_for(0, Some("flex"), |_| 1).unwrap()),
            "125"
        );
    }

    #[test]
    fn dated_prices_switch_at_utc_midnight() {
        let t = table(
            r#"{"price": 1, "from": [{"date": "2026-01-01", "price": 2},
            {"date": "2026-03-01", "price": "0.5"}]}"#,
        )
        .unwrap();
        let new_year = date_ms("2026-01-01").unwrap();
        assert_eq!(new_year, 1_767_225_600_000);
        let at = |ms: i64| microcents(t.price_for(ms, None, |_| 1).unwrap());
        assert_eq!(at(i64::MIN), "1");
        assert_eq!(at(new_year - 1), "1");
        assert_eq!(at(new_year), "2");
        assert_eq!(at(date_ms("2026-02-28").unwrap()), "2");
        assert_eq!(at(date_ms("2026-03-01").unwrap()), "0.5");
        assert_eq!(date_ms("2024-02-29"), Some(1_709_164_800_000));
        for bad in [
            "2025-02-29",
            "2026-13-01",
            "2026-1-01",
            "26-01-01x",
            "2026/01/01",
            "2026-00-10",
        ] {
            assert_eq!(date_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_malformed_table_is_refused_with_its_reason() {
        let cases = [
            (r#"{"tiers": []}"#, "price is missing"),
            (r#"{"price": 1, "tier": []}"#, "unknown field \"tier\""),
            (r#"{"price": -1}"#, "negative"),
            (r#"{"price": 1.5e40}"#, "larger"),
            (
                r#"{"price": 1, "tiers": [{"above": 0, "price": 2}]}"#,
                "positive integer",
            ),
            (
                r#"{"price": 1, "tiers": [{"above": 1.5, "price": 2}]}"#,
                "positive integer",
            ),
            (
                r#"{"price": 1, "tiers": [{"above": "10", "price": 2}]}"#,
                "positive integer",
            ),
            (
                r#"{"price": 1, "tiers": [{"above": -3, "price": 2}]}"#,
                "positive integer",
            ),
            (
                r#"{"price": 1, "tiers": [{"above": 10, "price": 2}, {"above": 10, "price": 3}]}"#,
                "thresholds must increase",
            ),
            (
                r#"{"price": 2, "tiers": [{"above": 10, "price": 1}]}"#,
                "cheaper",
            ),
            (
                r#"{"price": 1, "tiers": [{"above": 10, "price": 3}, {"above": 20, "price": 2}]}"#,
                "tiers[1].price 2 is cheaper",
            ),
            (
                r#"{"price": 1, "tiers": [{"above": 10}]}"#,
                "tiers[0].price is missing",
            ),
            (
                r#"{"price": 1, "tiers": [{"above": 10, "price": 2, "count": []}]}"#,
                "non-empty",
            ),
            (
                r#"{"price": 1, "tiers": [{"above": 10, "price": 2, "count": [3]}]}"#,
                "strings",
            ),
            (
                r#"{"price": 1, "service_tiers": {"flex": "cheap"}}"#,
                "service_tiers.flex",
            ),
            (
                r#"{"price": 1, "service_tiers": {"default": 1}}"#,
                "always means the base",
            ),
            (
                r#"{"price": 1, "service_tiers": ["flex"]}"#,
                "must be an object",
            ),
            (
                r#"{"price": 1, "from": [{"date": "2026-1-1", "price": 2}]}"#,
                "not a YYYY-MM-DD",
            ),
            (r#"{"price": 1, "from": [{"price": 2}]}"#, "no \"date\""),
            (
                r#"{"price": 1, "from": [{"date": "2026-02-01", "price": 2},
                    {"date": "2026-01-01", "price": 3}]}"#,
                "dates must increase",
            ),
            (
                r#"{"price": 1, "from": [{"date": "2026-02-01", "price": 2, "x": 1}]}"#,
                "unknown field",
            ),
            (r#"{"price": null}"#, "not null"),
        ];
        for (text, reason) in cases {
            let error = table(text).unwrap_err();
            assert!(error.contains(reason), "{text}: {error}");
        }
    }

    #[test]
    fn prices_are_exact_and_rounding_is_reported() {
        let mut rounded = Vec::new();
        let value: Value =
            serde_json::from_str(r#"{"price": 0.1, "service_tiers": {"flex": "0.0000000000005"}}"#)
                .unwrap();
        let t = PriceTable::parse(value.as_object().unwrap(), &mut rounded).unwrap();
        assert_eq!(
            t.base_price().as_money(),
            Money::from_attocents(100_000_000_000).unwrap()
        );
        assert_eq!(rounded.len(), 1);
        assert_eq!(rounded[0].0, "service_tiers.flex");
        assert!(!t.is_plain());
        assert!(table(r#"{"price": 3}"#).unwrap().is_plain());
    }
}
