//! How one user is kept in the shared ledger: one Redis hash per user, so that every update of a
//! user is one key (one hash slot in a cluster, whatever the user id):
//!
//! | field | value |
//! |---|---|
//! | `v` | version, bumped by every write (the compare-and-set of `SCRIPT`) |
//! | `t` | the user's usage type names (the month records refer to them by index; append-only) |
//! | `c` | credit and last plan, as the embedded stores encode them (`codec.rs`, checksummed) |
//! | `m:YYYY-MM` | one month, as the embedded stores encode it |
//! | `l:WORKER` | a worker's budget lease: `attocents:month:expiry_ms` |
//! | `s:WORKER` | the last write id applied from a worker: `seq:ms` (retries apply once) |
//!
//! Beside the hashes: `usagemeter:users` (a set of user ids, for loading),
//! `usagemeter:feed` (a stream naming the users each write changed, and plan invalidations), and
//! one string per keyed call, in its user's slot (`claim_key`; older names: `legacy_claim_key`).
//!
//! Every sum is made by the workers in exact integers (Redis's Lua has only doubles); the
//! script only compares the version and the write id, and writes.

use std::collections::HashMap;

use crate::fleet::figures::UserFigures;
use crate::ledger::image::UserImage;
use crate::ledger::month::MonthId;
use crate::money::Money;
use crate::store::codec::{self, Key, TypeTable};

pub const USERS_KEY: &str = "usagemeter:users";
pub const FEED_KEY: &str = "usagemeter:feed";

/// A hash's fields, or fields to write: (field, value).
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

pub fn user_key(user_id: &str) -> Vec<u8> {
    [b"usagemeter:u:".as_slice(), user_id.as_bytes()].concat()
}

/// The Redis key that records a keyed call of a user (`SCRIPT`'s KEYS[2]): in the user hash's
/// cluster slot, so that one script may write both, and distinct for every (user, key) pair.
///
/// - A user id without `}` keeps the name every usagemeter gave it, `{usagemeter:u:<user>}:k:<key>`:
///   its tag ends at the first `}`, which is the one after the user id, so the name is unique per
///   pair, and its slot is the one of the user's hash (which has no tag: the whole name is hashed).
///   Nothing moves for these ids, whichever version of usagemeter a worker runs.
/// - A user id with a `}` cannot be wrapped in a tag, and its own tag (if any) let two pairs meet
///   before (`x{y}` with key `a:k:b`, and `x{y}:k:a` with `b`: issue 18). Its keys are named
///   `usagemeter:{<slot tag>}:k:<user, `%` and `:` escaped>:<key>`, where the slot tag is the
///   smallest decimal number hashed to the cluster slot of the user's hash (`slot_tag`). The
///   escaped user id holds no `:`, so the first `:` after it ends it: one name per pair.
///
/// The two forms start differently (`{` and `usagemeter:{`), and neither starts as a user's hash
/// (`usagemeter:u:`), the users set, the feed or any other `usagemeter:<word>` key does.
pub fn claim_key(user_id: &str, name: &str) -> Vec<u8> {
    if !user_id.contains('}') {
        return [
            b"{".as_slice(),
            &user_key(user_id),
            b"}:k:",
            name.as_bytes(),
        ]
        .concat();
    }
    let mut key = format!(
        "usagemeter:{{{}}}:k:",
        slot_tag(key_slot(&user_key(user_id)))
    );
    for c in user_id.chars() {
        match c {
            '%' => key.push_str("%25"),
            ':' => key.push_str("%3A"),
            c => key.push(c),
        }
    }
    key.push(':');
    key.push_str(name);
    key.into_bytes()
}

/// The name an older usagemeter (before issue 18) gave a keyed call of a user id with a `}`, when
/// a keyed call may still read it (never write it): `None` for ids without `}` (their name is
/// unchanged), on a cluster for the ids it could not record there, and when another (user, key)
/// pair had the same name (`x{y}` with `a:k:b`, and `x{y}:k:a` with `b`): whose key it holds
/// cannot be told, and a retry of it records again rather than replay another pair's call.
pub fn legacy_claim_key(user_id: &str, name: &str, cluster: bool) -> Option<Vec<u8>> {
    if !user_id.contains('}') {
        return None;
    }
    let (legacy, separator) = older_claim_key(user_id, name, cluster)?;
    // The pairs that could share the name split `user_id + separator + name` elsewhere.
    let joined = format!("{user_id}{separator}{name}");
    // Every occurrence, overlapping ones too (`a:k:k:b` holds two).
    let shared = (0..joined.len())
        .filter(|&at| {
            at != user_id.len() && joined.as_bytes()[at..].starts_with(separator.as_bytes())
        })
        .any(|at| {
            let (other_user, other_name) = (&joined[..at], &joined[at + separator.len()..]);
            other_user.contains('}')
                && !other_name.is_empty()
                && older_claim_key(other_user, other_name, cluster).map(|(k, _)| k)
                    == Some(legacy.clone())
        });
    (!shared).then_some(legacy)
}

