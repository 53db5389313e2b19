//! Idempotency keys: a call retried with the same key records once and returns the first call's
//! result (Stripe's `Idempotency-Key`).
//!
//! # Where keys live, and why
//! Each user's keys are kept in the user's account (`AccountState::keys`), and a key is checked
//! and recorded under the account's lock, in the same critical section as the charge it guards.
//! The claim is therefore atomic with the charge: there is no "pending" state for a crash or a
//! racing thread to find, a call that fails (bad input, overflow, closed) records no key, and 16
//! threads racing with one key record exactly once. Keys are stored with the user's records in
//! the same snapshot batch (record kind `k` + user id, `store::codec`), so a crash never keeps a
//! key without its charge, nor a charge without its key.
//!
//! # What is remembered
//! The first call's result (`Outcome`: the month total it returned and the cost it booked), and a
//! fingerprint of its payload: a different payload under a live key is refused
//! (`LedgerError::KeyReused`). A `try_*` call refused for want of budget records nothing and
//! keeps no key: its retry is decided again, on the budget at that time. Stripe remembers
//! refusals, but a refusal here is a budget decision, not a side effect: remembering it would
//! only make a retry after a top-up fail, and re-deciding can never record twice.
//!
//! # Memory
//! A key is kept for the window (`KeyLimits::window_ms`, 24 h by default) and then forgotten:
//! a lookup ignores expired keys at once; their memory is reclaimed at the user's next keyed call
//! (at most every 1/16 of the window, so that a user with a steady stream of keys does not scan
//! all of them at every call), when the user is snapshot, and by a sweep of every account when
//! the global bound is reached. Bounds: `per_user` keys per user and `global` in the process;
//! a new key beyond either is refused (`LedgerError::KeyLimit`) rather than an older live key
//! forgotten, since forgetting a live key silently turns a retry into a double charge, while a
//! refusal is visible and changes nothing. Measured cost per key: see `KeyLimits`.
//!
//! # Monthly charges
//! `apply_monthly_charges` claims a reserved key per month (`monthly_key`): callers cannot pass
//! it (`validate_key`), it needs no fingerprint (listeners may answer differently in two racing
//! threads: the first claim wins), it is exempt from the bounds (one per user per month) and is
//! kept until the month is over, whatever the window.

use std::collections::HashMap;

use ring::digest;

use super::month::MonthId;
use crate::error::{LedgerError, LedgerResult};
use crate::money::Money;

/// The longest key accepted, in UTF-8 bytes (Stripe's bound too): a UUID takes 36.
pub const MAX_KEY_BYTES: usize = 255;

/// Keys starting with this are the library's own (the monthly charges'); callers cannot pass them.
pub const RESERVED_KEY_PREFIX: &str = "usagemeter:";

/// A payload's fingerprint: the first 16 bytes of a SHA-256 of its canonical form. A
/// cryptographic hash, because a collision would let a caller who chooses both keys and payloads
/// record a larger charge as the retry of a smaller one; 128 bits keep even a deliberate
/// collision out of reach, and the hash is stable across versions (fingerprints are stored).
pub type Fingerprint = [u8; 16];

/// What the first call of a key returned, replayed to its retries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The figure the call returned: the user's month total (a charge, a refund), or the user's
    /// purchased credit (`update_addon_credit`).
    pub total: Money,
    /// What the call booked: the charge's cost, the refund's (negative), the credit added.
    pub cost: Money,
}

/// A key as stored (`store::codec`): the key, its payload's fingerprint, until when it is kept
/// (epoch ms) and the first call's result. Monthly keys carry an all-zero fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyImage {
    pub key: String,
    pub fingerprint: Fingerprint,
    pub keep_until_ms: i64,
    pub outcome: Outcome,
}

/// How long keys are kept and how many: set once per ledger (`Ledger::with_key_limits`).
///
/// Memory per key, measured (`benches/idempotency.py --memory`: RSS growth over 200,000 UUID keys
/// of 36 characters spread over 1,000 users): 153 bytes, so the default global bound of
/// 1,000,000 keys holds about 150 MB at most (a longer key adds its extra length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyLimits {
    pub window_ms: i64,
    pub per_user: usize,
    pub global: usize,
}

