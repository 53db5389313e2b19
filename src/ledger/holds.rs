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

/// A user's holds: few at a time (one per call in flight), so a vector.
pub type Holds = Box<Vec<Hold>>;

impl AccountState {
    /// What the user's live holds reserve. Free for a user with none (the common case).
    #[inline]
    pub(super) fn held(&self, now_ms: i64) -> Money {
        match &self.holds {
            None => Money::ZERO,
            Some(holds) => held_in(holds, now_ms),
        }
    }

    /// Drops expired holds (and the vector, when none is left).
    fn prune_holds(&mut self, now_ms: i64) {
        if let Some(holds) = &mut self.holds {
            holds.retain(|hold| hold.live(now_ms));
            if holds.is_empty() {
                self.holds = None;
            }
        }
    }

    /// Removes the hold, returning it if it was still live.
    fn take_hold(&mut self, id: u64, now_ms: i64) -> Option<Hold> {
        let holds = self.holds.as_mut()?;
        let at = holds.iter().position(|hold| hold.id == id)?;
        let hold = holds.swap_remove(at);
        self.prune_holds(now_ms);
        hold.live(now_ms).then_some(hold)
    }

    /// Whether the user holds budget that a fleet worker must keep leased.
    pub(super) fn has_holds(&self) -> bool {
        self.holds.is_some()
    }

    pub(super) fn hold_list(&self) -> Vec<Hold> {
        self.holds
            .as_ref()
            .map(|holds| holds.to_vec())
            .unwrap_or_default()
    }
}

fn held_in(holds: &[Hold], now_ms: i64) -> Money {
    holds
        .iter()
        .filter(|hold| hold.live(now_ms))
        .fold(Money::ZERO, |sum, hold| sum.plus(hold.amount))
}

/// Where a ledger's hold ids start: at random below 2^52. A hold id may outlive its process (a
/// caller can keep it to settle after a restart), and a store keeps only the live holds: ids
/// counted from 1 again would name a settled hold's id anew. Random starts make two processes'
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
        if amount.is_negative() || !amount.fits_record() {
            return Err(LedgerError::InvalidInput(format!(
                "a hold must be of 0 to 10^18 µ¢, not {} µ¢",
                amount.to_microcent_string()
            )));
        }
        let now_ms = booking.now_ms;
        let expires_ms = check_ttl(now_ms, ttl_ms)?;
        self.with_account(account, booking.user_id, |state| {
            self.refuse_if_sealed()?;
            let allowance = state.allowance(booking.plan)?;
            state.prune_holds(now_ms);
            if state.holds.as_ref().map_or(0, |holds| holds.len()) >= MAX_HOLDS_PER_USER {
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
            state.holds.get_or_insert_with(Default::default).push(Hold {
                id,
                amount,
                expires_ms,
            });
            self.note_credit_change(state, booking.user_id);
            Ok(Receipt {
                accepted: true,
                ..refused
            })
        })
    }

    /// Settles hold `id`: records `items` (the real usage, whatever it costs, as
    /// `ChargeMode::Always`) and removes the hold, atomically under the account's lock. Usage is
    /// recorded even when the hold expired or is unknown (the call ran; losing its usage would be
    /// worse). Returns the receipt and the hold as it was, if it was still live. Invalid items
    /// change nothing: the hold stays.
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
            let receipt =
                self.charge_locked(state, booking, &deltas, unmapped_items, ChargeMode::Always)?;
            let hold = state.take_hold(id, booking.now_ms);
            self.note_credit_change(state, booking.user_id);
            Ok((receipt, hold))
        })
    }

    /// `settle` with an idempotency key (`idempotency.rs`): a retry with the same key settles
    /// nothing and replays the first settle's outcome.
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
            let receipt =
                self.charge_locked(state, booking, &deltas, unmapped_items, ChargeMode::Always)?;
            let hold = state.take_hold(id, booking.now_ms);
            self.note_credit_change(state, booking.user_id);
            let outcome = Outcome {
                total: receipt.month_total,
                cost: receipt.cost,
            };
            Ok(((receipt, hold), Some(outcome)))
        })
    }

    /// Removes hold `id`, returning it if it was still live (`None`: expired, settled, released
    /// or never made here).
    pub fn release(&self, user_id: &str, id: u64, now_ms: i64) -> LedgerResult<Option<Hold>> {
        self.with_account(None, user_id, |state| {
            self.refuse_if_sealed()?;
            let hold = state.take_hold(id, now_ms);
            if hold.is_some() {
                self.note_credit_change(state, user_id);
            }
            Ok(hold)
        })
    }

    /// Sets hold `id` to expire `ttl_ms` from now. An expired hold is not revived (its budget may
    /// have been spent since): `None`.
    pub fn extend(
        &self,
        user_id: &str,
        id: u64,
        ttl_ms: i64,
        now_ms: i64,
    ) -> LedgerResult<Option<Hold>> {
        let expires_ms = check_ttl(now_ms, ttl_ms)?;
        self.with_account(None, user_id, |state| {
            self.refuse_if_sealed()?;
            let hold = state
                .holds
                .as_mut()
                .and_then(|holds| holds.iter_mut().find(|h| h.id == id && h.live(now_ms)));
            let Some(hold) = hold else {
                return Ok(None);
            };
            hold.expires_ms = expires_ms;
            let hold = *hold;
            self.note_credit_change(state, user_id);
            Ok(Some(hold))
        })
    }

    /// The user's live holds, oldest id first.
    pub fn holds(&self, user_id: &str, now_ms: i64) -> Vec<Hold> {
        let mut holds = self.read_account(user_id, |state| state.hold_list());
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
