//! Budget leases in the shared ledger: what a write asks of a user's lease, how much the fleet
//! grants, and what the worker may then spend (`crate::ledger::replica`).

use std::time::Duration;

use super::{Fleet, State, Write};
use crate::fleet::figures::UserFigures;
use crate::fleet::record::{Stored, StoredLease};
use crate::ledger::month::MonthId;
use crate::ledger::pools;
use crate::money::Money;

/// What a write asks of the user's lease.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Ask {
    /// Nothing: the user holds no lease here.
    None,
    /// Renew it, topped up to the fair share when the fleet has room (spent in the last round).
    Renew { month: MonthId, left: Money },
    /// At least `need` now (a caller waits), or no more than `left` if the fleet has no room.
    Need {
        month: MonthId,
        need: Money,
        left: Money,
    },
    /// Give it back (unused for a round, or closing).
    Release { month: MonthId },
}

/// The lease a write leaves this worker.
#[derive(Clone, Copy, Debug)]
pub(super) struct LeaseOutcome {
    pub(super) month: MonthId,
    pub(super) amount: Money,
    /// Set when a caller's charge found no room (see `replica::Lease::dry`): server ms.
    pub(super) dry_until_ms: Option<i64>,
}

impl Fleet {
    /// The lease to hold after `merged` is written, amount zero to return it.
    pub(super) fn lease_after(
        &self,
        write: &Write,
        known: &Stored,
        merged: &UserFigures,
        now: i64,
    ) -> Result<Option<LeaseOutcome>, String> {
        let (month, left, need) = match write.ask {
            Ask::None => return Ok(None),
            Ask::Release { month } => {
                return Ok(Some(LeaseOutcome {
                    month,
                    amount: Money::ZERO,
                    dry_until_ms: None,
                }))
            }
            Ask::Renew { month, left } => (month, left, Money::ZERO),
            Ask::Need { month, need, left } => (month, left, need),
        };
        let others: Vec<&StoredLease> = known
            .leases
            .iter()
            .filter(|l| l.worker != self.worker && l.month == month && l.expires_ms > now)
            .collect();
        let held = others.iter().fold(Money::ZERO, |sum, l| {
            sum.checked_add(l.amount).unwrap_or(sum)
        });
        let month_pools = merged
            .months
            .get(&month)
            .map(|f| f.to_image().map(|i| i.pools))
            .transpose()?
            .unwrap_or_default();
        let remaining = pools::remaining(write.allowance, &month_pools, &merged.credit()?);
        let free = remaining.minus(held).max(Money::ZERO);
        // A fair share of what is free, so that other workers find some too; it shrinks as the
        // budget runs out, down to exactly what a caller needs (the last credits).
        let share = Money::from_attocents(free.attocents() / (2 * (others.len() as i128 + 1)))
            .unwrap_or(Money::ZERO);
        // Never below `left`: the worker may have spent it since the take (the fleet reserved it
        // for this worker, and it is not in the fleet's usage yet).
        let amount = match write.ask {
            Ask::Need { .. } if free >= need => need.max(share).min(free),
            Ask::Need { .. } => Money::ZERO,
            _ => share,
        }
        .max(left);
        // No room for a caller's charge: none until another worker's lease expires (or returns,
        // or the user's figures change, which this worker reads in the feed).
        let dry_until_ms = match write.ask {
            Ask::Need { .. } if amount < need => Some(
                others
                    .iter()
                    .map(|l| l.expires_ms)
                    .min()
                    .unwrap_or(now + 3_600_000),
            ),
            _ => None,
        };
        Ok(Some(LeaseOutcome {
            month,
            amount,
            dry_until_ms,
        }))
    }

    pub(super) fn ask_month(ask: Ask) -> Option<MonthId> {
        match ask {
            Ask::None => None,
            Ask::Renew { month, .. } | Ask::Need { month, .. } | Ask::Release { month } => {
                Some(month)
            }
        }
    }

    pub(super) fn apply_lease(
        &self,
        state: &mut State,
        write: &Write,
        outcome: LeaseOutcome,
        now: i64,
    ) {
        let LeaseOutcome {
            month,
            amount,
            dry_until_ms,
        } = outcome;
        let valid_until = state.clock_read_at + self.options.lease_ttl;
        let dry = match (write.ask, dry_until_ms) {
            (Ask::Need { need, .. }, Some(until_ms)) => {
                let wait = Duration::from_millis(until_ms.saturating_sub(now).max(0) as u64);
                Some((need, state.clock_read_at + wait))
            }
            _ => None,
        };
        self.ledger
            .set_lease(&write.user, month, amount, valid_until, dry);
        match amount.is_positive() {
            true => state.leased.insert(write.user.clone()),
            false => state.leased.remove(&write.user),
        };
    }
}
