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
pub fn apply(split: &Split, pools: &mut MonthPools, credit: &mut Credit) {
    pools.allowance_used = pools.allowance_used.plus(split.allowance);
    pools.purchased_consumed = pools.purchased_consumed.plus(split.purchased);
    pools.overage = pools.overage.plus(split.overage);
    credit.consumed = credit.consumed.plus(split.purchased);
}

/// The overuse multiple crossed by a month total going from `before` to `after`: the whole
/// multiple of the allowance (>= 2) that `after` reached and `before` had not.
pub fn overuse_multiple_crossed(before: Money, after: Money, allowance: Money) -> Option<i128> {
    if !allowance.is_positive() || after <= before {
        return None;
    }
    let multiple = |total: Money| total.attocents().div_euclid(allowance.attocents());
    let reached = multiple(after);
    (reached >= 2 && reached > multiple(before)).then_some(reached)
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
            remaining: (allowance - allowance_used).max(0) + (purchased - consumed),
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
    fn overuse_is_reported_once_per_whole_multiple_from_two() {
        assert_eq!(overuse_multiple_crossed(m(150), m(199), m(100)), None);
        assert_eq!(overuse_multiple_crossed(m(150), m(200), m(100)), Some(2));
        assert_eq!(overuse_multiple_crossed(m(200), m(250), m(100)), None);
        assert_eq!(overuse_multiple_crossed(m(250), m(420), m(100)), Some(4));
        assert_eq!(overuse_multiple_crossed(m(50), m(150), m(100)), None);
        assert_eq!(overuse_multiple_crossed(m(0), m(500), m(0)), None);
    }
}
