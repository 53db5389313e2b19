//! The on-disk encoding of records: `[format version u16][payload][CRC32 u32]`.
//!
//! Hand-written rather than a serde format so the layout is explicit, stable across library
//! versions and strict when read: every length is bounded by the bytes left, trailing bytes and
//! unknown versions are errors. Numbers are LEB128 varints (amounts zigzag-encoded), and usage
//! types are indexes into the store's type table (`\x00types`). For 1,000,000 usage records this
//! took the store from 392 MB to 73 MB (sled) and from 285 MB to 35 MB (redb), and the first
//! snapshot from 8.9 s to 6.0 s (sled) and 4.9 s to 1.2 s (redb): `make bench-store`.

use crate::ledger::days::{self, DayImages};
use crate::ledger::holds::{Hold, MAX_FINISHED_PER_USER, MAX_HOLDS_PER_USER};
use crate::ledger::idempotency::{KeyImage, Outcome, MAX_KEY_BYTES};
use crate::ledger::image::{MonthImage, RecordImage, UserImage};
use crate::ledger::month::MonthId;
use crate::ledger::pools::{Credit, MonthPools};
use crate::ledger::record::UsageCounter;
use crate::money::Money;

/// Version of the record layout written by this library. Version 2 added the user's last plan
/// to the credit record. Version 3 added the user's outstanding holds to the credit record, and
/// appends to the month record the user's per-day figures (`[n][day][type index][units][cost]
/// [count]...`, sorted by day then usage type name, `ledger/days.rs`); a month record of version
/// 1 or 2 loads with its figures undated (day 0). The keys record (`k`) is a record kind of its
/// own, read from version 2 on: a library that predates it refuses the store (an unknown key)
/// rather than open it and forget the keys. Every other record is laid out as in version 1.
pub const FORMAT_VERSION: u16 = 3;
/// The oldest version this library reads (and rewrites as `FORMAT_VERSION` when it changes).
pub const OLDEST_READABLE_VERSION: u16 = 1;

/// A user's plan as stored: its id and monthly allowance.
pub type StoredPlan = (String, Money);

/// Key of the store's own record: generation and record count.
pub const META_KEY: &[u8] = b"\x00meta";
/// Key of the table of usage type names that month records refer to by index.
pub const TYPES_KEY: &[u8] = b"\x00types";
const CREDIT_PREFIX: u8 = b'c';
const MONTH_PREFIX: u8 = b'm';
const KEYS_PREFIX: u8 = b'k';

/// The store's own record, written in every snapshot batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Number of snapshots written.
    pub generation: u64,
    /// Number of records (credit and month keys) in the store, the meta record excluded.
    pub records: u64,
}

/// Why bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Written by a newer version of the library.
    NewerVersion(u16),
    /// Checksum mismatch, truncation, bad lengths or trailing bytes.
    Corrupted(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::NewerVersion(version) => {
                write!(f, "written by a newer format version ({version})")
            }
            DecodeError::Corrupted(why) => f.write_str(why),
        }
    }
}

/// What a key names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    Meta,
    Types,
    Credit {
        user_id: String,
    },
    Month {
        user_id: String,
        month: MonthId,
    },
    /// A user's idempotency keys (`ledger::idempotency`).
    Keys {
        user_id: String,
    },
}

