//! The plan cache: each user's plan (`Policy`), resolved through the subscription events when
//! the cache misses and kept for `subscription_ttl`; the methods that read or drop it.

use pyo3::prelude::*;

use super::{as_actor, MeteringCore};
use crate::error::LedgerError;
use crate::ledger::month::MonthId;
use crate::ledger::Plan;
use crate::money::Money;
use crate::python::actor::PyActor;
use crate::python::convert;
use crate::python::errors::ledger_error;

/// A resolved plan, cached per user until `expires_at_ms`.
pub(super) struct CachedPlan {
    policy: Py<PyAny>,
    plan_id: std::sync::Arc<str>,
    allowance: Money,
    expires_at_ms: i64,
    /// Cached for a user without an account (read-only checks of a user never charged): such
    /// entries are bounded (`GUEST_PLANS_MAX`), since any request may name a new user id.
    guest: bool,
    /// Whether an actor of this user with an email was seen when its plan was resolved, this
    /// time or before: then the user's default plan is that of a user with an email from then on,
    /// whichever form of `Actor` makes the next look-up (issue 18: `Actor("bob")` and
    /// `Actor("bob", email=...)` took turns, and the allowance flipped every `subscription_ttl`).
    /// Kept while the entry is, expired or not, and in the user's account (and so its store:
    /// `Ledger::note_email_seen`); `invalidate_subscription` forgets both.
    email_seen: bool,
}

/// At most this many plans of users without an account are cached. When a new one would pass
/// the bound, every such entry is dropped (the cache refills with the users checked again): a
/// flood of random user ids costs at most this many entries (about 100 bytes each), never more.
pub(super) const GUEST_PLANS_MAX: usize = 65_536;

/// Until when a plan is cached in the user's account: its expiry, but never past the month's
/// end, so that the user's first charge of a month takes the slow path, where the month's
/// monthly charges are applied (`with_plan_charging`), and the hot path needs no check of its
/// own for them. The plan itself stays cached (`plans`) for its whole TTL: at the month's end
/// only the account's copy is refreshed, without running the plan events again.
fn in_account_until(expires_at_ms: i64, now_ms: i64) -> i64 {
    expires_at_ms.min(MonthId::from_epoch_ms(now_ms).next().start_epoch_ms())
}

impl MeteringCore {
    /// Reads the user's cached plan if it has not expired.
    fn cached_plan<T>(
        &self,
        user_id: &str,
        now_ms: i64,
        read: impl FnOnce(&CachedPlan) -> T,
    ) -> Option<T> {
        let plans = self.plans.pin();
        plans
            .get(user_id)
            .filter(|plan| plan.expires_at_ms > now_ms)
            .map(read)
    }

    /// Resolves the user's plan through the events (no lock held) and caches it, unless
    /// `invalidate_subscription` ran meanwhile: then the look-up may have read the old plan, so it
    /// is made again (the invalidation wins; after a few tries the plan is used uncached). The
    /// plan of a user who was never charged (no account) is cached as a guest's (bounded, see
    /// `GUEST_PLANS_MAX`), so that a credit gate checking a new user on every request does not
    /// run the events (a database look-up) each time; the system actor's is not cached.
    fn resolve_plan(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        now_ms: i64,
    ) -> PyResult<(Money, Py<PyAny>)> {
        const TRIES: usize = 3;
        let mut tries = 0;
        // Read before the events run (`_plan_events` reads it too, through `_plan_email_seen`).
        let email_seen = actor.email.is_some() || self.plan_email_seen(&actor.user_id);
        loop {
            tries += 1;
            let epoch = self.ledger.plan_epoch();
            let policy = self.hooks()?.resolve_policy.call1(py, (actor_obj,))?;
            let allowance = policy.getattr(py, "monthly_allowance")?;
            let allowance = convert::microcents(allowance.bind(py), "monthly_allowance")?;
            if actor.is_system {
                return Ok((allowance, policy));
            }
            let plan_id: String = policy.getattr(py, "id")?.extract(py)?;
            let expires_at_ms = now_ms.saturating_add(self.subscription_ttl_ms);
            // The hot path reads the allowance from the user's account (no second map lookup).
            let in_account = self.ledger.set_plan_if(
                &actor.user_id,
                &plan_id,
                allowance,
                in_account_until(expires_at_ms, now_ms),
                epoch,
            );
            let invalidated = self.ledger.plan_epoch() != epoch;
            if in_account || !invalidated {
                if email_seen && in_account {
                    self.ledger.note_email_seen(&actor.user_id);
                }
                // Cached in the account, or the user has none: a guest's entry.
                let plan = CachedPlan {
                    policy: policy.clone_ref(py),
                    plan_id: plan_id.into(),
                    allowance,
                    expires_at_ms,
                    guest: !in_account,
                    email_seen,
                };
                self.cache_plan(actor, plan, epoch);
                return Ok((allowance, policy));
            }
            // An invalidation ran during the look-up: read the plan again, a few times at most.
            if tries == TRIES {
                return Ok((allowance, policy));
            }
        }
    }

    /// Whether the user's plan was resolved with an email before (`CachedPlan::email_seen`, or
    /// the account's flag, which the store keeps across a restart).
    fn plan_email_seen(&self, user_id: &str) -> bool {
        let cached = self.plans.pin().get(user_id).is_some_and(|p| p.email_seen);
        cached || self.ledger.email_seen(user_id)
    }

