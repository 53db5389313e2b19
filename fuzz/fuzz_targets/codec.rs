//! The record codec's decoders on arbitrary bytes: they must refuse, never panic, never allocate
//! what the input only claims. Run with `make fuzz-codec` (`cargo fuzz run codec`).
//!
//! The first byte picks what to do with the rest, so one target reaches every decoder: decode the
//! bytes as they are (as a key, meta, credit, type table or month record), or XOR them onto a
//! valid record first, which gets past the checksum far more often than random bytes do.
#![no_main]

use _core::store::codec::{self, Key, Meta, TypeTable};
use libfuzzer_sys::fuzz_target;

const MONTH_KEY: &[u8] = b"m\x00\x00\x5e\x6cknown-17";

/// A valid month record and the type table it refers to, from the codec's own encoder.
fn sample_month() -> (Vec<u8>, Vec<String>) {
    // Two usage types, two apps (one stored as "same as the month"), pools: every branch.
    use _core::ledger::image::{MonthImage, RecordImage};
    use _core::ledger::pools::MonthPools;
    use _core::ledger::record::UsageCounter;
    use _core::money::Money;
    let counter = |units: u128, microcents: i128| UsageCounter {
        units,
        cost: Money::from_microcents(microcents).expect("small"),
        count: 1,
    };
    let record = RecordImage {
        total: Money::from_microcents(189).expect("small"),
        count: 2,
        by_type: vec![
            ("kv:read".into(), counter(1, 63)),
            ("kv:write".into(), counter(1, 126)),
        ],
    };
    let other = RecordImage {
        total: Money::from_microcents(63).expect("small"),
        count: 1,
        by_type: vec![("kv:read".into(), counter(1, 63))],
    };
    let month = MonthImage {
        usage: record.clone(),
        apps: vec![("os-global".into(), record), ("app-a".into(), other)],
        pools: MonthPools {
            allowance_used: Money::from_microcents(189).expect("small"),
            ..MonthPools::default()
        },
        // The month's figures over two days (format 3).
        days: vec![
            (1, "kv:read".into(), counter(1, 63)),
            (2, "kv:write".into(), counter(1, 126)),
        ],
    };
    let mut types = TypeTable::default();
    let bytes = codec::encode_month(MONTH_KEY, &month, &mut types);
    (bytes, types.names().to_vec())
}

fn xor_onto(base: &[u8], noise: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    for (i, n) in noise.iter().enumerate() {
        if let Some(b) = out.get_mut(i % base.len().max(1)) {
            *b ^= n;
        }
    }
    out
}

/// `payload` as a record of the current format with a checksum that holds for `key`, so the
/// decoders get past the checksum and parse what follows.
fn checksummed(key: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut record = codec::FORMAT_VERSION.to_le_bytes().to_vec();
    record.extend_from_slice(payload);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(&record);
    record.extend_from_slice(&hasher.finalize().to_le_bytes());
    record
}

const CREDIT_KEY: &[u8] = b"cknown-17";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (month, types) = sample_month();
    let decode_month = |bytes: &[u8]| {
        if let Ok(image) = codec::decode_month(MONTH_KEY, bytes, &types) {
            let _ = image.check();
        }
    };
    match mode % 12 {
        0 => {
            let _ = Key::decode(rest);
            let _ = codec::describe_key(rest);
        }
        // The bytes as they are: almost always a checksum mismatch.
        1 => drop(codec::decode_meta(rest)),
        2 => drop(codec::decode_credit(CREDIT_KEY, rest)),
        3 => drop(codec::decode_types(rest)),
        4 => decode_month(rest),
        // The bytes as a payload with a valid checksum: the parsers themselves.
        5 => drop(codec::decode_meta(&checksummed(codec::META_KEY, rest))),
        6 => drop(codec::decode_credit(
            CREDIT_KEY,
            &checksummed(CREDIT_KEY, rest),
        )),
        7 => drop(codec::decode_types(&checksummed(codec::TYPES_KEY, rest))),
        8 => decode_month(&checksummed(MONTH_KEY, rest)),
        // A valid month record with bits flipped, re-checksummed: damage the checksum missed.
        9 => {
            let payload = &month[2..month.len() - 4];
            decode_month(&checksummed(MONTH_KEY, &xor_onto(payload, rest)));
        }
        // The valid record truncated or extended.
        10 => {
            let cut = usize::from(rest.first().copied().unwrap_or(0)) % (month.len() + 1);
            let mut bytes = month[..cut].to_vec();
            bytes.extend_from_slice(rest.get(1..).unwrap_or_default());
            decode_month(&bytes);
        }
        // What decodes re-encodes to a record that decodes the same.
        _ => {
            let meta_record = checksummed(codec::META_KEY, rest);
            if let Ok(meta) = codec::decode_meta(&meta_record) {
                assert_eq!(
                    codec::decode_meta(&codec::encode_meta(&meta)),
                    Ok::<Meta, _>(meta)
                );
            }
            if let Ok(names) = codec::decode_types(&checksummed(codec::TYPES_KEY, rest)) {
                let table = TypeTable::from_names(names.clone());
                assert_eq!(codec::decode_types(&codec::encode_types(&table)), Ok(names));
            }
        }
    }
});