impl Default for KeyLimits {
    fn default() -> Self {
        KeyLimits {
            window_ms: 24 * 3_600_000,
            per_user: 100_000,
            global: 1_000_000,
        }
    }
}

/// Whether a key is a caller's (fingerprinted, bounded, kept for the window) or a month's
/// monthly charges (see the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Caller,
    Monthly,
}

/// A keyed call: its key, its payload's fingerprint and the time on the service's clock.
#[derive(Clone, Copy, Debug)]
pub struct KeyedCall<'a> {
    pub key: &'a str,
    pub fingerprint: Fingerprint,
    pub now_ms: i64,
    pub kind: KeyKind,
}

/// The result of a keyed call: done now, or the first call's result replayed (nothing recorded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keyed<T> {
    Done(T),
    Replayed(Outcome),
}

/// Checks a caller's key: 1 to `MAX_KEY_BYTES` bytes, not in the library's reserved namespace.
pub fn validate_key(key: &str) -> LedgerResult<()> {
    if key.is_empty() {
        return Err(LedgerError::InvalidInput(
            "idempotency_key must be a non-empty string".into(),
        ));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(LedgerError::InvalidInput(format!(
            "idempotency_key must be at most {MAX_KEY_BYTES} bytes (UTF-8), got {}",
            key.len()
        )));
    }
    if key.starts_with(RESERVED_KEY_PREFIX) {
        return Err(LedgerError::InvalidInput(format!(
            "idempotency keys starting with {RESERVED_KEY_PREFIX:?} are reserved for the library"
        )));
    }
    Ok(())
}

/// The reserved key under which a month's monthly charges are claimed.
pub fn monthly_key(month: MonthId) -> String {
    format!("{RESERVED_KEY_PREFIX}monthly:{}", month.label())
}

/// Builds a payload's fingerprint from its parts, each length-prefixed or fixed-width so that no
/// two payloads share a canonical form. The parts are gathered in a buffer (inline up to 128
/// bytes) and hashed once: feeding the digest part by part cost more than the hash itself (a
/// quarter of a keyed retry's time, `perf` on `benches/idempotency.py`), and the lengths are
/// 32-bit so that one usage's payload fits in one SHA-256 block.
pub struct FingerprintBuilder(smallvec::SmallVec<[u8; 128]>);

impl FingerprintBuilder {
    /// Starts a fingerprint of a call of `method` (so one key cannot be reused across methods).
    pub fn new(method: &str) -> FingerprintBuilder {
        let mut builder = FingerprintBuilder(smallvec::SmallVec::new());
        builder.text(method);
        builder
    }

    pub fn text(&mut self, text: &str) -> &mut Self {
        // A text of 4 GiB or more is not a usage type, an app id or a key anyone passes.
        let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0.extend_from_slice(text.as_bytes());
        self
    }

    pub fn number(&mut self, value: u64) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn money(&mut self, value: Option<Money>) -> &mut Self {
        match value {
            None => self.0.push(0),
            Some(money) => {
                self.0.push(1);
                self.0.extend_from_slice(&money.attocents().to_le_bytes());
            }
        }
        self
    }

