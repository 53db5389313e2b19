//! The two budget pools: the monthly allowance first, then purchased credit, then overage.
//!
//! The system we replace counted overage twice in `remaining`. Here every charge is split so that
//! `allowance + purchased + overage == cost` exactly, and
//! `remaining = max(0, allowance - allowance_used) + (purchased - consumed)`.

use crate::money::Money;

/// Where one month's charges went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonthPools {
    pub allowance_used: Money,
    pub purchased_consumed: Money,
    pub overage: Money,
}

/// A user's purchased credit over its lifetime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Credit {
    pub purchased: Money,
    pub consumed: Money,
}

impl Credit {
    pub fn left(&self) -> Money {
        self.purchased.minus(self.consumed)
    }
}

/// How one charge (or refund, when negative) divides over the pools.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub allowance: Money,
    pub purchased: Money,
    pub overage: Money,
}

/// What a user may still spend this month without going into overage.
pub fn remaining(allowance: Money, pools: &MonthPools, credit: &Credit) -> Money {
    allowance
        .minus(pools.allowance_used)
        .max(Money::ZERO)
        .plus(credit.left())
}

/// Splits `cost` over the pools. A charge fills the allowance, then purchased credit, then
/// overage; a refund (negative cost, from a manual adjustment) gives back in the reverse order,
/// never more than this month took from each pool.
#[inline(always)]
pub fn split(cost: Money, allowance: Money, pools: &MonthPools, credit: &Credit) -> Split {
    if cost.is_negative() {
        let refund = cost.negated();
        let overage = refund.min(pools.overage);
        let purchased = refund.minus(overage).min(pools.purchased_consumed);
        let allowance_part = refund.minus(overage).minus(purchased);
        return Split {
            allowance: allowance_part.negated(),
            purchased: purchased.negated(),
            overage: overage.negated(),
        };
    }
    let room = allowance.minus(pools.allowance_used).max(Money::ZERO);
    let allowance_part = cost.min(room);
    let purchased = cost.minus(allowance_part).min(credit.left());
    Split {
        allowance: allowance_part,
        purchased,
        overage: cost.minus(allowance_part).minus(purchased),
    }
}

/// Records a split. Every sum here is bounded by a month total that was range-checked.
#[inline]
pub fn apply(split: &Split, pools: &mut MonthPools, credit: &mut Credit) {
    pools.allowance_used = pools.allowance_used.plus(split.allowance);
    pools.purchased_consumed = pools.purchased_consumed.plus(split.purchased);
    pools.overage = pools.overage.plus(split.overage);
    credit.consumed = credit.consumed.plus(split.purchased);
}

/// How a manual adjustment of the month total (`set_actor_current_month_usage_total`) divides
/// over the pools. Purchased credit is left alone, as in the seed system: it moves only through
/// `update_addon_credit` and real charges. Raising the total fills the allowance's room, then
/// overage; lowering it takes back overage first, then allowance used. `None` when lowering would
/// have to take back purchased credit this month's usage consumed (the total cannot go below
/// `purchased_consumed` without breaking `allowance + purchased + overage == total`).
pub fn adjustment_split(difference: Money, allowance: Money, pools: &MonthPools) -> Option<Split> {
    if difference.is_negative() {
        let take_back = difference.negated();
        let overage = take_back.min(pools.overage);
        let allowance_part = take_back.minus(overage);
        if allowance_part > pools.allowance_used {
            return None;
        }
        return Some(Split {
            allowance: allowance_part.negated(),
            purchased: Money::ZERO,
            overage: overage.negated(),
        });
    }
    let room = allowance.minus(pools.allowance_used).max(Money::ZERO);
    let allowance_part = difference.min(room);
    Some(Split {
        allowance: allowance_part,
        purchased: Money::ZERO,
        overage: difference.minus(allowance_part),
    })
}

/// What a month's usage cost beyond what purchased credit paid for: the figure overuse alarms
/// are counted on ("net of purchased credit").
pub fn usage_net_of_credit(pools: &MonthPools) -> Money {
    pools.allowance_used.plus(pools.overage)
}

