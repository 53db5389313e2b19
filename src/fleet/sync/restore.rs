//! A worker and the shared ledger's identity (`crate::fleet::identity`): checked every round and
//! before every caller's write; a ledger that lost its data restored from the workers' copies;
//! another ledger never written.
//!
//! The restore, as one worker sees it (the rule is in the README, "A wiped or replaced ledger"):
//! 1. the identity is gone (or a user is older than this worker read it): a `ledger_lost` alarm;
//!    the ledger is marked `restoring` (first worker wins) until the server's clock passes a
//!    deadline (3 rounds, at least `MIN_RESTORE_MS`);
//! 2. seeing `restoring`, the worker writes back, once, its copy of every user it knows (its
//!    `known` map: figures, leases, write ids) and the set of users, newest version winning per
//!    user, and the keyed calls it recorded that have not expired (`SET NX`, their remaining
//!    lifetime), then makes no write until the restore ends: callers follow the offline rules;
//! 3. past the deadline a worker marks the ledger `ready`; every worker reads every user again
//!    (the rebase) and goes on, sending what it holds unsent by the usual compare-and-set.

use std::collections::HashMap;

use redis::Value;

use super::{Fleet, State, WRITE_BATCH};
use crate::fleet::bulk::{corrupted, text_of};
use crate::fleet::identity::{self, judge, Identity, Seen, LEDGER_KEY};
use crate::fleet::link::{unavailable, Link};
use crate::fleet::record::{self, USERS_KEY};
use crate::store::{StoreError, StoreResult};

/// The shortest restore phase: every live worker must see it (one round each) and write back.
const MIN_RESTORE_MS: i64 = 1_000;

/// Where a worker stands with the ledger it opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Standing {
    /// Writing to it.
    Ready,
    /// It is being restored; `uploaded` once this worker wrote back its copies.
    Restoring { uploaded: bool },
    /// The address holds another ledger (the message says which): nothing is written, until the
    /// worker is restarted.
    Foreign(String),
}

/// The keyed calls this worker recorded (claim key -> value, expiry on the server's clock), to
/// write back after a wipe so that a retried call is not recorded twice. Pruned of expired ones
/// whenever it doubles.
#[derive(Default)]
pub(super) struct Claims {
    records: HashMap<Vec<u8>, (Vec<u8>, i64)>,
    prune_at: usize,
}

impl Claims {
    pub(super) fn remember(&mut self, claim: Vec<u8>, value: Vec<u8>, expires_ms: i64, now: i64) {
        if self.records.len() >= self.prune_at.max(1024) {
            self.records.retain(|_, (_, expires)| *expires > now);
            self.prune_at = 2 * self.records.len();
        }
        self.records.insert(claim, (value, expires_ms));
    }
}

/// The identity in a `GET` reply (`None`: no identity).
pub(super) fn identity_of(reply: Option<&Value>, url: &str) -> StoreResult<Option<Identity>> {
    let url = crate::redact::redact_url(url);
    match reply {
        None | Some(Value::Nil) => Ok(None),
        Some(Value::ServerError(e)) => Err(StoreError::Unavailable(format!(
            "the shared ledger at {url} cannot be read ({}: {e})",
            e.code()
        ))),
        Some(value) => match text_of(value) {
            Some(text) => Identity::parse(&text).map(Some),
            None => Err(StoreError::Corrupted(format!(
                "the shared ledger's identity ({LEDGER_KEY}) at {url} is not a string"
            ))),
        },
    }
}

/// The identity of the ledger a worker opens: created (`SET NX`: racing first workers agree on
/// one) when there is none, for an empty ledger or one from before identities (a migration:
/// its figures are kept).
pub(super) fn open_identity(link: &mut Link, url: &str) -> StoreResult<Identity> {
    let fresh = Identity::new(super::now_ms());
    let commands = [
        redis::cmd("SET")
            .arg(LEDGER_KEY)
            .arg(fresh.encode())
            .arg("NX")
            .clone(),
        redis::cmd("GET").arg(LEDGER_KEY).clone(),
    ];
    let replies = link.run(&commands).map_err(|e| unavailable(url, &e))?;
    identity_of(replies.get(1), url)?.ok_or_else(|| {
        StoreError::Unavailable(format!(
            "the shared ledger at {} lost its identity ({LEDGER_KEY}) while it was opened",
            crate::redact::redact_url(url)
        ))
    })
}

impl Fleet {
    /// The URL for messages (its password masked).
    fn url(&self) -> String {
        self.shown()
    }

    fn restoring_message(&self) -> String {
        format!(
            "the shared ledger at {} is being restored from its workers' copies (it lost its \
             data): nothing is written to it until the restore ends, in a few seconds; usage is \
             kept in memory, strict spending is refused beyond the leases held, keyed calls \
             record nothing (retry them)",
            self.url()
        )
    }

    fn foreign_message(&self, state: &State, found: &str) -> String {
        format!(
            "the shared ledger at {} is not the one this worker opened (ledger {}, found {found}): \
             nothing is written into it, nor read from it; this worker meters from memory under \
             the offline rules until it is restarted",
            self.url(),
            state.opened.id
        )
    }

