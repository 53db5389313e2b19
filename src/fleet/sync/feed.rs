//! The feed: a Redis stream naming the users each write changed and the plans invalidated, read
//! by every worker each round to bring other workers' changes into its replica.

use std::collections::BTreeSet;

use redis::Value;

use super::{Fleet, State};
use crate::fleet::bulk::{corrupted, pairs, text_of};
use crate::fleet::link::Link;
use crate::fleet::record::FEED_KEY;
use crate::store::{StoreError, StoreResult};

impl Fleet {
    pub(super) fn feed_end(&self, link: &mut Link) -> StoreResult<String> {
        let last = link
            .one(
                redis::cmd("XREVRANGE")
                    .arg(FEED_KEY)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1),
            )
            .map_err(|e| self.io(&e))?;
        Ok(match &last {
            Value::Array(entries) => entries
                .first()
                .and_then(|entry| match entry {
                    Value::Array(parts) => parts.first().and_then(text_of),
                    _ => None,
                })
                .unwrap_or_else(|| "0-0".into()),
            _ => "0-0".into(),
        })
    }

    /// Names the changed users (and the invalidations) in the feed, for the other workers.
    pub(super) fn announce(&self, state: &mut State) -> StoreResult<()> {
        let changed = std::mem::take(&mut state.unannounced);
        let invalidations = std::mem::take(&mut state.invalidations);
        if changed.is_empty() && invalidations.is_empty() {
            return Ok(());
        }
        let mut add = redis::cmd("XADD");
        add.arg(FEED_KEY)
            .arg("MAXLEN")
            .arg("~")
            .arg(100_000)
            .arg("*")
            .arg("w")
            .arg(&self.worker);
        for user in &changed {
            add.arg("u").arg(user);
        }
        for user in &invalidations {
            add.arg("i").arg(user);
        }
        state.stats.round_trips += 1;
        state.stats.bytes_sent += add.get_packed_command().len() as u64;
        if let Err(error) = self
            .link(state)
            .and_then(|link| link.one(&add).map_err(|e| self.io(&e)))
        {
            state.invalidations = invalidations;
            state.unannounced = changed;
            return Err(error);
        }
        Ok(())
    }

    /// Reads the feed since the last round: users changed by other workers are read again and
    /// rebased; plan invalidations are applied. If the feed was trimmed past this worker's
    /// position, every user is read again.
    pub(super) fn pull(&self, state: &mut State) -> StoreResult<()> {
        let mut command = redis::cmd("XREAD");
        command
            .arg("COUNT")
            .arg(100_000)
            .arg("STREAMS")
            .arg(FEED_KEY)
            .arg(&state.feed_id);
        let mut first = redis::cmd("XRANGE");
        first.arg(FEED_KEY).arg("-").arg("+").arg("COUNT").arg(1);
        state.stats.round_trips += 1;
        let replies = self
            .link(state)?
            .run(&[first, command])
            .map_err(|e| self.io(&e))?;
        let entry_ids = |value: &Value| -> Vec<(String, Vec<(String, String)>)> {
            let Value::Array(entries) = value else {
                return Vec::new();
            };
            entries
                .iter()
                .filter_map(|entry| match entry {
                    Value::Array(parts) if parts.len() == 2 => {
                        let id = text_of(&parts[0])?;
                        let fields = pairs(&parts[1])
                            .into_iter()
                            .map(|(f, v)| {
                                (
                                    String::from_utf8_lossy(&f).into_owned(),
                                    String::from_utf8_lossy(&v).into_owned(),
                                )
                            })
                            .collect();
                        Some((id, fields))
                    }
                    _ => None,
                })
                .collect()
        };
        let (Some(first), Some(read)) = (replies.first(), replies.get(1)) else {
            return Err(StoreError::Write(format!(
                "the shared ledger answered {} replies to 2 feed commands",
                replies.len()
            )));
        };
        let oldest = entry_ids(first).into_iter().next().map(|(id, _)| id);
        let entries = match read {
            // {stream: entries} (RESP2: [[stream, entries]]).
            Value::Array(streams) => streams
                .iter()
                .flat_map(|s| match s {
                    Value::Array(parts) if parts.len() == 2 => entry_ids(&parts[1]),
                    _ => Vec::new(),
                })
                .collect(),
            Value::Map(streams) => streams.iter().flat_map(|(_, e)| entry_ids(e)).collect(),
            _ => Vec::new(),
        };
        // The oldest entry kept is after the last one read: that one was trimmed, and entries
        // between may have been too.
        let trimmed = match &oldest {
            Some(oldest) => state.feed_id != "0-0" && stream_id_after(oldest, &state.feed_id),
            None => false,
        };
        let mut users: BTreeSet<String> = BTreeSet::new();
        for (id, fields) in &entries {
            state.feed_id.clone_from(id);
            let from_me = fields.iter().any(|(f, v)| f == "w" && v == &self.worker);
            for (field, user) in fields {
                match field.as_str() {
                    "u" if !from_me => {
                        users.insert(user.clone());
                    }
                    "i" if !from_me => (self.on_invalidate)(user),
                    _ => {}
                }
            }
        }
        let users: Vec<String> = match trimmed {
            true => {
                let link = self.link(state)?;
                self.all_users(link)?
            }
            false => users.into_iter().collect(),
        };
        if users.is_empty() {
            return Ok(());
        }
        state.stats.round_trips += 1;
        let link = self.link(state)?;
        let read = self.read_users(link, &users)?;
        for (user, fleet) in read {
            let known = state.known.remove(&user).unwrap_or_default();
            if let Some(why) = self.older_than_read(&user, known.version, fleet.version) {
                state.known.insert(user, known);
                state.rolled_back = Some(why.clone());
                return Err(StoreError::Unavailable(why));
            }
            if fleet.version != known.version {
                let difference = fleet.figures.minus(&known.figures);
                self.ledger
                    .rebase(&user, &difference, fleet.figures.plan.as_ref())
                    .map_err(|why| corrupted(&user, why))?;
            }
            let newer = if fleet.version >= known.version {
                fleet
            } else {
                known
            };
            state.known.insert(user, newer);
        }
        Ok(())
    }
}

/// Whether stream id `a` (`ms-seq`) comes after `b`.
fn stream_id_after(a: &str, b: &str) -> bool {
    let parse = |id: &str| -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    };
    parse(a) > parse(b)
}
