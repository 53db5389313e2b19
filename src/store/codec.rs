//! The on-disk encoding of records: `[format version u16][payload][CRC32 u32]`, little endian.
//!
//! Hand-written rather than a serde format so the layout is explicit, stable across library
//! versions and strict when read: every length is bounded by the bytes left, trailing bytes and
//! unknown versions are errors.

use crate::ledger::image::{MonthImage, RecordImage, UserImage};
use crate::ledger::month::MonthId;
use crate::ledger::pools::{Credit, MonthPools};
use crate::ledger::record::UsageCounter;
use crate::money::Money;

/// Version of the record layout written by this library.
pub const FORMAT_VERSION: u16 = 1;

/// Key of the store's own record: generation and record count.
pub const META_KEY: &[u8] = b"\x00meta";
const CREDIT_PREFIX: u8 = b'c';
const MONTH_PREFIX: u8 = b'm';

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

/// What a key names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    Meta,
    Credit { user_id: String },
    Month { user_id: String, month: MonthId },
}

impl Key {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Key::Meta => META_KEY.to_vec(),
            Key::Credit { user_id } => [&[CREDIT_PREFIX][..], user_id.as_bytes()].concat(),
            Key::Month { user_id, month } => [
                &[MONTH_PREFIX][..],
                &month.0.to_be_bytes(),
                user_id.as_bytes(),
            ]
            .concat(),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Key, DecodeError> {
        let text = |b: &[u8]| {
            String::from_utf8(b.to_vec())
                .map_err(|_| DecodeError::Corrupted(format!("key {bytes:?} is not UTF-8")))
        };
        match bytes.split_first() {
            _ if bytes == META_KEY => Ok(Key::Meta),
            Some((&CREDIT_PREFIX, user)) if !user.is_empty() => Ok(Key::Credit {
                user_id: text(user)?,
            }),
            Some((&MONTH_PREFIX, rest)) if rest.len() > 4 => {
                let month = MonthId(u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")));
                Ok(Key::Month {
                    user_id: text(&rest[4..])?,
                    month,
                })
            }
            _ => Err(DecodeError::Corrupted(format!("unknown key {bytes:?}"))),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Meta => f.write_str("the store's meta record"),
            Key::Credit { user_id } => write!(f, "credit of user {user_id:?}"),
            Key::Month { user_id, month } => {
                write!(f, "month {} of user {user_id:?}", month.label())
            }
        }
    }
}

/// Appends values in the record layout.
struct Writer(Vec<u8>);

impl Writer {
    fn new() -> Writer {
        Writer(FORMAT_VERSION.to_le_bytes().to_vec())
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u128(&mut self, v: u128) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn money(&mut self, v: Money) {
        self.0.extend_from_slice(&v.attocents().to_le_bytes());
    }
    fn text(&mut self, v: &str) {
        self.u32(u32::try_from(v.len()).expect("names are shorter than 4 GiB"));
        self.0.extend_from_slice(v.as_bytes());
    }
    fn record(&mut self, record: &RecordImage) {
        self.money(record.total);
        self.u64(record.count);
        self.u32(record.by_type.len() as u32);
        for (name, counter) in &record.by_type {
            self.text(name);
            self.u128(counter.units);
            self.money(counter.cost);
            self.u64(counter.count);
        }
    }
    fn finish(mut self) -> Vec<u8> {
        let checksum = crc32fast::hash(&self.0);
        self.0.extend_from_slice(&checksum.to_le_bytes());
        self.0
    }
}

/// Reads values in the record layout, refusing anything out of bounds.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks version and checksum; the reader then covers the payload only.
    fn open(bytes: &'a [u8]) -> Result<Reader<'a>, DecodeError> {
        if bytes.len() < 6 {
            return Err(DecodeError::Corrupted("record is truncated".into()));
        }
        let (body, checksum) = bytes.split_at(bytes.len() - 4);
        let version = u16::from_le_bytes([body[0], body[1]]);
        if crc32fast::hash(body) != u32::from_le_bytes(checksum.try_into().expect("4 bytes")) {
            return Err(DecodeError::Corrupted("checksum mismatch".into()));
        }
        if version > FORMAT_VERSION {
            return Err(DecodeError::NewerVersion(version));
        }
        if version != FORMAT_VERSION {
            return Err(DecodeError::Corrupted(format!(
                "unknown format version {version}"
            )));
        }
        Ok(Reader { bytes: &body[2..] })
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
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn u128(&mut self) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(
            self.take(16)?.try_into().expect("16 bytes"),
        ))
    }
    fn money(&mut self) -> Result<Money, DecodeError> {
        let attocents = i128::from_le_bytes(self.take(16)?.try_into().expect("16 bytes"));
        Money::from_attocents(attocents)
            .ok_or_else(|| DecodeError::Corrupted("amount out of range".into()))
    }
    fn text(&mut self) -> Result<String, DecodeError> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| DecodeError::Corrupted("name is not UTF-8".into()))
    }
    fn count(&mut self) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        // Every element takes at least 4 bytes: a larger count is a corrupted length.
        if n > self.bytes.len() / 4 {
            return Err(DecodeError::Corrupted(
                "element count larger than the record".into(),
            ));
        }
        Ok(n)
    }
    fn record(&mut self) -> Result<RecordImage, DecodeError> {
        let total = self.money()?;
        let count = self.u64()?;
        let types = self.count()?;
        let mut by_type = Vec::with_capacity(types);
        for _ in 0..types {
            let name = self.text()?;
            let counter = UsageCounter {
                units: self.u128()?,
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
    w.u64(meta.generation);
    w.u64(meta.records);
    w.finish()
}

pub fn decode_meta(bytes: &[u8]) -> Result<Meta, DecodeError> {
    let mut r = Reader::open(bytes)?;
    let meta = Meta {
        generation: r.u64()?,
        records: r.u64()?,
    };
    r.end().map(|()| meta)
}

pub fn encode_credit(credit: &Credit) -> Vec<u8> {
    let mut w = Writer::new();
    w.money(credit.purchased);
    w.money(credit.consumed);
    w.finish()
}

pub fn decode_credit(bytes: &[u8]) -> Result<Credit, DecodeError> {
    let mut r = Reader::open(bytes)?;
    let credit = Credit {
        purchased: r.money()?,
        consumed: r.money()?,
    };
    r.end().map(|()| credit)
}

pub fn encode_month(month: &MonthImage) -> Vec<u8> {
    let mut w = Writer::new();
    w.money(month.pools.allowance_used);
    w.money(month.pools.purchased_consumed);
    w.money(month.pools.overage);
    w.record(&month.usage);
    w.u32(month.apps.len() as u32);
    for (app, record) in &month.apps {
        w.text(app);
        w.record(record);
    }
    w.finish()
}

pub fn decode_month(bytes: &[u8]) -> Result<MonthImage, DecodeError> {
    let mut r = Reader::open(bytes)?;
    let pools = MonthPools {
        allowance_used: r.money()?,
        purchased_consumed: r.money()?,
        overage: r.money()?,
    };
    let usage = r.record()?;
    let apps_len = r.count()?;
    let mut apps = Vec::with_capacity(apps_len);
    for _ in 0..apps_len {
        let app = r.text()?;
        apps.push((app, r.record()?));
    }
    r.end().map(|()| MonthImage { usage, apps, pools })
}

/// The key/value pairs that store a user image.
pub fn encode_user(user: &UserImage) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut pairs = vec![(
        Key::Credit {
            user_id: user.user_id.clone(),
        }
        .encode(),
        encode_credit(&user.credit),
    )];
    for (month, image) in &user.months {
        let key = Key::Month {
            user_id: user.user_id.clone(),
            month: *month,
        };
        pairs.push((key.encode(), encode_month(image)));
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
        MonthImage {
            usage: record.clone(),
            apps: vec![("os-global".into(), record)],
            pools,
        }
    }

    #[test]
    fn records_round_trip() {
        let month = sample_month();
        assert_eq!(decode_month(&encode_month(&month)).unwrap(), month);
        let credit = Credit {
            purchased: Money::from_microcents(7).unwrap(),
            consumed: Money::ZERO,
        };
        assert_eq!(decode_credit(&encode_credit(&credit)).unwrap(), credit);
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
        let bytes = encode_month(&sample_month());
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
    fn a_newer_version_is_named() {
        let mut bytes = encode_meta(&Meta::default());
        bytes[0] = 2;
        let body_len = bytes.len() - 4;
        let checksum = crc32fast::hash(&bytes[..body_len]);
        bytes[body_len..].copy_from_slice(&checksum.to_le_bytes());
        assert_eq!(decode_meta(&bytes), Err(DecodeError::NewerVersion(2)));
    }
}