/// The overuse alarm a charge calls for, if any: `Some(2^k)` when usage net of purchased credit
/// went from `before` to `after` across `2^k` times the allowance (k >= 1), having been at least
/// the allowance already. So a user is paged at 2x, 4x, 8x ... of the allowance: at most
/// log2(10^18 µ¢ / allowance) alarms per month (about 35 on the 25,000,000 µ¢ free plan), never
/// one per call, and never for a single jump from under the allowance (as the newest seed system
/// does). Shifts and compares only: this runs on every charge of a user over the allowance.
pub fn overuse_multiple_crossed(before: Money, after: Money, allowance: Money) -> Option<i128> {
    let (before, after, allowance) = (before.attocents(), after.attocents(), allowance.attocents());
    if allowance <= 0 || before < allowance || after < allowance.saturating_mul(2) {
        return None;
    }
    // The largest power of two `multiple` with `allowance * multiple <= after`.
    let mut shift = allowance.leading_zeros() - after.leading_zeros();
    if allowance << shift > after {
        shift -= 1;
    }
    let threshold = allowance << shift;
    (shift >= 1 && before < threshold).then_some(1i128 << shift)
}

/// A month's budget in whole microcents, rounded so that the documented identities hold on the
/// reported integers themselves:
/// `allowance_used + consumed_this_month + overage == round(month total)` and
/// `remaining == max(0, allowance - allowance_used) + (purchased - consumed)`.
///
/// Rounding each figure on its own (half up) would break them by 1 µ¢ when prices have
/// fractions: 0.5 + 0.5 is 1, but round(0.5) + round(0.5) is 2. So the month's pools are rounded
/// as running sums (allowance, allowance + purchased, total) and reported as differences, and
/// `remaining` is computed from the rounded figures. Decisions (`try_increment_usage`, the
/// credit checks) never use these: they compare exact values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundedBudget {
    pub allowance: i128,
    pub allowance_used: i128,
    pub consumed_this_month: i128,
    pub overage: i128,
    pub purchased: i128,
    pub consumed: i128,
    /// What outstanding holds reserve (`holds.rs`).
    pub held: i128,
    /// `max(0, allowance - allowance_used) + (purchased - consumed) - held`, never below 0.
    pub remaining: i128,
}

impl RoundedBudget {
    pub fn of(allowance: Money, pools: &MonthPools, credit: &Credit) -> RoundedBudget {
        let allowance_used = pools.allowance_used.to_microcents_half_up();
        let through_purchased = pools
            .allowance_used
            .plus(pools.purchased_consumed)
            .to_microcents_half_up();
        let total = pools
            .allowance_used
            .plus(pools.purchased_consumed)
            .plus(pools.overage)
            .to_microcents_half_up();
        let allowance = allowance.to_microcents_half_up();
        let purchased = credit.purchased.to_microcents_half_up();
        let consumed = credit.consumed.to_microcents_half_up();
        RoundedBudget {
            allowance,
            allowance_used,
            consumed_this_month: through_purchased - allowance_used,
            overage: total - through_purchased,
            purchased,
            consumed,
            held: 0,
            remaining: (allowance - allowance_used).max(0) + (purchased - consumed),
        }
    }

