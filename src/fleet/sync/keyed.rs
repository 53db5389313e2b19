//! Keyed calls on the shared ledger: a call with an idempotency key, or a month's recurring
//! charges, recorded exactly once across the fleet.
//!
//! A keyed call is not recorded in the worker's ledger first and sent later, as other charges
//! are: two workers could then both record it before either heard of the other. It is written
//! straight to the shared ledger, by the user's compare-and-set script, together with the key
//! that names it (`record::SCRIPT`, KEYS[2]): the script writes neither if the key exists. The
//! worker's ledger learns of the charge as of any other worker's: by the rebase of the fleet's
//! new figures. So a crash can lose neither half alone, and a retry on any worker finds the key.
//!
//! An affordability decision (`try_*` with a key) is made on the figures the write is made
//! against (the compare-and-set retries on newer ones), net of every live lease but this
//! worker's own (budget the other workers may spend without asking), and of this worker's
//! unsent charges and holds, so that it never spends what another worker may.

use redis::Value;

use super::{script_reply, Fleet, State};
use crate::fleet::bulk::{corrupted, pairs, text_of, wrong_type};
use crate::fleet::figures::{merge, UserFigures};
use crate::fleet::record::{self, Stored};
use crate::ledger::month::MonthId;
use crate::ledger::pools;
use crate::ledger::replica::Release;
use crate::money::Money;
use crate::store::codec::TypeTable;
use crate::store::guard::quietly_failing;
use crate::store::{StoreError, StoreResult};

/// One keyed call to record on the shared ledger.
pub struct KeyedWrite<'a> {
    pub user_id: &'a str,
    /// The key's name (`record::claim_key`): unique per user. `None` for a call that has no key
    /// but must still be decided on the shared ledger's figures (a refund without a key).
    pub name: Option<&'a str>,
    /// How long the key is kept (ms).
    pub ttl_ms: i64,
    pub month: MonthId,
    /// The user's monthly allowance (to split the charge over the pools).
    pub allowance: Money,
    /// Whether the call spends only what is free (`try_*`): then its decision is made on what
    /// the fleet has free for the user (see the module), and the lease is given back first.
    pub strict: bool,
    /// The worker's clock (ms), for its holds.
    pub now_ms: i64,
}

/// What a keyed call records, decided on the fleet's figures of the user and what the fleet has
/// free for it (`Money::ZERO` unless `strict`): the charge (counters of the month, purchased
/// credit), `Ok(None)` to refuse it (nothing is written), or why the call is invalid.
pub type Decide<'a> = dyn Fn(&UserFigures, Money) -> Result<Option<UserFigures>, String> + 'a;

/// How a keyed call ended.
#[derive(Debug)]
pub enum Keyed {
    /// Recorded, with its key: the user's figures after it.
    Written(UserFigures),
    /// The key was recorded before: its value (nothing was recorded now).
    Existing(Vec<u8>),
    /// Refused by the decision (not affordable): nothing was recorded, nor the key.
    Refused,
    /// The decision found the call invalid on the fleet's figures (a refund of more than was
    /// charged): nothing was recorded.
    Invalid(String),
}

impl Fleet {
    /// Records `call` on the shared ledger with its key, unless the key exists; the key's value
    /// is `value_of(figures after the call)`. Fails (recording nothing) when the shared ledger
    /// cannot be reached: a keyed call is made there or not at all.
    pub fn keyed_write(
        &self,
        call: &KeyedWrite<'_>,
        decide: &Decide<'_>,
        value_of: &dyn Fn(&UserFigures) -> Vec<u8>,
    ) -> StoreResult<Keyed> {
        let mut state = self.caller_state()?;
        let result = quietly_failing("a keyed write", || {
            self.keyed_locked(&mut state, call, decide, value_of)
        });
        self.caller_done(&mut state, &result);
        // Out of reach before the call's own write was sent: say what that means to the caller.
        result.map_err(|error| match error {
            StoreError::Unavailable(message) => StoreError::Unavailable(format!(
                "{message}: nothing of this call was recorded, retry it"
            )),
            error => error,
        })
    }

    /// Why a keyed call's write has no known outcome: it was sent, and no answer came.
    fn outcome_unknown(&self, call: &KeyedWrite<'_>, error: &redis::RedisError) -> StoreError {
        let what = crate::fleet::link::describe(&self.options.urls.join(","), error);
        StoreError::OutcomeUnknown(match call.name {
            Some(_) => format!(
                "{what}; this call was sent and may have been recorded or not: retry it with the \
                 same idempotency key, which records it at most once"
            ),
            None => format!(
                "{what}; this call was sent and may have been recorded or not: read the user's \
                 figures before retrying it (pass an idempotency key to make a retry safe)"
            ),
        })
    }

