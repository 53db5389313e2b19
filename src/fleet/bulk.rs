//! Whole-ledger reads and writes of the shared ledger: loading every user when a worker opens,
//! and `usagemeter store copy` between an embedded store and Redis.

use redis::{Cmd, RedisResult, Value};

use super::link::{unavailable, Link};
use super::record::{self, Stored, USERS_KEY};
use crate::ledger::image::UserImage;
use crate::store::codec::TypeTable;
use crate::store::{StoreError, StoreResult};

/// The field/value pairs of an `HGETALL` reply (an array, or a map under RESP3).
pub fn pairs(value: &Value) -> record::Fields {
    let bytes = |v: &Value| match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.clone().into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        _ => Vec::new(),
    };
    match value {
        Value::Array(items) => items
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (bytes(&c[0]), bytes(&c[1])))
            .collect(),
        Value::Map(items) => items.iter().map(|(f, v)| (bytes(f), bytes(v))).collect(),
        _ => Vec::new(),
    }
}

pub fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

pub fn corrupted(user: &str, why: String) -> StoreError {
    StoreError::Corrupted(format!(
        "the shared ledger's record of user {user:?}: {why}"
    ))
}

/// The user's Redis key holds no hash (`kind`: what it holds, as `TYPE` names it, when known):
/// another key was written over it. A damaged record, not a ledger out of reach.
pub fn wrong_type(user: &str, kind: Option<&str>) -> StoreError {
    let key = String::from_utf8_lossy(&record::user_key(user)).into_owned();
    let held = kind
        .map(|kind| format!(" but a {kind}"))
        .unwrap_or_default();
    StoreError::Corrupted(format!(
        "the shared ledger's record of user {user:?} (Redis key {key:?}) is not a hash{held} \
         (WRONGTYPE): another key was written over it (an older usagemeter could write another \
         user's idempotency key there, issue 18), and the user's figures in the shared ledger are \
         lost; the workers keep their own, and their writes of this user fail until the key is \
         deleted (the user is then recorded again from what the workers had not yet sent)"
    ))
}

/// Every user id of the shared ledger, sorted.
pub fn all_users(link: &mut Link) -> RedisResult<Vec<String>> {
    let members = link.one(redis::cmd("SMEMBERS").arg(USERS_KEY))?;
    let mut users: Vec<String> = match &members {
        Value::Array(items) | Value::Set(items) => items.iter().filter_map(text_of).collect(),
        _ => Vec::new(),
    };
    users.sort();
    Ok(users)
}

/// Reads users' hashes, 1,000 per round trip (users with no hash are left out).
pub fn read_users(
    link: &mut Link,
    users: &[String],
    url: &str,
) -> StoreResult<Vec<(String, Stored)>> {
    let mut read = Vec::with_capacity(users.len());
    for chunk in users.chunks(1000) {
        let commands: Vec<Cmd> = chunk
            .iter()
            .map(|user| {
                let mut c = redis::cmd("HGETALL");
                c.arg(record::user_key(user));
                c
            })
            .collect();
        let values = link.run(&commands).map_err(|e| unavailable(url, &e))?;
        for (user, value) in chunk.iter().zip(values) {
            if matches!(&value, Value::ServerError(e) if e.code() == "WRONGTYPE") {
                return Err(wrong_type(user, None));
            }
            let fields = pairs(&value);
            if fields.is_empty() {
                continue;
            }
            let stored = record::decode(user, &fields).map_err(|why| corrupted(user, why))?;
            read.push((user.clone(), stored));
        }
    }
    Ok(read)
}

/// Every user of the shared ledger, verified.
pub fn load(link: &mut Link, url: &str) -> StoreResult<Vec<UserImage>> {
    let users = all_users(link).map_err(|e| unavailable(url, &e))?;
    read_users(link, &users, url)?
        .into_iter()
        .map(|(user, stored)| stored.image(&user).map_err(|why| corrupted(&user, why)))
        .collect()
}

/// Writes `users` into an empty shared ledger (refused if it holds any user: a copy never
/// merges into, nor overwrites, a ledger in use), and gives it its identity
/// (`crate::fleet::identity`) unless it has one: a worker opening it then knows it.
pub fn write_new(link: &mut Link, url: &str, users: &[UserImage]) -> StoreResult<()> {
    let io = |e: redis::RedisError| unavailable(url, &e);
    let existing = all_users(link).map_err(io)?;
    if !existing.is_empty() {
        return Err(StoreError::Other(format!(
            "the shared ledger at {} already holds {} users: copy into an empty one",
            crate::redact::redact_url(url),
            existing.len()
        )));
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    let identity = super::identity::Identity::new(now_ms);
    let mut create = redis::cmd("SET");
    create
        .arg(super::identity::LEDGER_KEY)
        .arg(identity.encode())
        .arg("NX");
    link.one(&create).map_err(io)?;
    for chunk in users.chunks(500) {
        let mut commands = Vec::with_capacity(chunk.len() * 2);
        for user in chunk {
            let figures = super::figures::UserFigures::of(user);
            let months: Vec<_> = figures.months.keys().copied().collect();
            let mut types = TypeTable::from_names(Vec::new());
            let fields = record::encode(&user.user_id, &figures, &months, &mut types)
                .map_err(|why| corrupted(&user.user_id, why))?;
            let mut set = redis::cmd("HSET");
            set.arg(record::user_key(&user.user_id)).arg("v").arg(1);
            for (field, value) in &fields {
                set.arg(field).arg(value);
            }
            commands.push(set);
            let mut add = redis::cmd("SADD");
            add.arg(USERS_KEY).arg(&user.user_id);
            commands.push(add);
        }
        for reply in link.run(&commands).map_err(io)? {
            if let Value::ServerError(e) = reply {
                return Err(StoreError::Write(format!(
                    "{}: a copy write failed: {e}",
                    crate::redact::redact_url(url)
                )));
            }
        }
    }
    Ok(())
}