    /// Caches a resolved plan unless an invalidation ran since `epoch` (it wins). A guest's entry
    /// past `GUEST_PLANS_MAX` first drops every guest's entry.
    fn cache_plan(&self, actor: &PyActor, plan: CachedPlan, epoch: u64) {
        let plans = self.plans.pin();
        if plan.guest {
            // Only the guests' own entries are dropped at the bound (not a scan of every user's),
            // and one that became a user's plan since is kept.
            let mut guests = self.guest_plans.lock();
            if guests.len() >= GUEST_PLANS_MAX {
                for user_id in guests.drain(..) {
                    let _ = plans.remove_if(&*user_id, |_, cached| cached.guest);
                }
            }
            guests.push(Box::from(actor.user_id.as_str()));
        }
        plans.insert(Box::from(actor.user_id.as_str()), plan);
        // An invalidation between the check and this insert: it wins.
        if self.ledger.plan_epoch() != epoch {
            plans.remove(actor.user_id.as_str());
        }
    }

    /// The allowance of the user's cached plan when its account holds none (a guest's entry,
    /// or one the account dropped), if fresh. A user charged since it was cached (who has an
    /// account now) gets the plan in its account, where the hot path reads it.
    fn cached_allowance(&self, actor: &PyActor, now_ms: i64) -> Option<Money> {
        if actor.is_system {
            return None;
        }
        let epoch = self.ledger.plan_epoch();
        let (plan_id, allowance, expires_at_ms, email_seen) =
            self.cached_plan(&actor.user_id, now_ms, |plan| {
                let plan_id = plan.plan_id.clone();
                (plan_id, plan.allowance, plan.expires_at_ms, plan.email_seen)
            })?;
        let until = in_account_until(expires_at_ms, now_ms);
        let in_account = self
            .ledger
            .set_plan_if(&actor.user_id, &plan_id, allowance, until, epoch);
        if email_seen && in_account {
            // A guest's plan moving into its new account takes the email with it.
            self.ledger.note_email_seen(&actor.user_id);
        }
        Some(allowance)
    }

    /// The user's plan (its `Policy`), cached or resolved.
    fn policy(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        now_ms: i64,
    ) -> PyResult<Py<PyAny>> {
        // The system actor shares no cache with a user whose id is "system".
        let cached = match actor.is_system {
            true => None,
            false => self.cached_plan(&actor.user_id, now_ms, |plan| plan.policy.clone_ref(py)),
        };
        match cached {
            Some(policy) => Ok(policy),
            None => self
                .resolve_plan(py, actor_obj, actor, now_ms)
                .map(|(_, policy)| policy),
        }
    }

    /// Runs `call` with the plan cached in the user's account; if there is none (or it expired),
    /// resolves it through the events (no lock held) and runs `call` again with it.
    #[inline(always)]
    pub(super) fn with_plan<T>(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        now_ms: i64,
        call: impl Fn(Plan) -> Result<T, LedgerError>,
    ) -> PyResult<T> {
        self.with_plan_then(py, actor_obj, actor, now_ms, false, call)
    }

    /// `with_plan` for a charge: on the slow path, the month's monthly charges are applied first
    /// if they are not yet (`apply_monthly_if_due`). The plan cached in an account expires at
    /// the month's end at the latest (`resolve_plan`), so every user's first charge of a month
    /// comes here, and the hot path pays nothing for monthly charges.
    #[inline(always)]
    pub(super) fn with_plan_charging<T>(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        now_ms: i64,
        call: impl Fn(Plan) -> Result<T, LedgerError>,
    ) -> PyResult<T> {
        self.with_plan_then(py, actor_obj, actor, now_ms, true, call)
    }

    #[inline(always)]
    fn with_plan_then<T>(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        now_ms: i64,
        monthly: bool,
        call: impl Fn(Plan) -> Result<T, LedgerError>,
    ) -> PyResult<T> {
        match call(Plan::Cached { now_ms }) {
            Err(LedgerError::PlanNeeded) => {
                let allowance = match self.cached_allowance(actor, now_ms) {
                    Some(allowance) => allowance,
                    None => self.resolve_plan(py, actor_obj, actor, now_ms)?.0,
                };
                if monthly {
                    self.apply_monthly_if_due(py, actor_obj, actor, now_ms, allowance)?;
                }
                call(Plan::Fixed(allowance)).map_err(ledger_error)
            }
            result => result.map_err(ledger_error),
        }
    }
}

#[pymethods]
impl MeteringCore {
    /// The actor's plan (cached per user for `subscription_ttl` seconds).
    fn get_actor_subscription(
        &self,
        py: Python<'_>,
        actor: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let actor_ref = as_actor(actor)?;
        let now_ms = self.now_ms(py)?;
        self.policy(py, actor, actor_ref, now_ms)
    }

    /// Whether an email was seen for the user when its plan was resolved (since the last
    /// `invalidate_subscription`): its default plan is then that of an actor with an email.
    fn _plan_email_seen(&self, user_id: &str) -> bool {
        self.plan_email_seen(user_id)
    }

    /// How many plans are cached, and how many of them are guests' (users without an account):
    /// tests check that the guests' entries stay bounded.
    fn _plan_cache_sizes(&self) -> (usize, usize) {
        let plans = self.plans.pin();
        let guests = plans.iter().filter(|(_, plan)| plan.guest).count();
        (plans.len(), guests)
    }

    /// Forgets the cached plan of a user, so the next call resolves it again. A look-up already
    /// running when this is called does not cache the plan it read (it may be the old one).
    fn invalidate_subscription(&self, user_id: &str) -> PyResult<()> {
        self.ensure_open()?;
        // The ledger first: it bumps the plan epoch that running look-ups check.
        self.ledger.forget_plan(user_id);
        self.plans.pin().remove(user_id);
        if let Some(fleet) = self.fleet() {
            // The other workers drop it at their next sync.
            fleet.publish_invalidation(user_id);
        }
        Ok(())
    }
}