    /// Why a caller's write (a keyed call, a lease request) cannot be made now, if it cannot.
    pub(super) fn ready_or_why(&self, state: &State) -> StoreResult<()> {
        match &state.standing {
            Standing::Ready => Ok(()),
            Standing::Restoring { .. } => Err(StoreError::Unavailable(self.restoring_message())),
            Standing::Foreign(message) => Err(StoreError::Unavailable(message.clone())),
        }
    }

    /// The server's clock, for a caller's write, once the identity is the one this worker is
    /// writing; anything else is left to the sync thread, and the write is not made.
    pub(super) fn checked_clock(&self, state: &mut State) -> StoreResult<i64> {
        let (now, seen) = self.clock_and_identity(state)?;
        let opened = &state.opened;
        match judge(&opened.id, opened.generation, false, true, seen.as_ref()) {
            Seen::Mine if state.rolled_back.is_none() => Ok(now),
            _ => Err(StoreError::Unavailable(format!(
                "the shared ledger at {} is not as this worker left it (it lost its data, or \
                 another ledger answers): nothing was written; the sync thread restores it or \
                 stops writing to it",
                self.url()
            ))),
        }
    }

    /// A user read at `found` after this worker had read it at `had`: the ledger lost data (a
    /// version only grows), and the read must not be adopted.
    pub(super) fn older_than_read(&self, user: &str, had: u64, found: u64) -> Option<String> {
        (found < had).then(|| {
            format!(
                "the shared ledger at {} holds user {user:?} at version {found}, older than the \
                 version {had} this worker read: it lost data; nothing of it is adopted",
                self.url()
            )
        })
    }

    /// Brings this worker in line with the identity read (`seen`) before a round writes: `Ok`
    /// to go on, an error while the ledger is restored or when it is another ledger.
    pub(super) fn reconcile(
        &self,
        state: &mut State,
        now: i64,
        mut seen: Option<Identity>,
    ) -> StoreResult<()> {
        for _try in 0..4 {
            if let Standing::Foreign(message) = &state.standing {
                return Err(StoreError::Unavailable(message.clone()));
            }
            let (restoring, uploaded) = match state.standing {
                Standing::Restoring { uploaded } => (true, uploaded),
                _ => (false, false),
            };
            let opened = &state.opened;
            match judge(
                &opened.id,
                opened.generation,
                restoring,
                uploaded,
                seen.as_ref(),
            ) {
                Seen::Mine => match state.rolled_back.take() {
                    None => return Ok(()),
                    Some(why) => {
                        self.alarm_lost(state, &why);
                        self.start_restore(state, now, seen.as_ref())?;
                    }
                },
                Seen::Lost => {
                    let why = match &seen {
                        None => format!(
                            "the shared ledger at {} lost its data (its identity {LEDGER_KEY} is \
                             gone: a FLUSHALL, a restart without persistence, a failover to an \
                             empty replica); nothing of it is adopted",
                            self.url()
                        ),
                        Some(older) => format!(
                            "the shared ledger at {} went back to a copy from before its restore \
                             {} (a backup): nothing of it is adopted",
                            self.url(),
                            older.generation + 1
                        ),
                    };
                    self.alarm_lost(state, &why);
                    self.start_restore(state, now, seen.as_ref())?;
                }
                Seen::Foreign(found) => {
                    let message = self.foreign_message(state, &found);
                    (self.on_alarm)(&message);
                    state.standing = Standing::Foreign(message.clone());
                    return Err(StoreError::Unavailable(message));
                }
                Seen::Restoring {
                    deadline_ms,
                    generation,
                    upload,
                } => {
                    if upload {
                        let why = format!(
                            "the shared ledger at {} lost its data; its workers restore it",
                            self.url()
                        );
                        self.alarm_lost(state, &why);
                        self.upload(state, now)?;
                        state.opened.generation = generation;
                        state.standing = Standing::Restoring { uploaded: true };
                    }
                    if now < deadline_ms {
                        return Err(StoreError::Unavailable(self.restoring_message()));
                    }
                    // Past the deadline: this worker ends it (or another did first).
                    let current = seen.clone().unwrap_or_else(|| state.opened.clone());
                    self.set_if(state, Some(&current), &current.ready())?;
                }
                Seen::Restored { generation, missed } => {
                    let older = self.rebase_all(state)?;
                    if missed {
                        (self.on_alarm)(&format!(
                            "the shared ledger at {} was restored without this worker's copies \
                             (it could not reach it meanwhile): it now reads the restored \
                             ledger; its copies newer than it ({older} users) are lost",
                            self.url()
                        ));
                    }
                    state.opened.generation = generation;
                    state.standing = Standing::Ready;
                    state.rolled_back = None;
                    state.lost_alarmed = false;
                    return Ok(());
                }
            }
            seen = self.read_identity(state)?;
        }
        Err(StoreError::Unavailable(format!(
            "the shared ledger's identity at {} changed under every try; checked again next round",
            self.url()
        )))
    }