    fn keyed_locked(
        &self,
        state: &mut State,
        call: &KeyedWrite<'_>,
        decide: &Decide<'_>,
        value_of: &dyn Fn(&UserFigures) -> Vec<u8>,
    ) -> StoreResult<Keyed> {
        let user = call.user_id;
        let cluster =
            state.link.as_ref().is_some_and(super::Link::is_cluster) || self.options.cluster;
        let claim = call.name.map(|name| record::claim_key(user, name));
        // Where an older worker may have recorded the key (read, never written).
        let legacy = call
            .name
            .and_then(|name| record::legacy_claim_key(user, name, cluster));
        self.ready_or_why(state)?;
        self.connect(state)?;
        let now = self.checked_clock(state)?;
        // What this worker holds unsent for the user goes first (and, before an affordability
        // decision, its lease back, unless holds are kept in it): the fleet's figures are then
        // all there is to decide on.
        let release = match call.strict {
            true => Release::UnlessHolds,
            false => Release::None,
        };
        if let Some(taken) = self.ledger.take_user_for_fleet_releasing(user, release) {
            let id = state.next_id;
            state.next_id += 1;
            let write = self.write_of(state, taken, id);
            // Nothing unsent and no lease to give back: no write (it would be a round trip
            // for nothing, and a server slow to take writes would fail the call for it).
            let idle = write.delta.is_zero() && write.ask == super::lease::Ask::None;
            if !idle || self.plan_changed(state, &write) {
                state.pending.push(write);
            }
        }
        if !state.pending.is_empty() {
            self.write(state, now)?;
        }
        let id = state.next_id;
        state.next_id += 1;
        let expires_ms = now.saturating_add(call.ttl_ms.max(1));
        for _pass in 0..16 {
            let known = state.known.get(user).cloned().unwrap_or_default();
            let free = match call.strict {
                true => self.keyed_free(&known, call, now)?,
                false => Money::ZERO,
            };
            let refusal = match decide(&known.figures, free) {
                Ok(Some(charge)) => Ok(charge),
                Ok(None) => Err(Keyed::Refused),
                Err(why) => Err(Keyed::Invalid(why)),
            };
            let charge = match refusal {
                Ok(charge) => charge,
                // A retry of a call made before is refused on the figures after it (its budget
                // spent, its refund given): the key tells, and is answered first.
                Err(refused) => {
                    let Some(claim) = &claim else {
                        return Ok(refused);
                    };
                    state.stats.round_trips += 1;
                    let gets: Vec<redis::Cmd> = std::iter::once(claim)
                        .chain(&legacy)
                        .map(|name| redis::cmd("GET").arg(name).clone())
                        .collect();
                    let replies = self.link(state)?.run(&gets).map_err(|e| self.io(&e))?;
                    if let Some(Value::ServerError(e)) = replies.first() {
                        return Err(self.io(&e.clone().into()));
                    }
                    // The older name holds no key unless a string (it may be another user's
                    // hash: WRONGTYPE, which is no key).
                    return Ok(replies
                        .into_iter()
                        .find_map(|reply| match reply {
                            Value::BulkString(value) => Some(Keyed::Existing(value)),
                            _ => None,
                        })
                        .unwrap_or(refused));
                }
            };
            let merged = merge(&known.figures, &charge, call.allowance)
                .map_err(|why| corrupted(user, why))?;
            let mut types = TypeTable::from_names(known.types.clone());
            let months: Vec<MonthId> = charge.months.keys().copied().collect();
            let sets = record::encode(user, &merged, &months, &mut types)
                .map_err(|why| corrupted(user, why))?;
            let mut cas = redis::cmd("EVAL");
            cas.arg(record::SCRIPT);
            match &claim {
                Some(claim) => {
                    cas.arg(2 + usize::from(legacy.is_some()))
                        .arg(record::user_key(user))
                        .arg(claim);
                    if let Some(legacy) = &legacy {
                        cas.arg(legacy);
                    }
                }
                None => {
                    cas.arg(1).arg(record::user_key(user));
                }
            }
            cas.arg(known.version)
                .arg(format!("s:{}", self.worker))
                .arg(id)
                .arg(now)
                .arg(sets.len());
            for (field, value) in &sets {
                cas.arg(field).arg(value);
            }
            let value = value_of(&merged);
            cas.arg(0) // nothing to delete
                .arg(&value)
                .arg(call.ttl_ms.max(1));
            state.stats.round_trips += 1;
            let reply = match self.link(state)?.one(&cas) {
                Ok(reply) => reply,
                Err(e) if crate::fleet::link::outcome_unknown(&e) => {
                    return Err(self.outcome_unknown(call, &e))
                }
                // The server answered: it did not run the script (a restart loading, a script
                // busy), so nothing was recorded.
                Err(e) => return Err(self.io(&e)),
            };
            let Some((code, payload)) = script_reply(&reply) else {
                return Err(StoreError::Write(format!(
                    "unexpected reply from the shared ledger: {reply:?}"
                )));
            };
            match code {
                0 => {
                    let version = match payload {
                        Value::Int(v) => *v as u64,
                        _ => known.version + 1,
                    };
                    self.ledger
                        .rebase(user, &merged.minus(&known.figures), merged.plan.as_ref())
                        .map_err(|why| corrupted(user, why))?;
                    state.known.insert(
                        user.to_string(),
                        Stored {
                            version,
                            figures: merged.clone(),
                            types: types.names().to_vec(),
                            ..known
                        },
                    );
                    state.stats.writes += 1;
                    // Remembered for a restore (`restore.rs`); a call without a key has none.
                    if let Some(claim) = claim {
                        state.claims.remember(claim, value, expires_ms, now);
                    }
                    state.unannounced.push(user.to_string());
                    self.announce(state)?;
                    return Ok(Keyed::Written(merged));
                }
                // This write was applied before (a resend), or the fleet moved: its figures are
                // brought in; a resend is done, a move is tried again on them.
                1 | 2 => {
                    let fleet = record::decode(user, &pairs(payload))
                        .map_err(|why| corrupted(user, why))?;
                    if let Some(why) = self.older_than_read(user, known.version, fleet.version) {
                        state.rolled_back = Some(why.clone());
                        return Err(StoreError::Unavailable(why));
                    }
                    self.ledger
                        .rebase(
                            user,
                            &fleet.figures.minus(&known.figures),
                            fleet.figures.plan.as_ref(),
                        )
                        .map_err(|why| corrupted(user, why))?;
                    let figures = fleet.figures.clone();
                    state.known.insert(user.to_string(), fleet);
                    if code == 1 {
                        if let Some(claim) = claim {
                            state.claims.remember(claim, value, expires_ms, now);
                        }
                        return Ok(Keyed::Written(figures));
                    }
                    state.stats.conflicts += 1;
                }
                3 => {
                    let value = match payload {
                        Value::BulkString(bytes) => bytes.clone(),
                        Value::SimpleString(text) => text.clone().into_bytes(),
                        other => {
                            return Err(StoreError::Write(format!(
                                "unexpected keyed-call record in the shared ledger: {other:?}"
                            )))
                        }
                    };
                    return Ok(Keyed::Existing(value));
                }
                4 => return Err(wrong_type(user, text_of(payload).as_deref())),
                _ => {
                    return Err(StoreError::Write(format!(
                        "unexpected reply code {code} from the shared ledger"
                    )))
                }
            }
        }
        Err(StoreError::Write(
            "the shared ledger changed under a keyed write for 16 tries: nothing was recorded"
                .into(),
        ))
    }