    pub fn finish(self) -> Fingerprint {
        let digest = digest::digest(&digest::SHA256, &self.0);
        digest.as_ref()[..16]
            .try_into()
            .expect("SHA-256 has 32 bytes")
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    fingerprint: Fingerprint,
    keep_until_ms: i64,
    outcome: Outcome,
    kind: KeyKind,
}

/// One user's keys (boxed in the account: a user without keys pays one word).
#[derive(Debug)]
pub struct UserKeys {
    entries: HashMap<Box<str>, Entry, foldhash::fast::RandomState>,
    /// Caller keys among `entries` (monthly keys are not bounded).
    caller_keys: usize,
    /// The earliest `keep_until_ms` of the entries (`i64::MAX` when there are none): nothing can
    /// be pruned before.
    earliest_expiry_ms: i64,
    /// When a keyed call may prune again (amortizes the scan, see the module's documentation).
    next_prune_ms: i64,
    /// Changed since a snapshot last took them.
    pub dirty: bool,
}

impl Default for UserKeys {
    fn default() -> Self {
        UserKeys {
            entries: HashMap::default(),
            caller_keys: 0,
            earliest_expiry_ms: i64::MAX,
            next_prune_ms: i64::MIN,
            dirty: false,
        }
    }
}

/// What `UserKeys::check` found for a call.
pub enum Found {
    /// The key is live: replay this.
    Replay(Outcome),
    /// No live key: the call may proceed.
    Absent,
}

impl UserKeys {
    /// Looks the call's key up: its result if live with the same payload (or a monthly key, whose
    /// first claim wins), `KeyReused` if live with another payload. Expired keys are absent.
    pub fn check(&self, call: &KeyedCall<'_>) -> LedgerResult<Found> {
        match self.entries.get(call.key) {
            Some(entry) if entry.keep_until_ms > call.now_ms => {
                if call.kind == KeyKind::Caller && entry.fingerprint != call.fingerprint {
                    return Err(LedgerError::KeyReused(format!(
                        "idempotency key {:?} was used by a call with another payload (method, \
                         app or items) within its window: use a new key for a new call",
                        call.key
                    )));
                }
                Ok(Found::Replay(entry.outcome))
            }
            _ => Ok(Found::Absent),
        }
    }

    /// Whether a live key `key` is held (for monthly charges: applied this month).
    pub fn holds(&self, key: &str, now_ms: i64) -> bool {
        matches!(self.entries.get(key), Some(entry) if entry.keep_until_ms > now_ms)
    }

    /// The outcome of a live key.
    pub fn outcome(&self, key: &str, now_ms: i64) -> Option<Outcome> {
        self.entries
            .get(key)
            .filter(|entry| entry.keep_until_ms > now_ms)
            .map(|entry| entry.outcome)
    }

    /// Records a key (its call succeeded). A key already held (expired) is replaced.
    pub fn insert(&mut self, call: &KeyedCall<'_>, keep_until_ms: i64, outcome: Outcome) {
        let entry = Entry {
            fingerprint: call.fingerprint,
            keep_until_ms,
            outcome,
            kind: call.kind,
        };
        if let Some(old) = self.entries.insert(Box::from(call.key), entry) {
            if old.kind == KeyKind::Caller {
                self.caller_keys -= 1;
            }
        }
        if call.kind == KeyKind::Caller {
            self.caller_keys += 1;
        }
        self.earliest_expiry_ms = self.earliest_expiry_ms.min(keep_until_ms);
        self.dirty = true;
    }

    /// Drops the keys expired at `now_ms` if any can be and `force` or the amortization allows;
    /// returns how many caller keys were dropped.
    pub fn prune(&mut self, now_ms: i64, window_ms: i64, force: bool) -> usize {
        if now_ms < self.earliest_expiry_ms || (!force && now_ms < self.next_prune_ms) {
            return 0;
        }
        let before = self.caller_keys;
        let mut earliest = i64::MAX;
        let mut caller_keys = 0;
        self.entries.retain(|_, entry| {
            let live = entry.keep_until_ms > now_ms;
            if live {
                earliest = earliest.min(entry.keep_until_ms);
                caller_keys += usize::from(entry.kind == KeyKind::Caller);
            }
            live
        });
        self.entries.shrink_to_fit();
        self.earliest_expiry_ms = earliest;
        self.caller_keys = caller_keys;
        self.next_prune_ms = now_ms.saturating_add(window_ms / 16);
        self.dirty = true;
        before - caller_keys
    }