    /// Raises the `ledger_lost` alarm of the current loss once.
    fn alarm_lost(&self, state: &mut State, why: &str) {
        if !state.lost_alarmed {
            state.lost_alarmed = true;
            (self.on_alarm)(&format!(
                "{why}; the live workers write back their copies of the ledger (newest copy of \
                 each user wins), and write nothing else until that ends"
            ));
        }
    }

    fn read_identity(&self, state: &mut State) -> StoreResult<Option<Identity>> {
        state.stats.round_trips += 1;
        let get = redis::cmd("GET").arg(LEDGER_KEY).clone();
        let reply = self.link(state)?.one(&get).map_err(|e| self.io(&e))?;
        identity_of(Some(&reply), &self.url())
    }

    /// Marks the ledger as being restored (the next generation of the identity this worker
    /// opened), unless another worker did first; `expected`: the identity read (`None`: gone).
    fn start_restore(
        &self,
        state: &mut State,
        now: i64,
        expected: Option<&Identity>,
    ) -> StoreResult<()> {
        let span = (3 * self.options.interval.as_millis() as i64).max(MIN_RESTORE_MS);
        let base = match expected {
            Some(seen) if seen.generation > state.opened.generation => seen,
            _ => &state.opened,
        };
        let next = Identity {
            id: state.opened.id.clone(),
            ..base.restoring(now + span)
        };
        self.set_if(state, expected, &next)
    }

    /// `SET_IF_SCRIPT`: `to` if the identity is still `expected`.
    fn set_if(
        &self,
        state: &mut State,
        expected: Option<&Identity>,
        to: &Identity,
    ) -> StoreResult<()> {
        let mut script = redis::cmd("EVAL");
        script
            .arg(identity::SET_IF_SCRIPT)
            .arg(1)
            .arg(LEDGER_KEY)
            .arg(expected.map(Identity::encode).unwrap_or_default())
            .arg(to.encode());
        state.stats.round_trips += 1;
        self.link(state)?
            .one(&script)
            .map(|_| ())
            .map_err(|e| self.io(&e))
    }

    /// Writes back this worker's copy of every user it knows (newest version wins:
    /// `identity::RESTORE_SCRIPT`), the set of users, and the keyed calls it recorded.
    fn upload(&self, state: &mut State, now: i64) -> StoreResult<()> {
        let script = identity::restore_script();
        let users: Vec<String> = state.known.keys().cloned().collect();
        for chunk in users.chunks(WRITE_BATCH) {
            let mut commands = Vec::with_capacity(2 * chunk.len());
            for user in chunk {
                let stored = &state.known[user];
                if stored.version == 0 {
                    continue;
                }
                let fields =
                    record::encode_whole(user, stored).map_err(|why| corrupted(user, why))?;
                let mut restore = redis::cmd("EVAL");
                restore
                    .arg(&script)
                    .arg(1)
                    .arg(record::user_key(user))
                    .arg(stored.version);
                for (field, value) in &fields {
                    restore.arg(field).arg(value);
                }
                commands.push(restore);
                commands.push(redis::cmd("SADD").arg(USERS_KEY).arg(user).clone());
            }
            self.send_restore(state, &commands)?;
        }
        let live: Vec<redis::Cmd> = state
            .claims
            .records
            .iter()
            .filter(|(_, (_, expires))| *expires > now)
            .map(|(claim, (value, expires))| {
                redis::cmd("SET")
                    .arg(claim)
                    .arg(value)
                    .arg("PX")
                    .arg(expires - now)
                    .arg("NX")
                    .clone()
            })
            .collect();
        for chunk in live.chunks(WRITE_BATCH) {
            self.send_restore(state, chunk)?;
        }
        Ok(())
    }

    fn send_restore(&self, state: &mut State, commands: &[redis::Cmd]) -> StoreResult<()> {
        state.stats.round_trips += 1;
        for reply in self.link(state)?.run(commands).map_err(|e| self.io(&e))? {
            if let Value::ServerError(e) = reply {
                return Err(StoreError::Write(format!(
                    "the shared ledger at {} refused a restore write: {e}",
                    self.url()
                )));
            }
        }
        Ok(())
    }

    /// After a restore: every user read again and rebased (the feed starts over from its end).
    /// Returns how many users this worker held newer than the restored ledger.
    fn rebase_all(&self, state: &mut State) -> StoreResult<usize> {
        let link = self.link(state)?;
        state.feed_id = self.feed_end(link)?;
        let link = self.link(state)?;
        let mut users = self.all_users(link)?;
        users.extend(state.known.keys().cloned());
        users.sort();
        users.dedup();
        state.stats.round_trips += 1;
        let link = self.link(state)?;
        let read = self.read_users(link, &users)?;
        let mut older = 0;
        for (user, fleet) in read {
            let known = state.known.remove(&user).unwrap_or_default();
            if fleet.version < known.version {
                older += 1;
            }
            let difference = fleet.figures.minus(&known.figures);
            self.ledger
                .rebase(&user, &difference, fleet.figures.plan.as_ref())
                .map_err(|why| corrupted(&user, why))?;
            state.known.insert(user, fleet);
        }
        Ok(older)
    }
}
