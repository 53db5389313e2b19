//! The ledger as one worker's replica of a fleet's shared ledger (`crate::fleet`).
//!
//! Each account holds the fleet's figures as last synced, plus what this worker recorded since
//! (unsent). The sync thread takes a user's changed months (`take_for_fleet`), sends what is
//! unsent, and adds the difference between the fleet's new figures and what the account held
//! (`rebase`), so that charges made meanwhile stay on top.
//!
//! Strict spending (`try_increment_usage`) is decided on a budget lease: a slice of the user's
//! budget this worker reserved in the shared ledger. A charge of the lease's month spends from
//! it; an affordability check that the lease does not cover is refused with `ask_fleet`, so
//! that the caller asks the fleet for more and tries again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::image::UserImage;
use super::month::MonthId;
use super::{account_in, AccountState, Ledger, MonthImage, UserMonth};
use crate::fleet::figures::{MonthFigures, UserFigures};
use crate::money::Money;

/// A slice of one month's budget reserved for this worker.
#[derive(Clone, Copy, Debug)]
pub struct Lease {
    pub month: MonthId,
    /// What the fleet holds reserved for this worker, as of the last sync.
    pub granted: Money,
    /// Spent from it since the last sync.
    pub spent: Money,
    /// When it stops being usable here: before the fleet lets it expire.
    pub valid_until: Instant,
    /// The fleet had no room for a charge of this cost or more, until the instant given (when
    /// another worker's lease expires) or until this user's figures change: such charges are
    /// refused without asking again.
    pub dry: Option<(Money, Instant)>,
}

impl Lease {
    pub fn left(&self) -> Money {
        self.granted.minus(self.spent).max(Money::ZERO)
    }
}

/// How leases are used (set for a fleet's replica).
pub struct LeaseRules {
    /// False while the shared ledger cannot be reached.
    pub online: AtomicBool,
    /// Whether leases already held may be spent while the shared ledger cannot be reached.
    pub serve_offline: bool,
}

/// What the sync thread takes of one user.
pub struct Taken {
    /// The changed months (all of their figures), the credit and the last plan.
    pub image: UserImage,
    /// The user's cached allowance, if its plan is cached.
    pub allowance: Option<Money>,
    /// The lease, its part left (now also `granted`) and what was spent since the last take.
    pub lease: Option<(Lease, Money)>,
    /// The lease was given up at the take (see `Release`): its write returns it to the fleet.
    pub released: bool,
}

/// Which leases a take gives up. A lease is given up at the take, under the account's lock, so
/// that nothing is spent from it while the write that returns it is on its way: spent then, it
/// would be usage the fleet holds no lease for, and another worker could be granted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    None,
    /// Leases nothing was spent from since the last take.
    Unspent,
    /// Every lease (closing).
    All,
    /// The lease, unless holds are kept in it (before a keyed call decides on the fleet's
    /// figures: `fleet::sync::keyed`).
    UnlessHolds,
}

impl AccountState {
    /// Whether the lease falls short of `cost` in `month`, and if so whether the fleet is worth
    /// asking (not when it is known to have no room: `Lease::dry`).
    #[inline(never)]
    pub(super) fn lease_decision(
        &self,
        month: MonthId,
        cost: Money,
        rules: &LeaseRules,
    ) -> (bool, bool) {
        let short = !self.lease_covers(month, cost, rules);
        (short, short && !self.lease_dry(month, cost))
    }

    /// Whether the fleet is known to have no room for `cost` in `month` (see `Lease::dry`).
    fn lease_dry(&self, month: MonthId, cost: Money) -> bool {
        match &self.lease {
            Some(lease) if lease.month == month => {
                matches!(lease.dry, Some((at_least, until)) if cost >= at_least && Instant::now() < until)
            }
            _ => false,
        }
    }

    /// Forgets that the fleet had no room: the user's budget changed.
    pub(super) fn clear_dry(&mut self) {
        if let Some(lease) = &mut self.lease {
            lease.dry = None;
        }
    }