/// The older rule for a user id with a `}`, and the separator it put between user and key.
fn older_claim_key(user_id: &str, name: &str, cluster: bool) -> Option<(Vec<u8>, &'static str)> {
    let user = user_key(user_id);
    let open = user.iter().position(|&b| b == b'{');
    let close_after = |at: usize| user[at + 1..].iter().position(|&b| b == b'}');
    match open {
        Some(at) if close_after(at).is_some_and(|len| len > 0) => {
            Some(([user.as_slice(), b":k:", name.as_bytes()].concat(), ":k:"))
        }
        _ if cluster => None,
        _ => Some((
            [b"usagemeter:k:".as_slice(), &user, b":", name.as_bytes()].concat(),
            ":",
        )),
    }
}

/// The cluster slot of a Redis key, as Redis Cluster computes it: CRC16 (XMODEM) of the key's
/// first non-empty `{tag}`, or of the whole key when it has none, modulo 16,384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) & 0x3fff
}

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), the one Redis Cluster uses.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = match crc & 0x8000 {
                0 => crc << 1,
                _ => (crc << 1) ^ 0x1021,
            };
        }
    }
    crc
}

/// The smallest decimal number whose text is hashed to `slot`: a tag without braces for any
/// slot. The table is made once, when a keyed call of a user id with a `}` first needs it
/// (109,758 numbers cover the 16,384 slots).
fn slot_tag(slot: u16) -> u32 {
    static TAGS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![u32::MAX; 16_384];
        let mut left = tags.len();
        let mut number = 0u32;
        while left > 0 {
            let at = usize::from(crc16(number.to_string().as_bytes()) & 0x3fff);
            if tags[at] == u32::MAX {
                tags[at] = number;
                left -= 1;
            }
            number += 1;
        }
        tags
    });
    tags[usize::from(slot & 0x3fff)]
}

/// The compare-and-set of one user. KEYS[1]: the user's hash. ARGV: expected version, this
/// worker's write-id field, write id, now (ms), number of fields to set, the fields and values,
/// then number of fields to delete and the fields. Replies `{0, new version}` when written,
/// `{1, fields}` when this write id was applied before (a retry), `{2, fields}` when the version
/// moved (another worker wrote: merge again and retry).
///
/// With KEYS[2], the write is a keyed call's (an idempotency key, or a month's recurring
/// charges: `claim_key`): it is made only if that key does not exist, and sets it (to the two
/// ARGV after the deletes: its value, and its lifetime in ms) in the same step. Replies
/// `{3, value}` when the key exists: the call was made before, and nothing is written. KEYS[3],
/// if given, is the key's older name (`legacy_claim_key`), read too, if it holds a string.
///
/// Replies `{4, type}` when the user's key is not a hash (another key was written over it).
pub const SCRIPT: &str = r#"
local key = KEYS[1]
local claim = KEYS[2]
local legacy = KEYS[3]
if claim then
  local existing = redis.call('GET', claim)
  if not existing and legacy and redis.call('TYPE', legacy).ok == 'string' then
    existing = redis.call('GET', legacy)
  end
  if existing then
    return {3, existing}
  end
end
local applied = redis.pcall('HGET', key, ARGV[2])
if type(applied) == 'table' and applied.err then
  return {4, redis.call('TYPE', key).ok}
end
if applied and tonumber(string.match(applied, '^(%d+)')) >= tonumber(ARGV[3]) then
  return {1, redis.call('HGETALL', key)}
end
local version = tonumber(redis.call('HGET', key, 'v') or '0')
if version ~= tonumber(ARGV[1]) then
  return {2, redis.call('HGETALL', key)}
end
local sets = tonumber(ARGV[5])
for i = 0, sets - 1 do
  redis.call('HSET', key, ARGV[6 + 2 * i], ARGV[7 + 2 * i])
end
local at = 6 + 2 * sets
local deletes = tonumber(ARGV[at])
for i = 1, deletes do
  redis.call('HDEL', key, ARGV[at + i])
