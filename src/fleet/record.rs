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
//! Beside the hashes: `usagemeter:users` (a set of user ids, for loading) and
//! `usagemeter:feed` (a stream naming the users each write changed, and plan invalidations).
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
/// cluster slot, so that one script may write both. A cluster hashes a key's first `{tag}` (or
/// the whole key when it has none): the user's key is wrapped in a tag, or, when the user id
/// brings a tag of its own, the name follows it. `None` for the few user ids (with `}` before a
/// `{`, or an empty `{}`) whose slot no other key name can share: a cluster cannot record their
/// keyed calls atomically (a single node can: `cluster` false).
pub fn claim_key(user_id: &str, name: &str, cluster: bool) -> Option<Vec<u8>> {
    let user = user_key(user_id);
    let open = user.iter().position(|&b| b == b'{');
    let close_after = |at: usize| user[at + 1..].iter().position(|&b| b == b'}');
    let key = match open {
        // A tag of its own (non-empty): the slot is the tag's, whatever follows.
        Some(at) if close_after(at).is_some_and(|len| len > 0) => {
            [user.as_slice(), b":k:", name.as_bytes()].concat()
        }
        _ if !user.contains(&b'}') => [b"{".as_slice(), &user, b"}:k:", name.as_bytes()].concat(),
        _ if cluster => return None,
        _ => [b"usagemeter:k:".as_slice(), &user, b":", name.as_bytes()].concat(),
    };
    Some(key)
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
/// `{3, value}` when the key exists: the call was made before, and nothing is written.
pub const SCRIPT: &str = r#"
local key = KEYS[1]
local claim = KEYS[2]
if claim then
  local existing = redis.call('GET', claim)
  if existing then
    return {3, existing}
  end
end
local applied = redis.call('HGET', key, ARGV[2])
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

    #[test]
    fn a_claim_key_shares_its_users_cluster_slot() {
        for user in [
            "alice", "a{b", "a{b}c", "{x}", "a{b}c{d}", "ü}", "a}b{c", "a{}b", "{}",
        ] {
            match claim_key(user, "idem:1", true) {
                Some(claim) => {
                    let user_key = user_key(user);
                    assert_eq!(slot_source(&claim), slot_source(&user_key), "{user}");
                    assert_ne!(claim, user_key);
                }
                // Only ids whose slot no other name can share.
                None => assert!(["ü}", "a}b{c", "a{}b", "{}"].contains(&user), "{user}"),
            }
            assert!(claim_key(user, "idem:1", false).is_some());
        }
    }
}