impl Key {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Key::Meta => META_KEY.to_vec(),
            Key::Types => TYPES_KEY.to_vec(),
            Key::Credit { user_id } => [&[CREDIT_PREFIX][..], user_id.as_bytes()].concat(),
            Key::Keys { user_id } => [&[KEYS_PREFIX][..], user_id.as_bytes()].concat(),
            Key::Month { user_id, month } => [
                &[MONTH_PREFIX][..],
                &month.0.to_be_bytes(),
                user_id.as_bytes(),
            ]
            .concat(),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Key, DecodeError> {
        // The errors do not repeat the key: whoever reports them names it (`describe_key`).
        let text = |b: &[u8]| {
            String::from_utf8(b.to_vec())
                .map_err(|_| DecodeError::Corrupted("the user id is not UTF-8".into()))
        };
        match bytes.split_first() {
            _ if bytes == META_KEY => Ok(Key::Meta),
            _ if bytes == TYPES_KEY => Ok(Key::Types),
            Some((&CREDIT_PREFIX, user)) if !user.is_empty() => Ok(Key::Credit {
                user_id: text(user)?,
            }),
            Some((&KEYS_PREFIX, user)) if !user.is_empty() => Ok(Key::Keys {
                user_id: text(user)?,
            }),
            Some((&MONTH_PREFIX, rest)) if rest.len() > 4 => {
                let month = MonthId(u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")));
                Ok(Key::Month {
                    user_id: text(&rest[4..])?,
                    month,
                })
            }
            _ => Err(DecodeError::Corrupted(
                "not a key this version writes".into(),
            )),
        }
    }
}

/// A raw key as readable text, quoted: UTF-8 with control characters escaped (`"m\u{0}..."`),
/// or byte-escaped where it is not UTF-8 (`"c\xff..."`), so a dropped key is printed once and
/// can be told apart from its neighbours.
pub fn describe_key(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => format!("\"{}\"", text.escape_debug()),
        Err(_) => format!("\"{}\"", bytes.escape_ascii()),
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Meta => f.write_str("the store's meta record"),
            Key::Types => f.write_str("the store's table of usage types"),
            Key::Credit { user_id } => write!(f, "credit of user {user_id:?}"),
            Key::Keys { user_id } => write!(f, "idempotency keys of user {user_id:?}"),
            Key::Month { user_id, month } => {
                write!(f, "month {} of user {user_id:?}", month.label())
            }
        }
    }
}

/// The usage type names month records refer to, by index (append-only).
#[derive(Clone, Debug, Default)]
pub struct TypeTable {
    names: Vec<String>,
    index: std::collections::HashMap<String, u32>,
}

impl TypeTable {
    pub fn from_names(names: Vec<String>) -> TypeTable {
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        TypeTable { names, index }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    fn index_of(&mut self, name: &str) -> u32 {
        if let Some(&index) = self.index.get(name) {
            return index;
        }
        let index = u32::try_from(self.names.len()).expect("fewer than 2^32 usage types");
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), index);
        index
    }
}

fn keyed_checksum(key: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(body);
    hasher.finalize()
}

/// Appends values in the record layout.
struct Writer(Vec<u8>);

impl Writer {
    fn new() -> Writer {
        Writer(FORMAT_VERSION.to_le_bytes().to_vec())
    }
    fn varint(&mut self, mut v: u128) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(byte);
                return;
            }
            self.0.push(byte | 0x80);
        }
    }
    fn money(&mut self, v: Money) {
        let a = v.attocents();
        self.varint(((a << 1) ^ (a >> 127)) as u128); // zigzag: small magnitudes stay short
    }
    fn signed(&mut self, v: i64) {
        self.varint(u128::from(((v << 1) ^ (v >> 63)) as u64)); // zigzag
    }
    fn text(&mut self, v: &str) {
        self.varint(v.len() as u128);
        self.0.extend_from_slice(v.as_bytes());
    }
    fn record(&mut self, record: &RecordImage, types: &mut TypeTable) {
        self.money(record.total);
        self.varint(u128::from(record.count));
        self.varint(record.by_type.len() as u128);
        for (name, counter) in &record.by_type {
            self.varint(u128::from(types.index_of(name)));
            self.varint(counter.units);
            self.money(counter.cost);
            self.varint(u128::from(counter.count));
        }
    }
    /// Appends the checksum of the record *and its key*, so a record that moved to another key
    /// (a damaged key byte) fails its checksum instead of loading as someone else's usage.
    fn finish(mut self, key: &[u8]) -> Vec<u8> {
        let checksum = keyed_checksum(key, &self.0);
        self.0.extend_from_slice(&checksum.to_le_bytes());
        self.0
    }
}

/// Reads values in the record layout, refusing anything out of bounds.
struct Reader<'a> {
    bytes: &'a [u8],
    version: u16,
}