    /// Whether the lease (usable now) covers `cost` in `month`.
    fn lease_covers(&self, month: MonthId, cost: Money, rules: &LeaseRules) -> bool {
        let usable = rules.serve_offline || rules.online.load(Ordering::Relaxed);
        match &self.lease {
            Some(lease) if usable && lease.month == month && lease.left() >= cost => {
                Instant::now() < lease.valid_until
            }
            _ => false,
        }
    }

    /// Spends a recorded charge's cost from the lease of its month.
    #[inline(never)]
    pub(super) fn spend_lease(&mut self, month: MonthId, cost: Money) {
        if let Some(lease) = &mut self.lease {
            if lease.month == month && cost.is_positive() {
                lease.spent = lease.spent.plus(cost);
            }
        }
    }
}

impl Ledger {
    /// Makes this ledger a fleet replica whose affordability checks spend budget leases.
    pub fn with_leases(mut self, serve_offline: bool) -> Ledger {
        self.leases = Some(Arc::new(LeaseRules {
            online: AtomicBool::new(false),
            serve_offline,
        }));
        self
    }

    /// Whether the last sync reached the shared ledger (true for a ledger of one process).
    pub fn is_online(&self) -> bool {
        self.leases
            .as_ref()
            .is_none_or(|rules| rules.online.load(Ordering::Relaxed))
    }

    /// Records whether the shared ledger was reached by the last sync.
    pub fn set_online(&self, online: bool) {
        if let Some(rules) = &self.leases {
            rules.online.store(online, Ordering::Relaxed);
        }
    }

    fn take_account(&self, user_id: &str, state: &mut AccountState, release: Release) -> Taken {
        state.queued = false;
        let changed = std::mem::take(&mut state.changed_months);
        let months = changed
            .iter()
            .map(|m| (*m, self.month_image(&state.months[m])))
            .collect();
        let mut released = false;
        // A lease that keeps holds is kept (renewed): the holds are budget reserved in it.
        let has_holds = state.has_holds();
        let lease = state.lease.as_deref_mut().map(|lease| {
            let spent = lease.spent;
            lease.granted = lease.left();
            lease.spent = Money::ZERO;
            let gives_up = match release {
                Release::None => false,
                Release::Unspent => spent == Money::ZERO && !has_holds,
                Release::All => true,
                Release::UnlessHolds => !has_holds,
            };
            if gives_up && lease.dry.is_none() {
                lease.granted = Money::ZERO;
                released = true;
            }
            (*lease, spent)
        });
        Taken {
            image: UserImage {
                user_id: user_id.to_string(),
                credit: state.credit,
                plan: state.last_plan.as_ref().map(|(id, a)| (id.to_string(), *a)),
                // A worker's holds live in its lease, not in the shared ledger.
                holds: Vec::new(),
                months,
                // Idempotency keys are not on the shared ledger yet: a fleet refuses them.
                keys: None,
            },
            allowance: state.plan.map(|(allowance, _)| allowance),
            lease,
            released,
        }
    }

    /// Takes every user changed since the last take, and the users of `also` (those holding a
    /// lease, to renew or return it), each under its own lock.
    pub fn take_for_fleet(&self, also: &[String], release: Release) -> Vec<Taken> {
        let accounts = self.accounts.pin();
        let mut users: Vec<Box<str>> = self.changes.take();
        users.extend(also.iter().map(|u| Box::from(u.as_str())));
        users.sort();
        users.dedup();
        users
            .into_iter()
            .filter_map(|user_id| {
                let account = accounts.get(&*user_id)?;
                Some(self.take_account(&user_id, &mut account.state.lock(), release))
            })
            .collect()
    }

    /// Takes one user (to ask the fleet for a lease now).
    pub fn take_user_for_fleet(&self, user_id: &str) -> Option<Taken> {
        self.take_user_for_fleet_releasing(user_id, Release::None)
    }

