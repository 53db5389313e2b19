//! A fleet worker's side of keyed calls: they are decided and recorded on the shared ledger
//! (`fleet::sync::keyed`), and only remembered here, so that a retry on this worker replays
//! without a round trip (a key's record never changes once written).

use super::idempotency::{KeyKind, Keyed, KeyedCall, Outcome};
use super::month::MonthId;
use super::{Ledger, UsageItem};
use crate::error::LedgerResult;
use crate::money::Money;

/// One priced usage of a call, by name: usage type, units, cost.
pub type PricedItem = (String, u64, Money);

impl Ledger {
    /// The first call's outcome if `call`'s key is live here, `KeyReused` for another payload,
    /// or `None`. Changes nothing.
    pub fn key_replay(&self, user_id: &str, call: &KeyedCall<'_>) -> LedgerResult<Option<Outcome>> {
        // A user without an account here has no key here, and gets no account for asking.
        if !self.has_account(user_id) {
            return Ok(None);
        }
        match self.keyed(None, user_id, call, |_| Ok(((), None)))? {
            Keyed::Replayed(outcome) => Ok(Some(outcome)),
            Keyed::Done(()) => Ok(None),
        }
    }

    /// Remembers a key the shared ledger recorded (best effort: a key this worker cannot keep,
    /// at its bounds, is still in the shared ledger, which a retry then reads).
    pub fn remember_key(&self, user_id: &str, call: &KeyedCall<'_>, outcome: Outcome) {
        let _ = self.keyed(None, user_id, call, |_| Ok(((), Some(outcome))));
    }

    /// `items` priced and validated as a charge would (one entry per usage type, folded), and
    /// how many were recorded for free (unpriced, `Unmapped::Free`). Records nothing.
    pub fn priced_items(&self, items: &[UsageItem<'_>]) -> LedgerResult<(Vec<PricedItem>, usize)> {
        let (deltas, unmapped_items) = self.deltas_of(items)?;
        let priced = deltas
            .iter()
            .map(|d| (self.type_name(d.usage_type).to_string(), d.units, d.cost))
            .collect();
        Ok((priced, unmapped_items))
    }
}

impl Ledger {
    /// How long the shared ledger keeps `call`'s key (ms): the window, and for a month's
    /// monthly charges at least until the month is over.
    pub fn key_ttl_ms(&self, call: &KeyedCall<'_>) -> i64 {
        let window = self.key_limits.window_ms;
        match call.kind {
            KeyKind::Caller => window,
            KeyKind::Monthly => {
                let month_end = MonthId::from_epoch_ms(call.now_ms).next().start_epoch_ms();
                window.max(month_end.saturating_sub(call.now_ms))
            }
        }
    }
}