    /// The budget with `held` (what outstanding holds reserve) taken from what remains.
    pub fn with_held(self, held: Money) -> RoundedBudget {
        let held = held.to_microcents_half_up();
        RoundedBudget {
            held,
            remaining: (self.remaining - held).max(0),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(microcents: i128) -> Money {
        Money::from_microcents(microcents).unwrap()
    }

    fn charge(cost: i128, allowance: i128, pools: &mut MonthPools, credit: &mut Credit) -> Split {
        let s = split(m(cost), m(allowance), pools, credit);
        apply(&s, pools, credit);
        s
    }

    #[test]
    fn allowance_then_purchased_then_overage() {
        let mut pools = MonthPools::default();
        let mut credit = Credit {
            purchased: m(50),
            consumed: m(0),
        };
        assert_eq!(remaining(m(100), &pools, &credit), m(150));
        let s = charge(120, 100, &mut pools, &mut credit);
        assert_eq!(
            s,
            Split {
                allowance: m(100),
                purchased: m(20),
                overage: m(0)
            }
        );
        let s = charge(40, 100, &mut pools, &mut credit);
        assert_eq!(
            s,
            Split {
                allowance: m(0),
                purchased: m(30),
                overage: m(10)
            }
        );
        assert_eq!(remaining(m(100), &pools, &credit), m(0));
        assert_eq!(credit.consumed, m(50));
        assert_eq!(pools.overage, m(10));
    }

    #[test]
    fn refunds_go_back_in_reverse_order() {
        let mut pools = MonthPools::default();
        let mut credit = Credit {
            purchased: m(50),
            consumed: m(0),
        };
        charge(170, 100, &mut pools, &mut credit);
        let s = charge(-40, 100, &mut pools, &mut credit);
        assert_eq!(
            s,
            Split {
                allowance: m(0),
                purchased: m(-20),
                overage: m(-20)
            }
        );
        let s = charge(-130, 100, &mut pools, &mut credit);
        assert_eq!(
            s,
            Split {
                allowance: m(-100),
                purchased: m(-30),
                overage: m(0)
            }
        );
        assert_eq!(pools, MonthPools::default());
        assert_eq!(credit.consumed, m(0));
    }

    #[test]
    fn rounded_figures_keep_the_identities() {
        let half = Money::from_attocents(500_000_000_000).unwrap();
        let pools = MonthPools {
            allowance_used: Money::ZERO,
            purchased_consumed: half,
            overage: half,
        };
        let credit = Credit {
            purchased: m(10),
            consumed: half,
        };
        let rounded = RoundedBudget::of(Money::ZERO, &pools, &credit);
        assert_eq!(
            rounded.allowance_used + rounded.consumed_this_month + rounded.overage,
            1
        );
        assert_eq!(rounded.remaining, rounded.purchased - rounded.consumed);
        let pools = MonthPools {
            allowance_used: half,
            purchased_consumed: half,
            overage: half,
        };
        let rounded = RoundedBudget::of(m(3), &pools, &credit);
        assert_eq!(
            (
                rounded.allowance_used,
                rounded.consumed_this_month,
                rounded.overage
            ),
            (1, 0, 1)
        );
        assert_eq!(rounded.remaining, (3 - 1) + (10 - 1));
    }

    #[test]
    fn overuse_is_reported_at_powers_of_two_from_over_the_allowance() {
        assert_eq!(overuse_multiple_crossed(m(150), m(199), m(100)), None);
        assert_eq!(overuse_multiple_crossed(m(150), m(200), m(100)), Some(2));
        assert_eq!(overuse_multiple_crossed(m(200), m(250), m(100)), None);
        assert_eq!(overuse_multiple_crossed(m(250), m(399), m(100)), None);
        assert_eq!(overuse_multiple_crossed(m(250), m(420), m(100)), Some(4));
        assert_eq!(overuse_multiple_crossed(m(400), m(800), m(100)), Some(8));
        assert_eq!(overuse_multiple_crossed(m(100), m(1_700), m(100)), Some(16));
        // A single jump from under the allowance pages nobody.
        assert_eq!(overuse_multiple_crossed(m(50), m(150), m(100)), None);
        assert_eq!(overuse_multiple_crossed(m(99), m(10_000), m(100)), None);
        assert_eq!(overuse_multiple_crossed(m(0), m(500), m(0)), None);
        // Every multiple from 2 up to the ledger's range, counted one unit at a time near each.
        let limit = Money::from_microcents(1_000_000_000_000_000_000).unwrap();
        let allowance = m(25_000_000);
        let mut alarms = 0;
        let mut total = allowance;
        while total < limit {
            let next = total.plus(total.min(limit.minus(total)));
            if overuse_multiple_crossed(total, next, allowance).is_some() {
                alarms += 1;
            }
            total = next;
        }
        assert_eq!(alarms, 35);
    }

    #[test]
    fn adjustments_leave_purchased_credit_alone() {
        let pools = MonthPools {
            allowance_used: m(100),
            purchased_consumed: m(50),
            overage: m(20),
        };
        let up = adjustment_split(m(30), m(100), &pools).unwrap();
        assert_eq!(
            (up.allowance, up.purchased, up.overage),
            (m(0), m(0), m(30))
        );
        let down = adjustment_split(m(-60), m(100), &pools).unwrap();
        assert_eq!(
            (down.allowance, down.purchased, down.overage),
            (m(-40), m(0), m(-20))
        );
        assert_eq!(adjustment_split(m(-121), m(100), &pools), None);
        let room = MonthPools::default();
        let up = adjustment_split(m(130), m(100), &room).unwrap();
        assert_eq!((up.allowance, up.overage), (m(100), m(30)));
    }
}