end
redis.call('HSET', key, ARGV[2], ARGV[3] .. ':' .. ARGV[4], 'v', version + 1)
if claim then
  redis.call('SET', claim, ARGV[at + deletes + 1], 'PX', ARGV[at + deletes + 2])
end
return {0, version + 1}
"#;

/// A budget lease as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredLease {
    pub worker: String,
    pub amount: Money,
    pub month: MonthId,
    pub expires_ms: i64,
}

impl StoredLease {
    pub fn encode(&self) -> String {
        format!(
            "{}:{}:{}",
            self.amount.attocents(),
            self.month.label(),
            self.expires_ms
        )
    }
}

/// One user as read from the shared ledger.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    pub version: u64,
    pub figures: UserFigures,
    pub types: Vec<String>,
    pub leases: Vec<StoredLease>,
    /// Write-id fields: (worker, write id, ms of the write).
    pub writes: Vec<(String, u64, i64)>,
}

impl Stored {
    /// The user as an image (for loading and copying).
    pub fn image(&self, user_id: &str) -> Result<UserImage, String> {
        self.figures.to_image(user_id)
    }
}

fn text(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|_| "a field is not UTF-8".to_string())
}

fn decode_error(e: codec::DecodeError) -> String {
    match e {
        codec::DecodeError::NewerVersion(v) => format!(
            "written by a newer usagemeter (format {v}; this version reads up to {})",
            codec::FORMAT_VERSION
        ),
        codec::DecodeError::Corrupted(why) => why,
    }
}

fn parse_lease(worker: &str, value: &str) -> Result<StoredLease, String> {
    let bad = || format!("lease {worker:?}: cannot read {value:?}");
    let mut parts = value.split(':');
    let amount = parts.next().and_then(|p| p.parse::<i128>().ok());
    let month = parts.next().and_then(MonthId::parse);
    let expires_ms = parts.next().and_then(|p| p.parse::<i64>().ok());
    match (amount.and_then(Money::from_attocents), month, expires_ms) {
        (Some(amount), Some(month), Some(expires_ms)) => Ok(StoredLease {
            worker: worker.to_string(),
            amount,
            month,
            expires_ms,
        }),
        _ => Err(bad()),
    }
}

