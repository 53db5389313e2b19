//! Holds: credit reserved for a call whose cost is known only after it ran (an LLM reply that
//! streams), then settled with the real usage or released.
//!
//! A hold lowers what the user may still spend (`Budget::remaining` and every affordability
//! decision), never the allowance figures: nothing is used until it is settled. It is kept in
//! the user's account and decided under the account's lock, like `try_increment_usage`, so that
//! holds and charges racing for a user's last credits never together exceed the budget.
//!
//! Holds expire by their own clock (`expires_ms`, epoch ms on the service's clock): an expired
//! hold holds nothing, and is dropped the next time the user's holds are touched. They are kept
//! in the credit record of an embedded store, so that a hold outlives a restart but never its
//! expiry. On a fleet, a worker's holds are kept inside its budget lease (`replica.rs`): they
//! die with the lease when the worker does.
//!
//! A hold is finished (settled or released) once (issue 18, point 4). The account remembers each
//! finished hold's id (`Finished`, 32 bytes) under the same lock that decides the settle, so a
//! second settle, from any handle, thread or with another key, is refused (`HoldFinished`) and
//! records nothing, while a retry with the first key replays its first outcome (the key is
//! checked before the hold is, `keyed.rs`). It is remembered until the later of the hold's expiry
//! and the idempotency window (`KeyLimits::window_ms`, the time a keyed retry is honoured), at
//! most `MAX_FINISHED_PER_USER` per user (the oldest forgotten first), and kept in the store with
//! the holds, so a restart forgets none.

use super::idempotency::{Keyed, KeyedCall, Outcome};
use super::{Account, AccountState, Booking, ChargeMode, Ledger, Receipt, UsageItem};
use crate::error::{overflow, LedgerError, LedgerResult};
use crate::money::Money;
use std::sync::atomic::Ordering;

/// At most this many holds per user, expired ones not counted: a bound on the memory (40 bytes
/// each) a user's abandoned holds can take. A caller that reaches it is leaking holds.
pub const MAX_HOLDS_PER_USER: usize = 1_024;

/// One reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    /// Unique in the ledger (and in its store, across restarts).
    pub id: u64,
    pub amount: Money,
    /// When it stops holding anything (epoch ms).
    pub expires_ms: i64,
}

impl Hold {
    fn live(&self, now_ms: i64) -> bool {
        self.expires_ms > now_ms
    }
}

/// At most this many finished holds are remembered per user (`Finished`, 32 bytes each); past it
/// the oldest is forgotten (its settle would then record again, as for an unknown hold).
pub const MAX_FINISHED_PER_USER: usize = 1_024;

/// A hold settled or released: remembered so that it is never settled again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished {
    pub id: u64,
    /// Forgotten from then on (epoch ms).
    pub until_ms: i64,
    /// `key_hash` of the settle's idempotency key (0: none, or restored from a store). Only a
    /// fleet's keyed settle reads it: its key lives on the shared ledger, not in the account.
    pub key_hash: u64,
    pub released: bool,
}

/// In a store's credit record a finished hold is written among the holds, as a hold of nothing
/// whose id has this bit set (ids stay below 2^53, `first_hold_id`) and whose expiry is the time
/// it is forgotten, negated: a library that predates it reads an expired hold of 0 µ¢ (it holds
/// nothing, is listed nowhere and is dropped at the user's next hold), so store format 3 keeps
/// it, and older readers of format 3 are not misled. A new record layout would have needed a
/// format version, which a fleet's Redis records share: every older worker would refuse them.
const FINISHED_BIT: u64 = 1 << 63;
/// Set with `FINISHED_BIT` for a hold that was released rather than settled.
const RELEASED_BIT: u64 = 1 << 62;
/// The id of the entry among a stored user's holds that says an email was seen for the user
/// (`AccountState::email_seen`): an expired hold of nothing, for older readers as above.
const EMAIL_SEEN_ID: u64 = u64::MAX - 1;

/// A user's holds: few at a time (one per call in flight), so vectors; and the finished ones.
#[derive(Clone, Debug, Default)]
pub struct HoldBook {
    live: Vec<Hold>,
    finished: Vec<Finished>,
}

pub type Holds = Box<HoldBook>;

impl HoldBook {
    /// The book as stored: the holds, then each finished hold as a hold of nothing (see
    /// `FINISHED_BIT`).
    fn to_image(&self, image: &mut Vec<Hold>) {
        let finished = self.finished.iter().map(|f| Hold {
            id: f.id | FINISHED_BIT | if f.released { RELEASED_BIT } else { 0 },
            amount: Money::ZERO,
            expires_ms: f.until_ms.saturating_neg(),
        });
        image.extend(self.live.iter().copied().chain(finished));
    }