    /// What the fleet has free for the user this month for a keyed call: the remaining budget,
    /// less every live lease (this worker's too, if it kept one for its holds: they are in it),
    /// and this worker's unsent charges and holds. `now`: the server's clock, as leases expire.
    fn keyed_free(&self, known: &Stored, call: &KeyedWrite<'_>, now: i64) -> StoreResult<Money> {
        let corrupt = |why: String| corrupted(call.user_id, why);
        let month_pools = known
            .figures
            .months
            .get(&call.month)
            .map(|f| f.to_image().map(|i| i.pools))
            .transpose()
            .map_err(corrupt)?
            .unwrap_or_default();
        let credit = known.figures.credit().map_err(corrupt)?;
        let remaining = pools::remaining(call.allowance, &month_pools, &credit);
        let live = known
            .leases
            .iter()
            .filter(|l| l.month == call.month && l.expires_ms > now);
        let leased = live.clone().fold(Money::ZERO, |sum, l| sum.plus(l.amount));
        let own_lease = live.clone().any(|l| l.worker == self.worker);
        let fleet_total = known
            .figures
            .months
            .get(&call.month)
            .map_or(0, |f| f.cost());
        let local_total = self.ledger.user_usage(call.user_id, call.month).total;
        let unsent = Money::from_attocents(local_total.attocents() - fleet_total)
            .unwrap_or(Money::ZERO)
            .max(Money::ZERO);
        // Holds are kept in this worker's lease when it has one: counted with it, not twice.
        let held = match own_lease {
            true => Money::ZERO,
            false => self.ledger.held(call.user_id, call.now_ms),
        };
        Ok(remaining.minus(leased).minus(unsent).minus(held))
    }
}