    /// Takes one user, giving up its lease as `release` says.
    pub fn take_user_for_fleet_releasing(&self, user_id: &str, release: Release) -> Option<Taken> {
        let accounts = self.accounts.pin();
        let account = accounts.get(user_id)?;
        let taken = self.take_account(user_id, &mut account.state.lock(), release);
        Some(taken)
    }

    /// Adds `difference` (the fleet's new figures minus what the account held of them) to the
    /// user's account, creating it if needed; the plan becomes `plan` if given. Refuses (changing
    /// nothing) figures no account can hold.
    pub fn rebase(
        &self,
        user_id: &str,
        difference: &UserFigures,
        plan: Option<&(String, Money)>,
    ) -> Result<(), String> {
        let accounts = self.accounts.pin();
        let mut state = account_in(&accounts, user_id).state.lock();
        if difference.is_zero() {
            // The common case (this worker's own write, nobody else's in between): the account
            // already holds the fleet's figures; only a new plan is taken.
            set_last_plan(&mut state, plan);
            return Ok(());
        }
        let mut months: Vec<(MonthId, MonthImage)> = Vec::new();
        for (month, figures) in &difference.months {
            let mut new = match state.months.get(month) {
                Some(current) => MonthFigures::of(&self.month_image(current)),
                None => MonthFigures::default(),
            };
            new.add(figures, 1);
            let image = new
                .to_image()
                .map_err(|e| format!("month {}: {e}", month.label()))?;
            months.push((*month, image));
        }
        let credit = UserFigures {
            credit: [
                state.credit.purchased.attocents() + difference.credit[0],
                state.credit.consumed.attocents() + difference.credit[1],
            ],
            ..UserFigures::default()
        }
        .credit()?;
        // Everything is checked: write.
        for (month, image) in months {
            let user_month = self.user_month_of(&image);
            state.months.insert(month, user_month);
        }
        state.credit = credit;
        state.clear_dry();
        set_last_plan(&mut state, plan);
        Ok(())
    }

    /// Sets the user's lease for `month` to `granted` (what the fleet now holds for this
    /// worker), keeping what was spent since the take; zero removes it, unless `dry` says that
    /// the fleet had no room for a charge (then that is kept: see `Lease::dry`).
    pub fn set_lease(
        &self,
        user_id: &str,
        month: MonthId,
        granted: Money,
        valid_until: Instant,
        dry: Option<(Money, Instant)>,
    ) {
        let accounts = self.accounts.pin();
        let mut state = account_in(&accounts, user_id).state.lock();
        let spent = match &state.lease {
            Some(lease) if lease.month == month => lease.spent,
            _ => Money::ZERO,
        };
        state.lease = match granted.is_positive() || dry.is_some() {
            true => Some(Box::new(Lease {
                month,
                granted,
                spent,
                valid_until,
                dry,
            })),
            false => None,
        };
    }

    /// Whether the user holds a lease for `month` (for tests and reports).
    pub fn lease_left(&self, user_id: &str, month: MonthId) -> Money {
        self.read_account(user_id, |state| match &state.lease {
            Some(lease) if lease.month == month => lease.left(),
            _ => Money::ZERO,
        })
    }

    pub(super) fn user_month_of(&self, image: &MonthImage) -> UserMonth {
        let mut apps: smallvec::SmallVec<[(super::AppName, super::UsageRecord); 1]> = image
            .apps
            .iter()
            .map(|(app, r)| (super::AppName::new(app), self.record_from_image(r)))
            .collect();
        apps.sort_by(|a, b| a.0.cmp(&b.0));
        UserMonth {
            total: image.usage.total,
            count: image.usage.count,
            apps,
            pools: image.pools,
            days: super::MonthDays::from_image(image, |name| self.types.intern(name)),
        }
    }
}

/// Takes `plan` (the fleet's) as the user's last plan, if given and different.
fn set_last_plan(state: &mut AccountState, plan: Option<&(String, Money)>) {
    if let Some((id, allowance)) = plan {
        let same = matches!(&state.last_plan, Some((held, a)) if **held == **id && a == allowance);
        if !same {
            state.last_plan = Some((Arc::from(id.as_str()), *allowance));
        }
    }
}