    /// The book a store's holds describe (`AccountState::hold_list`), None when it is empty,
    /// and whether they say an email was seen for the user (`EMAIL_SEEN_ID`).
    pub fn from_image(holds: Vec<Hold>) -> (Option<Holds>, bool) {
        let mut book = HoldBook::default();
        let mut email_seen = false;
        for hold in holds {
            if hold.id == EMAIL_SEEN_ID {
                email_seen = true;
            } else if hold.id & FINISHED_BIT == 0 {
                book.live.push(hold);
            } else {
                book.finished.push(Finished {
                    id: hold.id & !(FINISHED_BIT | RELEASED_BIT),
                    until_ms: hold.expires_ms.saturating_neg(),
                    key_hash: 0,
                    released: hold.id & RELEASED_BIT != 0,
                });
            }
        }
        let book = (!book.live.is_empty() || !book.finished.is_empty()).then(|| Box::new(book));
        (book, email_seen)
    }

    fn finished(&self, id: u64, now_ms: i64) -> Option<&Finished> {
        self.finished
            .iter()
            .find(|f| f.id == id && f.until_ms > now_ms)
    }
}

/// A hash of an idempotency key, for `Finished::key_hash` (never 0). `DefaultHasher::new` has
/// fixed keys: the hash is compared within one process only, but must not change between calls.
pub fn key_hash(key: &str) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(key.as_bytes());
    hasher.finish().max(1)
}

/// What a fleet's keyed settle found when it claimed the hold (`claim_settle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The hold was outstanding (or unknown) and is now taken, with this key: `Some` if it was
    /// still live. Settle it on the fleet, or put it back (`unclaim`) if that fails.
    Taken(Option<Hold>),
    /// A settle with the same key took it before: a retry, for the shared ledger to replay.
    Retry,
}

impl AccountState {
    /// What the user's live holds reserve. Free for a user with none (the common case).
    #[inline]
    pub(super) fn held(&self, now_ms: i64) -> Money {
        match &self.holds {
            None => Money::ZERO,
            Some(holds) => held_in(&holds.live, now_ms),
        }
    }

    /// Drops expired holds and forgotten finished ones (and the book, when nothing is left).
    fn prune_holds(&mut self, now_ms: i64) {
        if let Some(holds) = &mut self.holds {
            holds.live.retain(|hold| hold.live(now_ms));
            holds.finished.retain(|f| f.until_ms > now_ms);
            if holds.live.is_empty() && holds.finished.is_empty() {
                self.holds = None;
            }
        }
    }

    /// Refuses hold `id` if it was settled or released already.
    fn refuse_if_finished(&self, id: u64, now_ms: i64) -> LedgerResult<()> {
        match self.holds.as_ref().and_then(|h| h.finished(id, now_ms)) {
            None => Ok(()),
            Some(finished) => Err(finished_error(finished)),
        }
    }

    /// Removes hold `id` and remembers it as finished (`until_ms` at least, and no earlier than
    /// the hold's expiry): returns it if it was still live.
    fn finish_hold(&mut self, id: u64, finished: Finished, now_ms: i64) -> Option<Hold> {
        let book = self.holds.get_or_insert_with(Default::default);
        let taken = book
            .live
            .iter()
            .position(|hold| hold.id == id)
            .map(|at| book.live.swap_remove(at));
        let until_ms = taken.map_or(finished.until_ms, |h| h.expires_ms.max(finished.until_ms));
        book.finished.retain(|f| f.until_ms > now_ms);
        if book.finished.len() >= MAX_FINISHED_PER_USER {
            // The one forgotten soonest goes first: its window is the nearest to its end anyway.
            if let Some(at) = (0..book.finished.len()).min_by_key(|&at| book.finished[at].until_ms)
            {
                book.finished.swap_remove(at);
            }
        }
        book.finished.push(Finished {
            until_ms,
            ..finished
        });
        self.prune_holds(now_ms);
        taken.filter(|hold| hold.live(now_ms))
    }

    /// Whether the user holds budget that a fleet worker must keep leased.
    pub(super) fn has_holds(&self) -> bool {
        self.holds.as_ref().is_some_and(|h| !h.live.is_empty())
    }