/// Decodes a user's hash (the field/value pairs of `HGETALL`), verifying every record.
pub fn decode(user_id: &str, pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<Stored, String> {
    let fields: HashMap<&[u8], &[u8]> = pairs
        .iter()
        .map(|(f, v)| (f.as_slice(), v.as_slice()))
        .collect();
    let mut stored = Stored::default();
    if let Some(version) = fields.get(b"v".as_slice()) {
        stored.version = text(version)?
            .parse()
            .map_err(|_| "the version is not a number".to_string())?;
    }
    if let Some(types) = fields.get(b"t".as_slice()) {
        stored.types = codec::decode_types(types).map_err(decode_error)?;
    }
    let mut image = UserImage {
        user_id: user_id.to_string(),
        ..UserImage::default()
    };
    for (field, value) in pairs {
        let field = text(field)?;
        if field == "c" {
            let key = Key::Credit {
                user_id: user_id.to_string(),
            }
            .encode();
            // A worker's holds are kept in its lease, never here: the list is always empty.
            let (credit, plan, _) = codec::decode_credit(&key, value).map_err(decode_error)?;
            image.credit = credit;
            image.plan = plan;
        } else if let Some(label) = field.strip_prefix("m:") {
            let month =
                MonthId::parse(label).ok_or_else(|| format!("bad month field {field:?}"))?;
            let key = Key::Month {
                user_id: user_id.to_string(),
                month,
            }
            .encode();
            let month_image =
                codec::decode_month(&key, value, &stored.types).map_err(decode_error)?;
            month_image
                .check()
                .map_err(|why| format!("month {label}: {why}"))?;
            image.months.push((month, month_image));
        } else if let Some(worker) = field.strip_prefix("l:") {
            stored.leases.push(parse_lease(worker, text(value)?)?);
        } else if let Some(worker) = field.strip_prefix("s:") {
            let mut parts = text(value)?.split(':');
            let id = parts.next().and_then(|id| id.parse().ok()).unwrap_or(0);
            let ms = parts.next().and_then(|ms| ms.parse().ok()).unwrap_or(0);
            stored.writes.push((worker.to_string(), id, ms));
        }
    }
    image.months.sort_by_key(|(month, _)| *month);
    stored.figures = UserFigures::of(&image);
    Ok(stored)
}

/// The fields that write `figures`' credit and `months` (the type table grows as needed).
pub fn encode(
    user_id: &str,
    figures: &UserFigures,
    months: &[MonthId],
    types: &mut TypeTable,
) -> Result<Fields, String> {
    let mut fields = Vec::new();
    let image = figures
        .only_months(months.iter().copied())
        .to_image(user_id)?;
    let credit_key = Key::Credit {
        user_id: user_id.to_string(),
    }
    .encode();
    fields.push((
        b"c".to_vec(),
        codec::encode_credit(&credit_key, &image.credit, image.plan.as_ref(), &[]),
    ));
    let before = types.len();
    for month in months {
        let key = Key::Month {
            user_id: user_id.to_string(),
            month: *month,
        }
        .encode();
        let field = format!("m:{}", month.label()).into_bytes();
        match image.months.iter().find(|(m, _)| m == month) {
            Some((_, month_image)) => {
                fields.push((field, codec::encode_month(&key, month_image, types)))
            }
            // A month the merge emptied (only a manual adjustment back to zero): an empty record.
            None => fields.push((field, codec::encode_month(&key, &Default::default(), types))),
        }
    }
    if types.len() != before || before == 0 {
        fields.push((b"t".to_vec(), codec::encode_types(types)));
    }
    Ok(fields)
}

/// Every field of a user's hash as this worker last read or wrote it (`v`, types, credit, months,
/// leases, write ids): a worker's copy, written back when the shared ledger lost its data.
pub fn encode_whole(user_id: &str, stored: &Stored) -> Result<Fields, String> {
    let mut types = TypeTable::from_names(stored.types.clone());
    let months: Vec<MonthId> = stored.figures.months.keys().copied().collect();
    let mut fields = encode(user_id, &stored.figures, &months, &mut types)?;
    if !fields.iter().any(|(field, _)| field == b"t") {
        fields.push((b"t".to_vec(), codec::encode_types(&types)));
    }
    fields.push((b"v".to_vec(), stored.version.to_string().into_bytes()));
    for lease in &stored.leases {
        let field = format!("l:{}", lease.worker).into_bytes();
        fields.push((field, lease.encode().into_bytes()));
    }
    for (worker, id, ms) in &stored.writes {
        let field = format!("s:{worker}").into_bytes();
        fields.push((field, format!("{id}:{ms}").into_bytes()));
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a Redis Cluster hashes for a key's slot: its first non-empty `{tag}`, else all of it.
    fn slot_source(key: &[u8]) -> &[u8] {
        let Some(open) = key.iter().position(|&b| b == b'{') else {
            return key;
        };
        match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        }
    }

    /// What the cluster hashes: CRC16 of the `{tag}` or of the whole key, on the tag rule of
    /// the Redis Cluster specification (the first `{`, then the first `}` after it, non-empty),
    /// written again here rather than taken from `key_slot`.
    fn spec_slot(key: &[u8]) -> u16 {
        crc16(slot_source(key)) % 16_384
    }

    /// Every claim name is one pair's, in its user's slot, and no other key of the ledger.
    fn check(names: &mut HashMap<Vec<u8>, (String, String)>, user: &str, key: &str) {
        let claim = claim_key(user, key);
        let user_hash = user_key(user);
        assert_eq!(spec_slot(&claim), spec_slot(&user_hash), "{user:?} {key:?}");
        assert_eq!(key_slot(&claim), spec_slot(&claim));
        // No user's hash (they all start so), nor the users set, the feed, the ledger's
        // identity or a layout version (`usagemeter:<word>`).
        assert!(!claim.starts_with(b"usagemeter:u:"), "{user:?} {key:?}");
        assert!(claim.starts_with(b"{usagemeter:u:") || claim.starts_with(b"usagemeter:{"));
        for other in [
            USERS_KEY,
            FEED_KEY,
            "usagemeter:ledger",
            "usagemeter:layout",
        ] {
            assert_ne!(claim, other.as_bytes());
        }
        if let Some(before) = names.insert(claim, (user.to_string(), key.to_string())) {
            assert_eq!(
                before,
                (user.to_string(), key.to_string()),
                "two pairs meet"
            );
        }
    }

    #[test]
    fn crc16_is_redis_clusters() {
        // The specification's check value, and slots `CLUSTER KEYSLOT` gives (Redis 7).
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"foo"), 12_182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), spec_slot(b"foo{}{bar}"));
        for slot in [0, 1, 12_182, 16_383] {
            assert_eq!(key_slot(slot_tag(slot).to_string().as_bytes()), slot);
        }
    }

    #[test]
    fn claim_keys_are_one_pairs_and_in_its_users_slot() {
        // Every user id and key of up to 4 and 3 characters over the characters that matter.
        let alphabet = ['{', '}', ':', 'k', '%', '\0'];
        let strings = |max: usize| {
            let mut all = vec![String::new()];
            let mut last = vec![String::new()];
            for _ in 0..max {
                last = last
                    .iter()
                    .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                    .collect();
                all.extend(last.iter().cloned());
            }
            all
        };
        let (users, keys) = (strings(4), strings(3));
        let mut names = HashMap::new();
        let mut older = [HashMap::new(), HashMap::new()];
        for user in &users {
            for key in keys.iter().filter(|k| !k.is_empty()) {
                check(&mut names, user, key);
                // An older name is read for one pair at most.
                for (cluster, older) in [false, true].into_iter().zip(&mut older) {
                    if let Some(name) = legacy_claim_key(user, key, cluster) {
                        let pair = (user.clone(), key.clone());
                        assert_eq!(
                            older.insert(name, pair.clone()).unwrap_or(pair.clone()),
                            pair
                        );
                    }
                }
            }
        }
        // The examples of issue 18, and longer ids with any Unicode.
        for (user, key) in [
            ("x{y}", "a:k:b"),
            ("x{y}:k:a", "b"),
            ("p{q}", "kk"),
            ("p{q}:k:kk", "kk"),
            ("}{", "k"),
            ("{}", "k"),
            ("a}b{c}", "k"),
            ("🦀{🦀}:k:🦀", "🦀:k:🦀"),
            ("usagemeter:u:x", "k"),
        ] {
            check(&mut names, user, key);
        }
        // A claim never lands on a user's hash (the WRONGTYPE of issue 18).
        for user in &users {
            let hash = user_key(user);
            assert!(!names.contains_key(&hash), "{user:?}");
        }
    }

    #[test]
    fn ids_without_a_closing_brace_keep_their_names() {
        // The names every earlier usagemeter gave them, on a single node and on a cluster.
        for user in ["alice", "a{b", "{x", "ü", "a:k:b"] {
            for cluster in [false, true] {
                assert_eq!(
                    claim_key(user, "idem:1"),
                    format!("{{usagemeter:u:{user}}}:k:idem:1").into_bytes()
                );
                assert_eq!(legacy_claim_key(user, "idem:1", cluster), None);
            }
        }
    }

    #[test]
    fn older_names_are_read_where_an_older_worker_wrote_them() {
        let legacy = |user, cluster| legacy_claim_key(user, "kk", cluster);
        assert_eq!(legacy("p{q}", true).unwrap(), b"usagemeter:u:p{q}:k:kk");
        assert_eq!(
            legacy("a}b", false).unwrap(),
            b"usagemeter:k:usagemeter:u:a}b:kk"
        );
        // On a cluster, an older worker could record no keyed call of these ids.
        for user in ["a}b", "a}b{c", "{}", "a{}b"] {
            assert_eq!(legacy(user, true), None, "{user}");
        }
        // An older name that shares the user's slot, as it did.
        for user in ["x{y}", "x{y}:a", "}{z}"] {
            let name = legacy(user, true).unwrap();
            assert_eq!(spec_slot(&name), spec_slot(&user_key(user)));
        }
        // Two pairs that met: neither reads the name (whose it is cannot be told).
        for (user, key, cluster) in [
            ("x{y}", "a:k:b", true),
            ("x{y}:k:a", "b", true),
            ("a}b", "c:d", false),
            ("a}b:c", "d", false),
        ] {
            assert_eq!(legacy_claim_key(user, key, cluster), None, "{user} {key}");
        }
        // A name only one pair could have had is read, `:k:` in the key or not.
        assert!(legacy_claim_key("x{y}", "a:k:b", false).is_none());
        assert!(legacy_claim_key("x{y}", "a:b", true).is_some());
        assert!(legacy_claim_key("{y}a:k", "b", true).is_none()); // and ("{y}a", "k:b")
        assert!(legacy_claim_key("{y}a", "b:c", true).is_some());
        assert!(legacy_claim_key("a}b", "c{x}:d", false).is_some()); // "a}b:c{x}" has a tag
        assert_eq!(
            claim_key("x{y}:k:a", "b"),
            format!(
                "usagemeter:{{{}}}:k:x{{y}}%3Ak%3Aa:b",
                slot_tag(spec_slot(b"y"))
            )
            .into_bytes()
        );
    }
}
