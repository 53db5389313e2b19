//! The ledger's keyed calls: a charge, a refund, a purchase of credit or a month's monthly
//! charges, each checked against and recorded with its idempotency key in one critical section
//! of the user's account (see `idempotency.rs` for the design).

use std::sync::atomic::Ordering;

use super::idempotency::{monthly_key, Found, KeyKind, Keyed, KeyedCall, Outcome, UserKeys};
use super::month::MonthId;
use super::pools::Credit;
use super::{account_in, check_purchase, Account, AccountState, Booking, ChargeMode, Ledger};
use super::{Receipt, UsageItem};
use crate::error::{LedgerError, LedgerResult};
use crate::money::Money;

/// Sweeps of every account's keys (when the global bound is reached) run at most this often on
/// the service's clock: a process truly full of live keys refuses new ones without rescanning.
const SWEEP_EVERY_MS: i64 = 1_000;

impl Ledger {
    /// Runs `run` under the user's account lock unless the call's key is live: then it returns
    /// the first call's outcome (`Keyed::Replayed`) and runs nothing, or `KeyReused` for another
    /// payload. `run` returns its result and the outcome to remember under the key, or `None`
    /// for a call that recorded nothing (a refusal: no key is kept, the retry decides again).
    /// An error of `run` keeps no key either.
    ///
    /// This is the one entry point of every keyed call; a new one (holds' `settle`) passes its
    /// own `run`, which must mark what it changes (`mark_changed`) as a charge does.
    pub(super) fn keyed<T>(
        &self,
        account: Option<&Account>,
        user_id: &str,
        call: &KeyedCall<'_>,
        run: impl FnOnce(&mut AccountState) -> LedgerResult<(T, Option<Outcome>)>,
    ) -> LedgerResult<Keyed<T>> {
        if self.keys_now_ms.load(Ordering::Relaxed) < call.now_ms {
            self.keys_now_ms.fetch_max(call.now_ms, Ordering::Relaxed);
        }
        let limits = self.key_limits;
        if call.kind == KeyKind::Caller && self.key_count.load(Ordering::Relaxed) >= limits.global {
            // Before any lock: the sweep takes every account's lock, one at a time.
            self.sweep_keys(call.now_ms);
        }
        let accounts;
        let account = match account {
            Some(account) => account,
            None => {
                accounts = self.accounts.pin();
                account_in(&accounts, user_id)
            }
        };
        let mut state = account.state.lock();
        self.refuse_if_sealed()?;
        if let Some(keys) = state.keys.as_deref_mut() {
            if let Found::Replay(outcome) = keys.check(call)? {
                return Ok(Keyed::Replayed(outcome));
            }
            let dropped = keys.prune(call.now_ms, limits.window_ms, false);
            self.key_count.fetch_sub(dropped, Ordering::Relaxed);
            if call.kind == KeyKind::Caller && keys.caller_keys() >= limits.per_user {
                let dropped = keys.prune(call.now_ms, limits.window_ms, true);
                self.key_count.fetch_sub(dropped, Ordering::Relaxed);
                if keys.caller_keys() >= limits.per_user {
                    return Err(LedgerError::KeyLimit(format!(
                        "the user holds {} idempotency keys, the most a user may \
                         (max_idempotency_keys_per_user): a new key is refused until the oldest \
                         expire, since forgetting a live key would turn its retry into a double \
                         charge",
                        keys.caller_keys()
                    )));
                }
            }
        }
        if call.kind == KeyKind::Caller && self.key_count.load(Ordering::Relaxed) >= limits.global {
            return Err(LedgerError::KeyLimit(format!(
                "the service holds {} idempotency keys, the most it may (max_idempotency_keys): \
                 a new key is refused until older ones expire",
                self.key_count.load(Ordering::Relaxed)
            )));
        }
        let (result, outcome) = run(&mut state)?;
        if let Some(outcome) = outcome {
            let keep_until_ms = match call.kind {
                KeyKind::Caller => call.now_ms.saturating_add(limits.window_ms),
                // Kept until the month is over, whatever the window: a retry within the month
                // must find it.
                KeyKind::Monthly => call
                    .now_ms
                    .saturating_add(limits.window_ms)
                    .max(MonthId::from_epoch_ms(call.now_ms).next().start_epoch_ms()),
            };
            let keys = state.keys.get_or_insert_with(Box::<UserKeys>::default);
            let before = keys.caller_keys();
            keys.insert(call, keep_until_ms, outcome);
            let added = keys.caller_keys() - before;
            self.key_count.fetch_add(added, Ordering::Relaxed);
            if self.track_changes {
                state.mark_changed(user_id, None, &self.changes);
            }
        }
        Ok(Keyed::Done(result))
    }