    /// Caller keys held (live or not yet pruned).
    pub fn caller_keys(&self) -> usize {
        self.caller_keys
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The keys as stored, sorted (so a snapshot's bytes do not depend on hashing).
    pub fn images(&self) -> Vec<KeyImage> {
        let mut images: Vec<KeyImage> = self
            .entries
            .iter()
            .map(|(key, entry)| KeyImage {
                key: key.to_string(),
                fingerprint: entry.fingerprint,
                keep_until_ms: entry.keep_until_ms,
                outcome: entry.outcome,
            })
            .collect();
        images.sort_by(|a, b| a.key.cmp(&b.key));
        images
    }

    /// Keys loaded from a store.
    pub fn from_images(images: Vec<KeyImage>) -> UserKeys {
        let mut keys = UserKeys::default();
        for image in images {
            let kind = match image.key.starts_with(RESERVED_KEY_PREFIX) {
                true => KeyKind::Monthly,
                false => KeyKind::Caller,
            };
            let call = KeyedCall {
                key: &image.key,
                fingerprint: image.fingerprint,
                now_ms: 0,
                kind,
            };
            keys.insert(&call, image.keep_until_ms, image.outcome);
        }
        keys.dirty = false;
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(key: &str, fingerprint: u8, now_ms: i64) -> KeyedCall<'_> {
        KeyedCall {
            key,
            fingerprint: [fingerprint; 16],
            now_ms,
            kind: KeyKind::Caller,
        }
    }

    fn outcome(total: i128) -> Outcome {
        Outcome {
            total: Money::from_microcents(total).unwrap(),
            cost: Money::ZERO,
        }
    }

    #[test]
    fn a_live_key_replays_and_refuses_another_payload() {
        let mut keys = UserKeys::default();
        assert!(matches!(keys.check(&call("a", 1, 0)), Ok(Found::Absent)));
        keys.insert(&call("a", 1, 0), 100, outcome(7));
        assert!(matches!(keys.check(&call("a", 1, 99)), Ok(Found::Replay(o)) if o == outcome(7)));
        assert!(matches!(
            keys.check(&call("a", 2, 99)),
            Err(LedgerError::KeyReused(_))
        ));
        // Expired: absent, whatever the payload, even before it is pruned.
        assert!(matches!(keys.check(&call("a", 2, 100)), Ok(Found::Absent)));
        assert_eq!(keys.caller_keys(), 1);
    }

    #[test]
    fn pruning_drops_only_expired_keys_and_is_amortized() {
        let mut keys = UserKeys::default();
        keys.insert(&call("a", 1, 0), 100, outcome(1));
        keys.insert(&call("b", 1, 0), 200, outcome(2));
        let monthly = KeyedCall {
            kind: KeyKind::Monthly,
            ..call("usagemeter:monthly:2026-10", 0, 0)
        };
        keys.insert(&monthly, 150, outcome(3));
        assert_eq!(keys.caller_keys(), 2);
        assert_eq!(keys.prune(99, 16_000, false), 0);
        assert_eq!(keys.prune(100, 16_000, false), 1);
        assert!(keys.holds("b", 100) && keys.holds("usagemeter:monthly:2026-10", 100));
        // The next scan waits a sixteenth of the window, unless forced.
        assert_eq!(keys.prune(250, 16_000, false), 0);
        assert_eq!(keys.prune(250, 16_000, true), 1);
        assert!(keys.is_empty());
    }

    #[test]
    fn fingerprints_tell_payloads_apart() {
        let of = |method: &str, texts: &[&str], n: u64| {
            let mut builder = FingerprintBuilder::new(method);
            for text in texts {
                builder.text(text);
            }
            builder.number(n);
            builder.finish()
        };
        assert_eq!(of("m", &["a", "b"], 1), of("m", &["a", "b"], 1));
        assert_ne!(of("m", &["ab"], 1), of("m", &["a", "b"], 1));
        assert_ne!(of("m", &["a"], 1), of("n", &["a"], 1));
        assert_ne!(of("m", &["a"], 1), of("m", &["a"], 2));
    }

    #[test]
    fn keys_are_validated() {
        validate_key("9f1c-uuid").unwrap();
        validate_key(&"x".repeat(MAX_KEY_BYTES)).unwrap();
        for bad in [
            String::new(),
            "x".repeat(MAX_KEY_BYTES + 1),
            monthly_key(MonthId(24_000)),
        ] {
            assert!(validate_key(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn images_round_trip() {
        let mut keys = UserKeys::default();
        keys.insert(&call("b", 1, 0), 100, outcome(1));
        keys.insert(&call("a", 2, 0), 200, outcome(2));
        let images = keys.images();
        assert_eq!(images[0].key, "a");
        let loaded = UserKeys::from_images(images.clone());
        assert_eq!(loaded.images(), images);
        assert!(!loaded.dirty);
        assert_eq!(loaded.caller_keys(), 2);
    }
}