impl<'a> Reader<'a> {
    /// Checks version and checksum; the reader then covers the payload only.
    fn open(bytes: &'a [u8], key: &[u8]) -> Result<Reader<'a>, DecodeError> {
        if bytes.len() < 6 {
            return Err(DecodeError::Corrupted("record is truncated".into()));
        }
        let (body, checksum) = bytes.split_at(bytes.len() - 4);
        let version = u16::from_le_bytes([body[0], body[1]]);
        if keyed_checksum(key, body) != u32::from_le_bytes(checksum.try_into().expect("4 bytes")) {
            return Err(DecodeError::Corrupted("checksum mismatch".into()));
        }
        if version > FORMAT_VERSION {
            return Err(DecodeError::NewerVersion(version));
        }
        if version < OLDEST_READABLE_VERSION {
            return Err(DecodeError::Corrupted(format!(
                "unknown format version {version}"
            )));
        }
        Ok(Reader {
            bytes: &body[2..],
            version,
        })
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.bytes.len() {
            return Err(DecodeError::Corrupted(
                "record is shorter than its lengths say".into(),
            ));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn varint(&mut self) -> Result<u128, DecodeError> {
        let mut value = 0u128;
        for shift in (0..128).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u128::from(byte & 0x7f)
                .checked_shl(shift)
                .filter(|_| shift < 126 || byte < 4)
                .ok_or_else(|| DecodeError::Corrupted("number too large".into()))?;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Corrupted("number too long".into()))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        u64::try_from(self.varint()?).map_err(|_| DecodeError::Corrupted("number too large".into()))
    }
    fn money(&mut self) -> Result<Money, DecodeError> {
        let z = self.varint()?;
        let attocents = ((z >> 1) as i128) ^ -((z & 1) as i128);
        // `u128::MAX` decodes to `i128::MIN`, whose `abs()` in `Money::from_attocents` overflows
        // (a panic in a debug build, a wrapped value accepted in release): found by
        // `make fuzz-codec`.
        attocents
            .checked_abs()
            .and_then(|_| Money::from_attocents(attocents))
            .ok_or_else(|| DecodeError::Corrupted("amount out of range".into()))
    }
    fn len(&mut self) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        // Every element takes at least one byte: a larger count is a corrupted length.
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.bytes.len())
            .ok_or_else(|| DecodeError::Corrupted("length larger than the record".into()))
    }
    fn text(&mut self) -> Result<String, DecodeError> {
        let len = self.len()?;
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| DecodeError::Corrupted("name is not UTF-8".into()))
    }
    fn record(&mut self, types: &[String]) -> Result<RecordImage, DecodeError> {
        let total = self.money()?;
        let count = self.u64()?;
        let entries = self.len()?;
        let mut by_type = Vec::with_capacity(entries);
        for _ in 0..entries {
            let name = self.type_name(types)?;
            let counter = UsageCounter {
                units: self.varint()?,
                cost: self.money()?,
                count: self.u64()?,
            };
            by_type.push((name, counter));
        }
        Ok(RecordImage {
            total,
            count,
            by_type,
        })
    }
    fn holds(&mut self) -> Result<Vec<Hold>, DecodeError> {
        let count = self.len()?;
        // The outstanding holds, then the finished ones (`ledger::holds::FINISHED_BIT`).
        // and the email flag (`EMAIL_SEEN_ID`).
        if count > MAX_HOLDS_PER_USER + MAX_FINISHED_PER_USER + 1 {
            return Err(DecodeError::Corrupted(
                "more holds than a user may have".into(),
            ));
        }
        let mut holds = Vec::with_capacity(count);
        for _ in 0..count {
            let id = self.u64()?;
            let amount = self.money()?;
            let zigzag = self.u64()?;
            let expires_ms = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
            if amount.is_negative() || !amount.fits_record() || id == u64::MAX {
                return Err(DecodeError::Corrupted("hold out of range".into()));
            }
            holds.push(Hold {
                id,
                amount,
                expires_ms,
            });
        }
        Ok(holds)
    }
    /// A month's per-day figures (version 3). Days are bounded here; that they add up to the
    /// month is `MonthImage::check`'s (every loader runs it).
    fn days(&mut self, types: &[String]) -> Result<DayImages, DecodeError> {
        let entries = self.len()?;
        let mut days = Vec::with_capacity(entries);
        for _ in 0..entries {
            let day = u8::try_from(self.varint()?)
                .ok()
                .filter(|day| *day <= days::LAST_DAY)
                .ok_or_else(|| DecodeError::Corrupted("a day beyond 31".into()))?;
            let name = self.type_name(types)?;
            let counter = UsageCounter {
                units: self.varint()?,
                cost: self.money()?,
                count: self.u64()?,
            };
            days.push((day, name, counter));
        }
        Ok(days)
    }
    fn type_name(&mut self, types: &[String]) -> Result<String, DecodeError> {
        let index = self.u64()?;
        usize::try_from(index)
            .ok()
            .and_then(|i| types.get(i))
            .cloned()
            .ok_or_else(|| {
                DecodeError::Corrupted(format!("usage type #{index} is not in the type table"))
            })
    }
    fn end(self) -> Result<(), DecodeError> {
        match self.bytes.is_empty() {
            true => Ok(()),
            false => Err(DecodeError::Corrupted(
                "trailing bytes after the record".into(),
            )),
        }
    }
}