    /// The holds as a store keeps them (`HoldBook::to_image`), with the user's email flag.
    pub(super) fn hold_list(&self) -> Vec<Hold> {
        let mut image = Vec::new();
        if let Some(holds) = &self.holds {
            holds.to_image(&mut image);
        }
        if self.email_seen {
            image.push(Hold {
                id: EMAIL_SEEN_ID,
                amount: Money::ZERO,
                expires_ms: -1,
            });
        }
        image
    }

    fn live_holds(&self) -> Vec<Hold> {
        self.holds
            .as_ref()
            .map(|holds| holds.live.clone())
            .unwrap_or_default()
    }
}

fn finished_error(finished: &Finished) -> LedgerError {
    let how = if finished.released {
        "released"
    } else {
        "settled"
    };
    LedgerError::HoldFinished(format!(
        "hold {} was already {how}: a hold is settled or released once, and nothing was \
         recorded now (a retry of its settle replays only with the first settle's \
         idempotency_key)",
        finished.id
    ))
}

fn held_in(holds: &[Hold], now_ms: i64) -> Money {
    holds
        .iter()
        .filter(|hold| hold.live(now_ms))
        .fold(Money::ZERO, |sum, hold| sum.plus(hold.amount))
}

/// Where a ledger's hold ids start: at random below 2^52. A hold id may outlive its process (a
/// caller can keep it to settle after a restart), and a store keeps a finished hold's id only
/// for a while: ids counted from 1 again would name a settled hold's id anew. Random starts make two processes'
/// (or two fleet workers') ids collide with odds of about (holds made) / 2^52; below 2^53, the
/// ids stay exact in JavaScript clients too.
pub fn first_hold_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    1 + random % (1 << 52)
}

