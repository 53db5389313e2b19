//! The plan cache: each user's plan (`Policy`), resolved through the subscription events when
//! the cache misses and kept for `subscription_ttl`; the methods that read or drop it.

use pyo3::prelude::*;

use super::{as_actor, MeteringCore};
use crate::error::LedgerError;
use crate::ledger::Plan;
use crate::money::Money;
use crate::python::actor::PyActor;
use crate::python::convert;
use crate::python::errors::ledger_error;

/// A resolved plan, cached per user until `expires_at_ms`.
pub(super) struct CachedPlan {
    policy: Py<PyAny>,
    expires_at_ms: i64,
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
    /// is made again (the invalidation wins; after a few tries the plan is used uncached). A user
    /// who was never charged (no account) and the system actor are not cached at all.
    fn resolve_plan(
        &self,
        py: Python<'_>,
        actor_obj: &Bound<'_, PyAny>,
        actor: &PyActor,
        now_ms: i64,
    ) -> PyResult<(Money, Py<PyAny>)> {
        const TRIES: usize = 3;
        let mut tries = 0;
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
            if self
                .ledger
                .set_plan_if(&actor.user_id, &plan_id, allowance, expires_at_ms, epoch)
            {
                let cached = CachedPlan {
                    policy: policy.clone_ref(py),
                    expires_at_ms,
                };
                let plans = self.plans.pin();
                plans.insert(Box::from(actor.user_id.as_str()), cached);
                // An invalidation between the check above and this insert: it wins.
                if self.ledger.plan_epoch() != epoch {
                    plans.remove(actor.user_id.as_str());
                }
                return Ok((allowance, policy));
            }
            // Not cached: the user has no account (nothing to do), or an invalidation ran during
            // the look-up (read the plan again, a few times at most).
            let invalidated = self.ledger.plan_epoch() != epoch;
            if !invalidated || tries == TRIES {
                return Ok((allowance, policy));
            }
        }
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
        match call(Plan::Cached { now_ms }) {
            Err(LedgerError::PlanNeeded) => {
                let (allowance, _) = self.resolve_plan(py, actor_obj, actor, now_ms)?;
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