pub fn encode_meta(meta: &Meta) -> Vec<u8> {
    let mut w = Writer::new();
    w.varint(u128::from(meta.generation));
    w.varint(u128::from(meta.records));
    w.finish(META_KEY)
}

pub fn decode_meta(bytes: &[u8]) -> Result<Meta, DecodeError> {
    let mut r = Reader::open(bytes, META_KEY)?;
    let meta = Meta {
        generation: r.u64()?,
        records: r.u64()?,
    };
    r.end().map(|()| meta)
}

/// What a user's credit record keeps.
pub type CreditRecord = (Credit, Option<StoredPlan>, Vec<Hold>);

/// A user's record: lifetime purchased credit; since version 2 the plan the user was last
/// resolved to (`[0]` for none, `[1][id][allowance]`); since version 3 the outstanding holds
/// (`[count]` then `[id][amount][expiry ms]` each), followed by the finished ones as holds of
/// nothing with the id's top bit set and whether an email was seen for the user, as an entry of
/// its own (`ledger::holds`, `FINISHED_BIT` and `EMAIL_SEEN_ID`).
pub fn encode_credit(
    key: &[u8],
    credit: &Credit,
    plan: Option<&StoredPlan>,
    holds: &[Hold],
) -> Vec<u8> {
    let mut w = Writer::new();
    w.money(credit.purchased);
    w.money(credit.consumed);
    match plan {
        None => w.varint(0),
        Some((id, allowance)) => {
            w.varint(1);
            w.text(id);
            w.money(*allowance);
        }
    }
    w.varint(holds.len() as u128);
    for hold in holds {
        w.varint(u128::from(hold.id));
        w.money(hold.amount);
        w.signed(hold.expires_ms);
    }
    w.finish(key)
}

pub fn decode_credit(key: &[u8], bytes: &[u8]) -> Result<CreditRecord, DecodeError> {
    let mut r = Reader::open(bytes, key)?;
    let credit = Credit {
        purchased: r.money()?,
        consumed: r.money()?,
    };
    let plan = match r.version {
        1 => None, // written before plans were kept
        _ => match r.varint()? {
            0 => None,
            1 => {
                let id = r.text()?;
                let allowance = r.money()?;
                if allowance.is_negative() || !allowance.fits_record() {
                    return Err(DecodeError::Corrupted("plan allowance out of range".into()));
                }
                Some((id, allowance))
            }
            other => return Err(DecodeError::Corrupted(format!("unknown plan tag {other}"))),
        },
    };
    let holds = match r.version {
        1 | 2 => Vec::new(), // written before holds were kept
        _ => r.holds()?,
    };
    r.end().map(|()| (credit, plan, holds))
}