    /// `charge` with an idempotency key: the items are validated first (bad input keeps no key),
    /// then checked, charged and remembered in one critical section.
    pub fn charge_keyed(
        &self,
        account: Option<&Account>,
        booking: &Booking<'_>,
        items: &[UsageItem<'_>],
        mode: ChargeMode,
        call: &KeyedCall<'_>,
    ) -> LedgerResult<Keyed<Receipt>> {
        let (deltas, unmapped_items) = self.deltas_of(items)?;
        if mode == ChargeMode::IfAffordable
            && account.is_none()
            && !self.has_account(booking.user_id)
        {
            // A user without an account holds no key to replay; a refusal keeps none, and leaves
            // no account behind (`Ledger::refusal_without_account`).
            let refused = self.refusal_without_account(|state| {
                self.charge_locked(state, booking, &deltas, unmapped_items, mode)
            })?;
            if let Some(refused) = refused {
                return Ok(Keyed::Done(refused));
            }
        }
        self.keyed(account, booking.user_id, call, |state| {
            let receipt = self.charge_locked(state, booking, &deltas, unmapped_items, mode)?;
            Ok((receipt, remembered(&receipt)))
        })
    }

    /// `refund` with an idempotency key; the outcome's cost is the refund's (negative).
    pub fn refund_keyed(
        &self,
        account: Option<&Account>,
        booking: &Booking<'_>,
        (usage_type, units, cost): (&str, u64, Option<Money>),
        call: &KeyedCall<'_>,
    ) -> LedgerResult<Keyed<Receipt>> {
        let (delta, mode) = self.refund_delta(usage_type, units, cost)?;
        self.keyed(account, booking.user_id, call, |state| {
            let receipt = self.charge_locked(state, booking, &[delta], 0, mode)?;
            Ok((receipt, remembered(&receipt)))
        })
    }

    /// `add_purchased` with an idempotency key; the outcome is the purchased total and the
    /// amount added.
    pub fn add_purchased_keyed(
        &self,
        user_id: &str,
        amount: Money,
        call: &KeyedCall<'_>,
    ) -> LedgerResult<Keyed<Credit>> {
        check_purchase(amount)?;
        self.keyed(None, user_id, call, |state| {
            let credit = self.add_purchased_locked(state, user_id, amount)?;
            let outcome = Outcome {
                total: credit.purchased,
                cost: amount,
            };
            Ok((credit, Some(outcome)))
        })
    }

    /// Charges a month's monthly charges (`items`, booked as `booking` says) exactly once per
    /// user and month: under the month's reserved key, claimed in the same critical section.
    /// `Keyed::Replayed` if they were applied already (then nothing is recorded). Empty `items`
    /// claim the month too: the listeners had nothing to charge this month.
    pub fn apply_monthly(
        &self,
        account: Option<&Account>,
        booking: &Booking<'_>,
        items: &[UsageItem<'_>],
        now_ms: i64,
    ) -> LedgerResult<Keyed<Receipt>> {
        let (deltas, unmapped_items) = self.deltas_of(items)?;
        let key = monthly_key(booking.month);
        let call = KeyedCall {
            key: &key,
            fingerprint: [0; 16],
            now_ms,
            kind: KeyKind::Monthly,
        };
        self.keyed(account, booking.user_id, &call, |state| {
            let receipt =
                self.charge_locked(state, booking, &deltas, unmapped_items, ChargeMode::Always)?;
            let outcome = Outcome {
                total: receipt.month_total,
                cost: receipt.cost,
            };
            Ok((receipt, Some(outcome)))
        })
    }

    /// What the monthly charges of `month` booked, if they were applied (its key is held).
    pub fn monthly_applied(&self, user_id: &str, month: MonthId, now_ms: i64) -> Option<Outcome> {
        let key = monthly_key(month);
        self.read_account(user_id, |state| state.keys.as_ref()?.outcome(&key, now_ms))
    }

    /// `monthly_applied` of an account the caller keeps.
    pub fn monthly_applied_in(
        &self,
        account: &Account,
        month: MonthId,
        now_ms: i64,
    ) -> Option<Outcome> {
        let key = monthly_key(month);
        let state = account.state.lock();
        state.keys.as_ref()?.outcome(&key, now_ms)
    }

    /// Drops every account's expired keys (at most once per `SWEEP_EVERY_MS`): run when the
    /// global bound is reached, so that keys of users who never call again do not hold it.
    pub fn sweep_keys(&self, now_ms: i64) {
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < SWEEP_EVERY_MS
            || self
                .last_sweep_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let window_ms = self.key_limits.window_ms;
        for (user_id, account) in self.accounts.pin().iter() {
            let mut state = account.state.lock();
            let Some(keys) = state.keys.as_deref_mut() else {
                continue;
            };
            let dropped = keys.prune(now_ms, window_ms, true);
            self.key_count.fetch_sub(dropped, Ordering::Relaxed);
            if dropped > 0 && self.track_changes {
                // Rewrites the user's keys record without them at the next snapshot.
                state.mark_changed(user_id, None, &self.changes);
            }
        }
    }

    /// Caller keys held in the process (for tests and metrics).
    pub fn key_count(&self) -> usize {
        self.key_count.load(Ordering::Relaxed)
    }

    /// The keys of a user to store with a snapshot, if they changed since the last one (pruned
    /// first with the latest time a keyed call saw).
    pub(super) fn take_keys(
        &self,
        state: &mut AccountState,
    ) -> Option<Vec<super::idempotency::KeyImage>> {
        let keys = state.keys.as_deref_mut().filter(|keys| keys.dirty)?;
        let now_ms = self.keys_now_ms.load(Ordering::Relaxed);
        let dropped = keys.prune(now_ms, self.key_limits.window_ms, true);
        self.key_count.fetch_sub(dropped, Ordering::Relaxed);
        keys.dirty = false;
        let images = keys.images();
        if keys.is_empty() {
            // Stored empty by this snapshot: the account need not keep the box.
            state.keys = None;
        }
        Some(images)
    }

    /// Loads a user's stored keys into its (restored) state.
    pub(super) fn restore_keys(
        &self,
        state: &mut AccountState,
        images: Vec<super::idempotency::KeyImage>,
    ) {
        let keys = UserKeys::from_images(images);
        self.key_count
            .fetch_add(keys.caller_keys(), Ordering::Relaxed);
        if !keys.is_empty() {
            state.keys = Some(Box::new(keys));
        }
    }
}

/// What a keyed charge remembers: an accepted charge's total and cost; nothing for a refusal.
fn remembered(receipt: &Receipt) -> Option<Outcome> {
    receipt.accepted.then_some(Outcome {
        total: receipt.month_total,
        cost: receipt.cost,
    })
}