impl Ledger {
    /// A new hold id: unique in this ledger, and (see `first_hold_id`) almost surely among the
    /// ids of the processes that used its store before.
    pub fn new_hold_id(&self) -> u64 {
        self.next_hold_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Reserves `amount` for `ttl_ms` under hold `id` (from `new_hold_id`) if the user's remaining
    /// budget, net of the holds already outstanding, covers it: the receipt is accepted, or
    /// refused with nothing changed (`ask_fleet` on a fleet replica whose lease falls short, as
    /// for `ChargeMode::IfAffordable`). Records no usage.
    pub fn reserve(
        &self,
        account: Option<&Account>,
        booking: &Booking<'_>,
        id: u64,
        amount: Money,
        ttl_ms: i64,
    ) -> LedgerResult<Receipt> {
        if amount.is_negative() {
            return Err(LedgerError::InvalidInput(format!(
                "a hold must be of 0 to 10^18 µ¢, not {} µ¢",
                amount.to_microcent_string()
            )));
        }
        if !amount.fits_record() {
            // Out of the ledger's range, as any amount beyond 10^18 µ¢ (README: OverflowError).
            return Err(LedgerError::Overflow(format!(
                "a hold of {} µ¢ is beyond the ledger's range (10^18 µ¢); nothing was held",
                amount.to_microcent_string()
            )));
        }
        let now_ms = booking.now_ms;
        let expires_ms = check_ttl(now_ms, ttl_ms)?;
        let decide = |state: &mut AccountState| {
            self.refuse_if_sealed()?;
            let allowance = state.allowance(booking.plan)?;
            state.prune_holds(now_ms);
            if state.holds.as_ref().map_or(0, |holds| holds.live.len()) >= MAX_HOLDS_PER_USER {
                return Err(LedgerError::InvalidInput(format!(
                    "the actor already has {MAX_HOLDS_PER_USER} holds outstanding: settle or \
                     release some first"
                )));
            }
            let held = state.held(now_ms);
            let month_total = state
                .months
                .get(&booking.month)
                .map_or(Money::ZERO, |m| m.total);
            let budget = state.budget(booking.month, booking.plan, now_ms)?;
            let mut refused = Receipt {
                accepted: false,
                allowance,
                month_total,
                cost: amount,
                ..Receipt::default()
            };
            if budget.remaining < amount {
                return Ok(refused);
            }
            if let Some(rules) = &self.leases {
                let need = held
                    .checked_add(amount)
                    .ok_or_else(|| overflow("the holds"))?;
                let (short, ask_fleet) = state.lease_decision(booking.month, need, rules);
                if short {
                    refused.ask_fleet = ask_fleet;
                    return Ok(refused);
                }
            }
            state
                .holds
                .get_or_insert_with(Default::default)
                .live
                .push(Hold {
                    id,
                    amount,
                    expires_ms,
                });
            self.note_credit_change(state, booking.user_id);
            Ok(Receipt {
                accepted: true,
                ..refused
            })
        };
        if account.is_none() && !self.has_account(booking.user_id) {
            // A refusal leaves no account behind (`Ledger::refusal_without_account`).
            if let Some(refused) = self.refusal_without_account(decide)? {
                return Ok(refused);
            }
        }
        self.with_account(account, booking.user_id, decide)
    }

    /// Settles hold `id`: records `items` (the real usage, whatever it costs, as
    /// `ChargeMode::Always`) and removes the hold, atomically under the account's lock. Usage is
    /// recorded even when the hold expired or is unknown (the call ran; losing its usage would be
    /// worse). Returns the receipt and the hold as it was, if it was still live. A hold settled
    /// or released before is refused (`HoldFinished`), as is invalid input: nothing changes.
    pub fn settle(
        &self,
        account: Option<&Account>,
        booking: &Booking<'_>,
        id: u64,
        items: &[UsageItem<'_>],
    ) -> LedgerResult<(Receipt, Option<Hold>)> {
        let (deltas, unmapped_items) = self.deltas_of(items)?;
        self.with_account(account, booking.user_id, |state| {
            self.refuse_if_sealed()?;
            state.refuse_if_finished(id, booking.now_ms)?;
            let receipt =
                self.charge_locked(state, booking, &deltas, unmapped_items, ChargeMode::Always)?;
            let hold = state.finish_hold(
                id,
                self.finished(id, 0, false, booking.now_ms),
                booking.now_ms,
            );
            self.note_credit_change(state, booking.user_id);
            Ok((receipt, hold))
        })
    }

    /// `settle` with an idempotency key (`idempotency.rs`): a retry with the same key settles
    /// nothing and replays the first settle's outcome; another settle of the hold, with another
    /// key, is refused (`HoldFinished`).
    pub fn settle_keyed(
        &self,
        account: Option<&Account>,
        booking: &Booking<'_>,
        id: u64,
        items: &[UsageItem<'_>],
        call: &KeyedCall<'_>,
    ) -> LedgerResult<Keyed<(Receipt, Option<Hold>)>> {
        let (deltas, unmapped_items) = self.deltas_of(items)?;
        self.keyed(account, booking.user_id, call, |state| {
            state.refuse_if_finished(id, booking.now_ms)?;
            let receipt =
                self.charge_locked(state, booking, &deltas, unmapped_items, ChargeMode::Always)?;
            let finished = self.finished(id, key_hash(call.key), false, booking.now_ms);
            let hold = state.finish_hold(id, finished, booking.now_ms);
            self.note_credit_change(state, booking.user_id);
            let outcome = Outcome {
                total: receipt.month_total,
                cost: receipt.cost,
            };
            Ok(((receipt, hold), Some(outcome)))
        })
    }

    /// For a fleet's keyed settle, whose charge is decided on the shared ledger: takes hold `id`
    /// for the settle with `key` before the charge is sent, under the account's lock, so that
    /// two settles of one hold never both reach the fleet. A hold finished by another settle or
    /// a release is refused (`HoldFinished`); one taken with the same key is `Claim::Retry`.
    pub fn claim_settle(
        &self,
        user_id: &str,
        id: u64,
        key: &str,
        now_ms: i64,
    ) -> LedgerResult<Claim> {
        let key_hash = key_hash(key);
        self.with_account(None, user_id, |state| {
            self.refuse_if_sealed()?;
            if let Some(finished) = state.holds.as_ref().and_then(|h| h.finished(id, now_ms)) {
                if !finished.released && finished.key_hash == key_hash {
                    return Ok(Claim::Retry);
                }
                return Err(finished_error(finished));
            }
            let hold = state.finish_hold(id, self.finished(id, key_hash, false, now_ms), now_ms);
            self.note_credit_change(state, user_id);
            Ok(Claim::Taken(hold))
        })
    }

    /// Undoes a `claim_settle` whose charge failed: the hold is outstanding again (if it was
    /// live), and may be settled anew.
    pub fn unclaim_settle(&self, user_id: &str, id: u64, hold: Option<Hold>) {
        self.with_account(None, user_id, |state| {
            if let Some(book) = state.holds.as_mut() {
                book.finished.retain(|f| f.id != id);
                book.live.extend(hold);
            } else if let Some(hold) = hold {
                state.holds = Some(Box::new(HoldBook {
                    live: vec![hold],
                    finished: Vec::new(),
                }));
            }
            self.note_credit_change(state, user_id);
        })
    }

    /// Removes hold `id`, returning it if it was still live (`None`: expired, or never made
    /// here). A hold settled or released before is refused (`HoldFinished`). A user without an
    /// account gets `None` and none is made.
    pub fn release(&self, user_id: &str, id: u64, now_ms: i64) -> LedgerResult<Option<Hold>> {
        self.with_unfinished_hold(user_id, id, now_ms, |state| {
            if !state
                .holds
                .as_ref()
                .is_some_and(|h| h.live.iter().any(|hold| hold.id == id))
            {
                return None;
            }
            let hold = state.finish_hold(id, self.finished(id, 0, true, now_ms), now_ms);
            self.note_credit_change(state, user_id);
            hold
        })
    }

    /// Runs `change` on the user's account, under its lock, unless hold `id` was finished
    /// (`HoldFinished`) or the ledger is sealed; `Ok(None)` for a user without an account (none
    /// is made).
    fn with_unfinished_hold(
        &self,
        user_id: &str,
        id: u64,
        now_ms: i64,
        change: impl FnOnce(&mut AccountState) -> Option<Hold>,
    ) -> LedgerResult<Option<Hold>> {
        let Some(account) = self.existing_account(user_id) else {
            self.refuse_if_sealed()?;
            return Ok(None);
        };
        let mut state = account.state.lock();
        self.refuse_if_sealed()?;
        state.refuse_if_finished(id, now_ms)?;
        Ok(change(&mut state))
    }

    /// Sets hold `id` to expire `ttl_ms` from now. An expired hold is not revived (its budget may
    /// have been spent since): `None`. A finished hold is refused (`HoldFinished`).
    pub fn extend(
        &self,
        user_id: &str,
        id: u64,
        ttl_ms: i64,
        now_ms: i64,
    ) -> LedgerResult<Option<Hold>> {
        let expires_ms = check_ttl(now_ms, ttl_ms)?;
        self.with_unfinished_hold(user_id, id, now_ms, |state| {
            let hold = state
                .holds
                .as_mut()
                .and_then(|holds| holds.live.iter_mut().find(|h| h.id == id && h.live(now_ms)))?;
            hold.expires_ms = expires_ms;
            let hold = *hold;
            self.note_credit_change(state, user_id);
            Some(hold)
        })
    }

    /// What the ledger remembers of hold `id` finished at `now_ms`: until the idempotency window
    /// ends (`finish_hold` keeps it until the hold's expiry if that is later).
    fn finished(&self, id: u64, key_hash: u64, released: bool, now_ms: i64) -> Finished {
        Finished {
            id,
            until_ms: now_ms.saturating_add(self.key_limits.window_ms.max(1)),
            key_hash,
            released,
        }
    }

    /// The user's live holds, oldest id first.
    pub fn holds(&self, user_id: &str, now_ms: i64) -> Vec<Hold> {
        let mut holds = self.read_account(user_id, |state| state.live_holds());
        holds.retain(|hold| hold.live(now_ms));
        holds.sort_by_key(|hold| hold.id);
        holds
    }

    /// What the user's live holds reserve.
    pub fn held(&self, user_id: &str, now_ms: i64) -> Money {
        self.read_account(user_id, |state| state.held(now_ms))
    }

    /// Runs `change` on the user's state under its lock (`account` if the caller keeps it).
    fn with_account<T>(
        &self,
        account: Option<&Account>,
        user_id: &str,
        change: impl FnOnce(&mut AccountState) -> T,
    ) -> T {
        match account {
            Some(account) => change(&mut account.state.lock()),
            None => change(
                &mut super::account_in(&self.accounts.pin(), user_id)
                    .state
                    .lock(),
            ),
        }
    }

    /// Queues the user's credit record (which keeps the holds) for the next snapshot.
    fn note_credit_change(&self, state: &mut AccountState, user_id: &str) {
        if self.track_changes {
            state.mark_changed(user_id, None, &self.changes);
        }
    }
}

/// When a hold of `ttl_ms` made at `now_ms` expires.
fn check_ttl(now_ms: i64, ttl_ms: i64) -> LedgerResult<i64> {
    // A year at most: a hold is for a call in flight, and a bound keeps the sum in range.
    const MAX_TTL_MS: i64 = 366 * 86_400_000;
    if !(1..=MAX_TTL_MS).contains(&ttl_ms) {
        return Err(LedgerError::InvalidInput(format!(
            "a hold's ttl must be above 0 and at most 366 days, not {ttl_ms} ms"
        )));
    }
    now_ms
        .checked_add(ttl_ms)
        .ok_or_else(|| overflow("the hold's expiry"))
}