/// A user's idempotency keys: `[count]` then per key `[key text][16-byte fingerprint]
/// [keep-until epoch ms, zigzag][total][cost]`.
pub fn encode_keys(key: &[u8], keys: &[KeyImage]) -> Vec<u8> {
    let mut w = Writer::new();
    w.varint(keys.len() as u128);
    for image in keys {
        w.text(&image.key);
        w.0.extend_from_slice(&image.fingerprint);
        let ms = image.keep_until_ms;
        w.varint(u128::from(((ms << 1) ^ (ms >> 63)) as u64));
        w.money(image.outcome.total);
        w.money(image.outcome.cost);
    }
    w.finish(key)
}

pub fn decode_keys(key: &[u8], bytes: &[u8]) -> Result<Vec<KeyImage>, DecodeError> {
    let mut r = Reader::open(bytes, key)?;
    let count = r.len()?;
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        let text = r.text()?;
        if text.is_empty() || text.len() > MAX_KEY_BYTES {
            return Err(DecodeError::Corrupted(
                "an idempotency key of a length no call can pass".into(),
            ));
        }
        let fingerprint = r.take(16)?.try_into().expect("16 bytes");
        let zigzag = r.u64()?;
        let keep_until_ms = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
        let outcome = Outcome {
            total: r.money()?,
            cost: r.money()?,
        };
        keys.push(KeyImage {
            key: text,
            fingerprint,
            keep_until_ms,
            outcome,
        });
    }
    r.end().map(|()| keys)
}

pub fn encode_types(types: &TypeTable) -> Vec<u8> {
    let mut w = Writer::new();
    w.varint(types.names.len() as u128);
    for name in &types.names {
        w.text(name);
    }
    w.finish(TYPES_KEY)
}

pub fn decode_types(bytes: &[u8]) -> Result<Vec<String>, DecodeError> {
    let mut r = Reader::open(bytes, TYPES_KEY)?;
    let count = r.len()?;
    let names = (0..count)
        .map(|_| r.text())
        .collect::<Result<Vec<_>, _>>()?;
    r.end().map(|()| names)
}

/// An app record that equals the month's own record (the common single-app user) is stored as
/// a flag instead of a second copy.
const APP_RECORD_FOLLOWS: u128 = 0;
const APP_RECORD_IS_MONTH: u128 = 1;

pub fn encode_month(key: &[u8], month: &MonthImage, types: &mut TypeTable) -> Vec<u8> {
    let mut w = Writer::new();
    w.money(month.pools.allowance_used);
    w.money(month.pools.purchased_consumed);
    w.money(month.pools.overage);
    w.record(&month.usage, types);
    w.varint(month.apps.len() as u128);
    for (app, record) in &month.apps {
        w.text(app);
        if *record == month.usage {
            w.varint(APP_RECORD_IS_MONTH);
        } else {
            w.varint(APP_RECORD_FOLLOWS);
            w.record(record, types);
        }
    }
    w.varint(month.days.len() as u128);
    for (day, name, counter) in &month.days {
        w.varint(u128::from(*day));
        w.varint(u128::from(types.index_of(name)));
        w.varint(counter.units);
        w.money(counter.cost);
        w.varint(u128::from(counter.count));
    }
    w.finish(key)
}

pub fn decode_month(key: &[u8], bytes: &[u8], types: &[String]) -> Result<MonthImage, DecodeError> {
    let mut r = Reader::open(bytes, key)?;
    let pools = MonthPools {
        allowance_used: r.money()?,
        purchased_consumed: r.money()?,
        overage: r.money()?,
    };
    let usage = r.record(types)?;
    let apps_len = r.len()?;
    let mut apps = Vec::with_capacity(apps_len);
    for _ in 0..apps_len {
        let app = r.text()?;
        let record = match r.varint()? {
            APP_RECORD_IS_MONTH => usage.clone(),
            APP_RECORD_FOLLOWS => r.record(types)?,
            other => {
                return Err(DecodeError::Corrupted(format!(
                    "unknown app record tag {other}"
                )))
            }
        };
        apps.push((app, record));
    }
    let days = match r.version >= 3 {
        true => r.days(types)?,
        // Written before per-day figures were kept: the month's figures are undated.
        false => days::undated(&usage.by_type),
    };
    r.end().map(|()| MonthImage {
        usage,
        apps,
        pools,
        days,
    })
}

/// The key/value pairs that store a user image.
pub fn encode_user(user: &UserImage, types: &mut TypeTable) -> Vec<(Vec<u8>, Vec<u8>)> {
    let credit_key = Key::Credit {
        user_id: user.user_id.clone(),
    }
    .encode();
    let credit = encode_credit(&credit_key, &user.credit, user.plan.as_ref(), &user.holds);
    let mut pairs = vec![(credit_key, credit)];
    for (month, image) in &user.months {
        let key = Key::Month {
            user_id: user.user_id.clone(),
            month: *month,
        }
        .encode();
        let value = encode_month(&key, image, types);
        pairs.push((key, value));
    }
    if let Some(keys) = &user.keys {
        let key = Key::Keys {
            user_id: user.user_id.clone(),
        }
        .encode();
        let value = encode_keys(&key, keys);
        pairs.push((key, value));
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_month() -> MonthImage {
        let counter = UsageCounter {
            units: 3,
            cost: Money::from_microcents(189).unwrap(),
            count: 3,
        };
        let record = RecordImage {
            total: counter.cost,
            count: 3,
            by_type: vec![("kv:read".into(), counter)],
        };
        let pools = MonthPools {
            allowance_used: counter.cost,
            ..MonthPools::default()
        };
        let day = |units: u128, microcents: i128| UsageCounter {
            units,
            cost: Money::from_microcents(microcents).unwrap(),
            count: units as u64,
        };
        MonthImage {
            usage: record.clone(),
            apps: vec![("os-global".into(), record)],
            pools,
            days: vec![
                (1, "kv:read".into(), day(1, 63)),
                (30, "kv:read".into(), day(2, 126)),
            ],
        }
    }

    #[test]
    fn records_round_trip() {
        let month = sample_month();
        let mut types = TypeTable::default();
        let bytes = encode_month(b"k", &month, &mut types);
        assert_eq!(decode_month(b"k", &bytes, types.names()).unwrap(), month);
        assert_eq!(decode_types(&encode_types(&types)).unwrap(), types.names());
        let mut two_apps = month.clone();
        two_apps.apps.push(("app-2".into(), RecordImage::default()));
        let bytes = encode_month(b"k", &two_apps, &mut types);
        assert_eq!(decode_month(b"k", &bytes, types.names()).unwrap(), two_apps);
        for value in [
            0,
            1,
            -1,
            i128::from(i64::MAX),
            crate::money::MAX_ABS_ATTOCENTS,
            -crate::money::MAX_ABS_ATTOCENTS,
        ] {
            let credit = Credit {
                purchased: Money::from_attocents(value).unwrap(),
                consumed: Money::ZERO,
            };
            assert_eq!(
                decode_credit(b"k", &encode_credit(b"k", &credit, None, &[])).unwrap(),
                (credit, None, vec![])
            );
        }
        let credit = Credit {
            purchased: Money::from_microcents(7).unwrap(),
            consumed: Money::ZERO,
        };
        let plan: StoredPlan = (
            "pro ü".into(),
            Money::from_microcents(2_000_000_000).unwrap(),
        );
        let holds = vec![
            Hold {
                id: 1,
                amount: Money::from_microcents(5_000).unwrap(),
                expires_ms: 1_790_000_000_000,
            },
            Hold {
                id: 1 << 40,
                amount: Money::ZERO,
                expires_ms: -1,
            },
        ];
        let bytes = encode_credit(b"k", &credit, Some(&plan), &holds);
        assert_eq!(
            decode_credit(b"k", &bytes).unwrap(),
            (credit, Some(plan), holds)
        );
        let meta = Meta {
            generation: 9,
            records: 4,
        };
        assert_eq!(decode_meta(&encode_meta(&meta)).unwrap(), meta);
        let key = Key::Month {
            user_id: "ü/1".into(),
            month: MonthId(24_000),
        };
        assert_eq!(Key::decode(&key.encode()).unwrap(), key);
        assert_eq!(Key::decode(META_KEY).unwrap(), Key::Meta);
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_refused() {
        let mut types = TypeTable::default();
        let bytes = encode_month(b"k", &sample_month(), &mut types);
        let decode_month = |b: &[u8]| decode_month(b"k", b, types.names());
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[at] ^= 1 << bit;
                assert!(
                    decode_month(&flipped).is_err(),
                    "flip at {at} bit {bit} accepted"
                );
            }
        }
        for len in 0..bytes.len() {
            assert!(
                decode_month(&bytes[..len]).is_err(),
                "truncation to {len} accepted"
            );
        }
    }

    #[test]
    fn a_version_1_credit_record_still_loads_without_a_plan() {
        // Version 1's layout: [1u16][purchased][consumed][CRC32 of key and body].
        let mut body = 1u16.to_le_bytes().to_vec();
        body.extend_from_slice(&[14, 0]); // zigzag varints: 7 attocents purchased, 0 consumed
        let checksum = keyed_checksum(b"k", &body);
        body.extend_from_slice(&checksum.to_le_bytes());
        let credit = Credit {
            purchased: Money::from_attocents(7).unwrap(),
            consumed: Money::ZERO,
        };
        assert_eq!(decode_credit(b"k", &body).unwrap(), (credit, None, vec![]));
        // The same bytes as version 2 lack the plan tag: refused as truncated.
        let mut v2 = 2u16.to_le_bytes().to_vec();
        v2.extend_from_slice(&[14, 0]);
        let checksum = keyed_checksum(b"k", &v2);
        v2.extend_from_slice(&checksum.to_le_bytes());
        assert!(decode_credit(b"k", &v2).is_err());
    }

    /// `bytes` (a record under key `k`) as version `version`, without its last `cut` body bytes.
    fn as_version(bytes: &[u8], version: u16, cut: usize) -> Vec<u8> {
        let mut body = bytes[..bytes.len() - 4 - cut].to_vec();
        body[..2].copy_from_slice(&version.to_le_bytes());
        let checksum = keyed_checksum(b"k", &body);
        body.extend_from_slice(&checksum.to_le_bytes());
        body
    }

    #[test]
    fn a_version_2_month_record_loads_with_its_figures_undated() {
        // Version 2's month layout is version 3's without the days: encode no days (one byte,
        // the count 0) and cut that byte.
        let month = MonthImage {
            days: Vec::new(),
            ..sample_month()
        };
        let mut types = TypeTable::default();
        let v2 = as_version(&encode_month(b"k", &month, &mut types), 2, 1);
        let loaded = decode_month(b"k", &v2, types.names()).unwrap();
        let undated = vec![(
            days::UNDATED,
            "kv:read".to_string(),
            month.usage.by_type[0].1,
        )];
        assert_eq!(loaded.days, undated);
        assert_eq!(loaded.usage, month.usage);
        loaded.check().unwrap();
        // Written again, it keeps them undated (as version 3).
        let again = encode_month(b"k", &loaded, &mut types);
        assert_eq!(decode_month(b"k", &again, types.names()).unwrap(), loaded);
        // Version 3 bytes read as version 2 have bytes left over: refused.
        let full = encode_month(b"k", &sample_month(), &mut types);
        assert!(decode_month(b"k", &as_version(&full, 2, 0), types.names()).is_err());
    }

    #[test]
    fn days_that_do_not_add_up_or_are_not_days_are_refused() {
        let mut types = TypeTable::default();
        let good = sample_month();
        good.check().unwrap();
        let decoded = |month: &MonthImage, types: &mut TypeTable| {
            let bytes = encode_month(b"k", month, types);
            decode_month(b"k", &bytes, types.names())
        };
        let mut more = good.clone();
        more.days[1].2.units += 1;
        let error = decoded(&more, &mut types).unwrap().check().unwrap_err();
        assert!(error.contains("do not add up"), "{error}");
        let mut missing = good.clone();
        missing.days.pop();
        assert!(decoded(&missing, &mut types).unwrap().check().is_err());
        let mut stranger = good.clone();
        stranger
            .days
            .push((30, "other".into(), UsageCounter::default()));
        let error = decoded(&stranger, &mut types).unwrap().check().unwrap_err();
        assert!(error.contains("does not have"), "{error}");
        let mut unsorted = good.clone();
        unsorted.days.swap(0, 1);
        let error = decoded(&unsorted, &mut types).unwrap().check().unwrap_err();
        assert!(error.contains("not sorted"), "{error}");
        let mut day_32 = good.clone();
        day_32.days[1].0 = 32;
        assert_eq!(
            decoded(&day_32, &mut types),
            Err(DecodeError::Corrupted("a day beyond 31".into()))
        );
    }

    #[test]
    fn keys_records_round_trip_and_refuse_damage() {
        let keys = vec![
            KeyImage {
                key: "req-1".into(),
                fingerprint: [7; 16],
                keep_until_ms: 1_793_491_200_000,
                outcome: Outcome {
                    total: Money::from_microcents(125).unwrap(),
                    cost: Money::from_microcents(-63).unwrap(),
                },
            },
            KeyImage {
                key: "usagemeter:monthly:2026-11".into(),
                fingerprint: [0; 16],
                keep_until_ms: -5,
                outcome: Outcome::default(),
            },
        ];
        let key = Key::Keys {
            user_id: "ü".into(),
        }
        .encode();
        assert_eq!(
            Key::decode(&key).unwrap(),
            Key::Keys {
                user_id: "ü".into()
            }
        );
        let bytes = encode_keys(&key, &keys);
        assert_eq!(decode_keys(&key, &bytes).unwrap(), keys);
        assert_eq!(decode_keys(&key, &encode_keys(&key, &[])).unwrap(), vec![]);
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 1;
            assert!(
                decode_keys(&key, &flipped).is_err(),
                "flip at {at} accepted"
            );
        }
        for len in 0..bytes.len() {
            assert!(decode_keys(&key, &bytes[..len]).is_err());
        }
    }

    #[test]
    fn a_record_under_another_key_is_refused() {
        let credit = Credit {
            purchased: Money::from_microcents(7).unwrap(),
            consumed: Money::ZERO,
        };
        let value = encode_credit(b"cknown-17", &credit, None, &[]);
        assert!(decode_credit(b"cknown-17", &value).is_ok());
        assert!(decode_credit(b"cknown-16", &value).is_err());
    }

    #[test]
    fn the_most_negative_amount_is_refused_not_a_panic() {
        // Zigzag u128::MAX is i128::MIN: out of range, and its absolute value overflows.
        let mut w = Writer::new();
        w.varint(u128::MAX);
        w.money(Money::ZERO);
        let bytes = w.finish(b"cknown-17");
        assert_eq!(
            decode_credit(b"cknown-17", &bytes),
            Err(DecodeError::Corrupted("amount out of range".into()))
        );
    }

    #[test]
    fn keys_are_described_once_as_text() {
        assert_eq!(describe_key(b"cbob"), r#""cbob""#);
        assert_eq!(describe_key(b"x\x00\n\xc3\xbc"), r#""x\0\nü""#);
        assert_eq!(describe_key(b"c\xff\"a"), r#""c\xff\"a""#);
        for bad in [&b"zzz"[..], b"c\xff", b"m\x00\x00"] {
            let error = Key::decode(bad).unwrap_err().to_string();
            assert!(
                !error.contains('['),
                "the error repeats the key as bytes: {error}"
            );
        }
    }

    #[test]
    fn a_newer_version_is_named() {
        let newer = FORMAT_VERSION + 1;
        let mut bytes = encode_meta(&Meta::default());
        bytes[..2].copy_from_slice(&newer.to_le_bytes());
        let body_len = bytes.len() - 4;
        let checksum = keyed_checksum(META_KEY, &bytes[..body_len]);
        bytes[body_len..].copy_from_slice(&checksum.to_le_bytes());
        assert_eq!(decode_meta(&bytes), Err(DecodeError::NewerVersion(newer)));
    }
}
