//! The in-memory ledger: per-user accounts, per-app records and pools.
//!
//! # Concurrency
//! Accounts live in a lock-free map (papaya): finding an account never blocks. Each account has
//! its own small mutex, so different users never contend; the lock is held only for the
//! arithmetic of one charge (no allocation in the common case, never across Python code or I/O).
//! Calls for one user are ordered by that mutex on purpose: each charge's split over allowance ->
//! purchased credit -> overage, and the affordability decision of `try_increment_usage`, depend on
//! every earlier charge of that user, so they must be decided one after the other (this is what
//! makes "16 threads racing for the last credits never overspend" true).
//!
//! A charge takes no other lock: nothing shared by all users is written per call. The global
//! month is summed from the accounts when it is read (`global_usage`); keeping it as a running
//! aggregate, even striped per thread, cost a second lock and two more hash lookups per charge
//! (about a fifth of its instructions, see `benches/RESULTS.md`). The list of users changed since
//! a snapshot is appended to only on a user's first change (see `changes.rs`). Lock order is
//! always account -> change-log stripe.

pub mod app_name;
pub mod changes;
pub mod days;
pub mod holds;
pub mod idempotency;
pub mod image;
mod keyed;
pub mod month;
pub mod pools;
pub mod record;
pub mod replica;
pub mod shared_keys;
pub mod types;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use smallvec::SmallVec;

use crate::costmap::{CostMap, RESERVED_USAGE_TYPES};
use crate::error::{overflow, LedgerError, LedgerResult};
use crate::money::Money;
use app_name::AppName;
use changes::ChangeLog;
use days::{Day, DayReport, MonthDays};
use idempotency::{KeyLimits, UserKeys};
use image::{MonthImage, RecordImage, UserImage};
use month::MonthId;
use pools::{Credit, MonthPools, Split};
use record::{fold_deltas, Delta, TypeId, UsageCounter, UsageRecord, UsageReport, RECORD_LIMITS};
use types::TypeRegistry;

/// A charge's deltas, one per usage type: inline up to 4, so a single increment allocates nothing.
pub type Deltas = smallvec::SmallVec<[Delta; 4]>;

/// The usage type under which `set_month_total` books its difference.
pub const MANUAL_ADJUSTMENT: &str = "manual_adjustment";

/// A refund of usage type `T` is booked as usage type `refund:T` (units refunded, a negative
/// cost): its own record kind in the reports. Charging a type with this prefix is refused.
pub const REFUND_PREFIX: &str = "refund:";

/// What to do with a usage type the cost map does not price, charged without an override.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmapped {
    /// Refuse the call (`UnknownUsageType`).
    Error,
    /// Record it at zero cost and report it in the receipt, so the caller can raise an alarm.
    Free,
}

/// One usage to record.
#[derive(Clone, Copy, Debug)]
pub struct UsageItem<'a> {
    pub usage_type: &'a str,
    pub units: u64,
    /// Cost of the whole item; replaces price x units.
    pub cost_override: Option<Money>,
}

/// Which monthly allowance a charge is decided under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// This allowance.
    Fixed(Money),
    /// The allowance cached in the user's account by `set_plan`, unless it expired by `now_ms`;
    /// then the call returns `LedgerError::PlanNeeded` and changes nothing. Keeping the plan in
    /// the account spares the hot path a second map lookup (and cache miss) per call.
    Cached { now_ms: i64 },
}

/// Whose usage, which month and day, under which plan.
#[derive(Clone, Copy, Debug)]
pub struct Booking<'a> {
    pub user_id: &'a str,
    pub app_id: &'a str,
    pub month: MonthId,
    /// The UTC day of `month` (1..=31) the usage is booked on (`days.rs`), from the same clock
    /// reading as `month` (`MonthId::with_day_from_epoch_ms`).
    pub day: Day,
    pub plan: Plan,
    /// The call's time (epoch ms, the service's clock): holds expire by it.
    pub now_ms: i64,
}

impl<'a> Booking<'a> {
    /// The booking of a call made at `now_ms`: its month and day come from that one reading.
    pub fn at(user_id: &'a str, app_id: &'a str, plan: Plan, now_ms: i64) -> Booking<'a> {
        let (month, day) = MonthId::with_day_from_epoch_ms(now_ms);
        Booking {
            user_id,
            app_id,
            month,
            day,
            plan,
            now_ms,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChargeMode {
    /// Record whatever it costs (overage included).
    Always,
    /// Record only if the user's remaining budget covers the cost.
    IfAffordable,
    /// Book the difference to this month total as `manual_adjustment`.
    SetTotal(Money),
    /// A refund of the usage type with this id (its one delta is `refund:<type>`, negative): never
    /// more units or cost than the actor's app charged of that type this month, net of refunds.
    Refund(TypeId),
}

/// The outcome of a charge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Receipt {
    /// False when `IfAffordable` refused the charge (then nothing was recorded).
    pub accepted: bool,
    /// The allowance the charge was decided under.
    pub allowance: Money,
    pub month_total: Money,
    pub cost: Money,
    pub split: Split,
    /// The power-of-two multiple (>= 2) of the allowance that the month's usage, net of purchased
    /// credit, crossed with no purchased credit left: the caller raises an overuse alarm (see
    /// `pools::overuse_multiple_crossed`).
    pub overuse_multiple: Option<i128>,
    /// Items recorded for free because the cost map has no price for them (`Unmapped::Free`).
    pub unmapped_items: usize,
    /// A fleet replica refused an `IfAffordable` charge because its budget lease does not cover
    /// it: ask the fleet for a larger lease and try again (`replica.rs`).
    pub ask_fleet: bool,
}

/// A user's budget for one month, every figure exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub allowance: Money,
    pub pools: MonthPools,
    pub credit: Credit,
    /// What the user's outstanding holds reserve (`holds.rs`).
    pub held: Money,
    /// What the user may still spend: allowance left plus purchased credit left, net of `held`
    /// (below zero when charges made after a hold took what it reserved).
    pub remaining: Money,
}

/// One user: lifetime credit and every month it has used.
#[derive(Default)]
pub struct Account {
    state: Mutex<AccountState>,
}

/// A user's account, kept by a caller that meters the same user again (an `Actor` object, a
/// `Meter`) so that it skips the lookup by user id: a hash of the id and a probe of a map as
/// large as the user base, cold in cache for all but the hottest users. Accounts are never
/// removed from a ledger, so a handle stays the user's account for the ledger's life.
pub type AccountHandle = Arc<Account>;

/// The accounts map, pinned (its entries stay valid while this lives).
type Accounts<'map> = papaya::HashMapRef<
    'map,
    Box<str>,
    AccountHandle,
    foldhash::fast::RandomState,
    papaya::LocalGuard<'map>,
>;

/// The user's account, created empty if the user has none yet. It looks the user up first:
/// inserting allocates the key, which a user seen before does not need.
fn account_in<'a>(accounts: &'a Accounts<'_>, user_id: &str) -> &'a AccountHandle {
    match accounts.get(user_id) {
        Some(account) => account,
        None => accounts.get_or_insert_with(Box::from(user_id), AccountHandle::default),
    }
}

/// Distinguishes ledgers, so a handle is only ever used with the ledger it came from.
static NEXT_LEDGER_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Default)]
struct AccountState {
    credit: Credit,
    /// The user's monthly allowance and when it expires (epoch ms), from `set_plan`.
    plan: Option<(Money, i64)>,
    /// The id and allowance of the plan the user was last resolved to: kept in the store, so
    /// that a report on a store names each user's plan (the plan cache above is not stored).
    last_plan: Option<(Arc<str>, Money)>,
    months: Months,
    /// Months changed since a snapshot last took this account (only when tracking changes).
    changed_months: Vec<MonthId>,
    /// Whether the user id is already in the change log.
    queued: bool,
    /// Whether a look-up of the user's plan saw an actor with an email (`note_email_seen`):
    /// the user's default plan is then that of an actor with one, until `forget_plan`. Kept in
    /// the store with the holds (`holds::EMAIL_SEEN_ID`).
    email_seen: bool,
    /// A fleet replica's budget lease for this user (`replica.rs`); boxed, as most accounts of
    /// a fleet hold none and every account of a single process none.
    lease: Option<Box<replica::Lease>>,
    /// Outstanding holds (`holds.rs`); none for most users.
    holds: Option<holds::Holds>,
    /// The user's idempotency keys (`idempotency.rs`); boxed, so that an account without keys
    /// pays one word.
    keys: Option<Box<UserKeys>>,
}

/// One user's month. Per-type counters are kept once, per app; the user's own per-type figures
/// are their sums (computed when read). Keeping a second, user-level copy doubled the memory
/// per record (419 B per record at 1,000,000 records in `make bench`) and the work per charge.
#[derive(Default)]
struct UserMonth {
    total: Money,
    count: u64,
    /// Per app, sorted by name (a user acts through few apps: bisection, no hashing). The first
    /// app, and a short name, are stored inline (see `Months`).
    apps: SmallVec<[(AppName, UsageRecord); 1]>,
    pools: MonthPools,
    /// The same figures per day and usage type, over all apps (`days.rs`).
    days: MonthDays,
}

/// A user's months, sorted. Most users have one or two: a vector of exactly that size costs far
/// less than a `BTreeMap` node (room for 11 months, about 1 KB) per user, which was a third of
/// the memory per record at 1,000,000 records (`benches/run.py --only memory`).
#[derive(Default)]
///
/// The first month is stored inline in the account, as are the month's first app and its name
/// (if short): a charge then follows no pointer from the account to its usage record but the
/// record's own table. Each pointer followed was a cache miss for all but the hottest users:
/// `increment_usage` over 20,000 warm (user, type) pairs in random order took 714-1,113 ns per
/// call before, 424-466 ns after (release builds side by side, three runs each).
struct Months(SmallVec<[(MonthId, UserMonth); 1]>);

impl Months {
    fn find(&self, month: &MonthId) -> Result<usize, usize> {
        self.0.binary_search_by_key(month, |(m, _)| *m)
    }

    fn get(&self, month: &MonthId) -> Option<&UserMonth> {
        self.find(month).ok().map(|at| &self.0[at].1)
    }

    fn get_mut(&mut self, month: &MonthId) -> Option<&mut UserMonth> {
        self.find(month).ok().map(|at| &mut self.0[at].1)
    }

    fn get_or_default(&mut self, month: MonthId) -> &mut UserMonth {
        let at = self.find(&month).unwrap_or_else(|at| {
            self.0.insert(at, (month, UserMonth::default()));
            at
        });
        &mut self.0[at].1
    }

    fn insert(&mut self, month: MonthId, user_month: UserMonth) {
        *self.get_or_default(month) = user_month;
    }

    fn keys(&self) -> impl Iterator<Item = &MonthId> {
        self.0.iter().map(|(month, _)| month)
    }
}

impl std::ops::Index<&MonthId> for Months {
    type Output = UserMonth;

    fn index(&self, month: &MonthId) -> &UserMonth {
        self.get(month).expect("a changed month exists")
    }
}

impl UserMonth {
    /// Checks that the user's own figures stay in range after `deltas`: the month total and
    /// count, and per usage type the sum over its apps.
    fn check_user(&self, deltas: &[Delta], cost: Money) -> LedgerResult<()> {
        let total = self.total.checked_add(cost).filter(|t| t.fits_record());
        total.ok_or_else(|| overflow("the actor's month total"))?;
        let calls = deltas
            .iter()
            .try_fold(self.count, |n, d| n.checked_add(d.count));
        calls.ok_or_else(|| overflow("the actor's month count"))?;
        for delta in deltas {
            let (mut units, mut type_cost) = (u128::from(delta.units), delta.cost.attocents());
            for (_, record) in &self.apps {
                if let Some(counter) = record.counter(delta.usage_type) {
                    units += counter.units;
                    type_cost += counter.cost.attocents();
                }
            }
            if units > RECORD_LIMITS.units {
                return Err(overflow("the actor's month units"));
            }
            if type_cost.abs() > RECORD_LIMITS.money {
                return Err(overflow("the actor's month cost"));
            }
        }
        Ok(())
    }

    /// The user's month summed over its apps.
    fn report(&self) -> UsageReport {
        let mut report = UsageReport::default();
        for (_, record) in &self.apps {
            report
                .add(record)
                .expect("a user's apps sum to its month, which is within the per-actor limits");
        }
        report
    }

    /// Whether this app is the only one with usage in the month (then its record's figures are
    /// the user's own).
    fn has_only_app(&self, app_id: &str) -> bool {
        matches!(self.apps.as_slice(), [(app, _)] if app.is(app_id))
    }

    /// Adds a checked charge's cost and calls to the month, and its split to the pools and
    /// `credit` (its record was written by the caller).
    #[inline]
    fn book(&mut self, cost: Money, calls: u64, split: &Split, credit: &mut Credit) {
        pools::apply(split, &mut self.pools, credit);
        self.total = self.total.plus(cost);
        self.count += calls;
    }

    fn app(&self, app_id: &str) -> Option<&UsageRecord> {
        let at = self
            .apps
            .binary_search_by(|(app, _)| app.cmp_str(app_id))
            .ok()?;
        Some(&self.apps[at].1)
    }

    fn app_mut(&mut self, app_id: &str) -> &mut UsageRecord {
        let at = match self.apps.binary_search_by(|(app, _)| app.cmp_str(app_id)) {
            Ok(at) => at,
            Err(at) => {
                self.apps
                    .insert(at, (AppName::new(app_id), UsageRecord::default()));
                at
            }
        };
        &mut self.apps[at].1
    }
}

impl AccountState {
    fn allowance(&self, plan: Plan) -> LedgerResult<Money> {
        match (plan, self.plan) {
            (Plan::Fixed(allowance), _) => Ok(allowance),
            (Plan::Cached { now_ms }, Some((allowance, expires_at_ms)))
                if expires_at_ms > now_ms =>
            {
                Ok(allowance)
            }
            (Plan::Cached { .. }, _) => Err(LedgerError::PlanNeeded),
        }
    }

    fn budget(&self, month: MonthId, plan: Plan, now_ms: i64) -> LedgerResult<Budget> {
        let allowance = self.allowance(plan)?;
        let pools = self.months.get(&month).map(|m| m.pools).unwrap_or_default();
        let held = self.held(now_ms);
        Ok(Budget {
            allowance,
            pools,
            credit: self.credit,
            held,
            remaining: pools::remaining(allowance, &pools, &self.credit).minus(held),
        })
    }

    fn month_mut(&mut self, month: MonthId) -> &mut UserMonth {
        self.months.get_or_default(month)
    }

    /// Notes a change for the next snapshot; queues the user on the first change since the last.
    fn mark_changed(&mut self, user_id: &str, month: Option<MonthId>, changes: &ChangeLog) {
        if let Some(month) = month {
            if !self.changed_months.contains(&month) {
                self.changed_months.push(month);
            }
        }
        if !self.queued {
            self.queued = true;
            changes.push(user_id);
        }
    }
}

pub struct Ledger {
    types: TypeRegistry,
    unmapped: Unmapped,
    /// Whether charges note what changed for snapshots (only with a store: otherwise the list of
    /// changed users would grow without anyone taking it).
    track_changes: bool,
    accounts: papaya::HashMap<Box<str>, AccountHandle, foldhash::fast::RandomState>,
    changes: ChangeLog,
    id: u64,
    /// Set by `seal` (when the service closes): every later write is refused.
    sealed: AtomicBool,
    /// Bumped by every `forget_plan`, so that a plan resolved while an invalidation ran is never
    /// cached over it (`set_plan_if`).
    plan_epoch: AtomicU64,
    /// Set for a fleet replica: affordability is decided on budget leases (`replica.rs`).
    leases: Option<Arc<replica::LeaseRules>>,
    /// The next hold's id (`holds.rs`).
    next_hold_id: AtomicU64,
    /// How long idempotency keys are kept, and how many (`idempotency.rs`).
    key_limits: KeyLimits,
    /// Caller keys held by every account together (monthly keys excluded): touched by keyed
    /// calls only, never by the hot path.
    key_count: AtomicUsize,
    /// The latest time a keyed call saw (epoch ms): a snapshot prunes with it (the service's
    /// clock may be Python code, which the snapshot thread does not call).
    keys_now_ms: AtomicI64,
    /// When the last sweep of every account's keys ran (see `sweep_keys`).
    last_sweep_ms: AtomicI64,
}

impl Ledger {
    pub fn new(cost_map: Arc<CostMap>, unmapped: Unmapped) -> Ledger {
        let types = TypeRegistry::new(cost_map);
        types.intern(MANUAL_ADJUSTMENT);
        Ledger {
            types,
            unmapped,
            track_changes: false,
            accounts: crate::ledger::record::new_concurrent_map(),
            changes: ChangeLog::new(),
            id: NEXT_LEDGER_ID.fetch_add(1, Ordering::Relaxed),
            sealed: AtomicBool::new(false),
            plan_epoch: AtomicU64::new(0),
            leases: None,
            next_hold_id: AtomicU64::new(holds::first_hold_id()),
            key_limits: KeyLimits::default(),
            key_count: AtomicUsize::new(0),
            keys_now_ms: AtomicI64::new(i64::MIN),
            last_sweep_ms: AtomicI64::new(i64::MIN),
        }
    }

    /// Sets how long idempotency keys are kept and how many (set once, before use).
    pub fn with_key_limits(mut self, limits: KeyLimits) -> Ledger {
        self.key_limits = limits;
        self
    }

    pub fn key_limits(&self) -> KeyLimits {
        self.key_limits
    }

    pub fn cost_map(&self) -> &CostMap {
        self.types.cost_map()
    }

    pub fn type_name(&self, id: TypeId) -> Arc<str> {
        self.types.name(id)
    }

    /// Price of `units` of a priced usage type (for affordability checks; records nothing).
    pub fn cost_of(&self, usage_type: &str, units: u64) -> LedgerResult<Money> {
        validate_usage_type(usage_type)?;
        match self.types.priced(usage_type) {
            Some(id) => self
                .cost_map()
                .entry(id)
                .price
                .cost_of(units)
                .ok_or_else(|| overflow("the cost")),
            None => self.unpriced_cost(usage_type),
        }
    }

    /// `cost_of` of a type the plain index does not price: a table's (an error asking for the
    /// request, `with_tables`), free, or unknown. Out of line: plain prices never come here.
    #[cold]
    #[inline(never)]
    fn unpriced_cost(&self, usage_type: &str) -> LedgerResult<Money> {
        if self.cost_map().table(usage_type).is_some() {
            return Err(LedgerError::PricedByTable(usage_type.to_string()));
        }
        match self.unmapped {
            Unmapped::Free => Ok(Money::ZERO),
            Unmapped::Error => Err(LedgerError::UnknownUsageType(usage_type.to_string())),
        }
    }

    /// `items` with every item of a table-priced type (and no cost override) given its cost for
    /// this request as a cost override: the request's size for a tier is the sum of the counted
    /// types' units in `items`, the prices are those in force at `at_ms` (the service's clock), in
    /// `service_tier` (`price_table`). Plain-priced items are left as they are. Out of line.
    #[cold]
    #[inline(never)]
    pub fn with_tables<'a>(
        &self,
        items: &[UsageItem<'a>],
        service_tier: Option<&str>,
        at_ms: i64,
    ) -> LedgerResult<Vec<UsageItem<'a>>> {
        let cost_map = self.cost_map();
        let mut priced = items.to_vec();
        for item in &mut priced {
            if item.cost_override.is_some() || cost_map.index_of(item.usage_type).is_some() {
                continue;
            }
            let Some(entry) = cost_map.table(item.usage_type) else {
                continue;
            };
            validate_usage_type(item.usage_type)?;
            let own = item.usage_type;
            let size_of = |count: Option<&[Box<str>]>| -> u64 {
                items
                    .iter()
                    .filter(|other| match count {
                        Some(names) => names.iter().any(|n| **n == *other.usage_type),
                        None => other.usage_type == own,
                    })
                    .fold(0u64, |size, other| size.saturating_add(other.units))
            };
            let price = entry
                .table
                .price_for(at_ms, service_tier, size_of)
                .map_err(|reason| LedgerError::InvalidInput(format!("{own:?}: {reason}")))?;
            let cost = price
                .cost_of(item.units)
                .ok_or_else(|| overflow("the cost of the call"))?;
            item.cost_override = Some(cost);
        }
        Ok(priced)
    }

    /// Turns items into one delta per usage type; validates everything before anything is
    /// recorded. Returns the deltas and how many items were unpriced and free.
    fn deltas_of(&self, items: &[UsageItem<'_>]) -> LedgerResult<(Deltas, usize)> {
        let mut deltas = Deltas::with_capacity(items.len());
        let mut unmapped_items = 0;
        for item in items {
            validate_usage_type(item.usage_type)?;
            if item.units == 0 && item.cost_override.is_none() {
                // Records nothing, as documented; the type must still be one it could record.
                self.check_item(item)?;
                continue;
            }
            let (usage_type, cost) = match (self.types.priced(item.usage_type), item.cost_override)
            {
                (Some(id), Some(cost)) => (id, cost),
                (Some(id), None) => {
                    let cost = self.cost_map().entry(id).price.cost_of(item.units);
                    (id, cost.ok_or_else(|| overflow("the cost of the call"))?)
                }
                (None, Some(cost)) => (self.types.intern(item.usage_type), cost),
                (None, None) if self.cost_map().table(item.usage_type).is_some() => {
                    return Err(LedgerError::PricedByTable(item.usage_type.to_string()))
                }
                (None, None) if self.unmapped == Unmapped::Free => {
                    unmapped_items += 1;
                    (self.types.intern(item.usage_type), Money::ZERO)
                }
                (None, None) => {
                    return Err(LedgerError::UnknownUsageType(item.usage_type.to_string()))
                }
            };
            deltas.push(Delta {
                usage_type,
                units: item.units,
                cost,
                count: 1,
            });
        }
        if deltas.len() > 1 {
            fold_deltas(&mut deltas)?;
        }
        Ok((deltas, unmapped_items))
    }

    /// What `items` would cost as one batch (a cost override replaces price x units), validated
    /// as a charge would validate them; records and interns nothing.
    pub fn cost_of_items(&self, items: &[UsageItem<'_>]) -> LedgerResult<Money> {
        let mut total = Money::ZERO;
        for item in items {
            let cost = match item.cost_override {
                Some(cost) => {
                    validate_usage_type(item.usage_type)?;
                    cost
                }
                None => self.cost_of(item.usage_type, item.units)?,
            };
            total = total
                .checked_add(cost)
                .ok_or_else(|| overflow("the cost of the items"))?;
        }
        Ok(total)
    }

    /// Checks one item as a charge would (a valid usage type, priced or overridden or recorded
    /// for free), recording and interning nothing: the system actor's calls are checked too.
    pub fn check_item(&self, item: &UsageItem<'_>) -> LedgerResult<()> {
        validate_usage_type(item.usage_type)?;
        let known = item.cost_override.is_some()
            || self.unmapped == Unmapped::Free
            || self.types.priced(item.usage_type).is_some()
            || self.cost_map().table(item.usage_type).is_some();
        match known {
            true => Ok(()),
            false => Err(LedgerError::UnknownUsageType(item.usage_type.to_string())),
        }
    }

    /// Refuses every later write (charges, credit) with `LedgerError::Closed`, and returns once
    /// every write that started before is complete (so a last snapshot taken after this holds all
    /// of them). A write checks the flag under its account's lock; taking each account's lock
    /// once after setting it waits out any write that saw it unset. O(accounts): for `close()`.
    pub fn seal(&self) {
        self.sealed.store(true, Ordering::SeqCst);
        for (_, account) in self.accounts.pin().iter() {
            drop(account.state.lock());
        }
    }

    fn refuse_if_sealed(&self) -> LedgerResult<()> {
        match self.sealed.load(Ordering::SeqCst) {
            true => Err(LedgerError::Closed),
            false => Ok(()),
        }
    }

    /// This ledger's id: unique in the process, for callers that keep `AccountHandle`s.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The user's account if it has one (creating nothing).
    pub fn existing_account(&self, user_id: &str) -> Option<AccountHandle> {
        self.accounts.pin().get(user_id).map(Arc::clone)
    }

    /// The user's account, created (empty) if the user has none yet.
    pub fn account(&self, user_id: &str) -> AccountHandle {
        Arc::clone(account_in(&self.accounts.pin(), user_id))
    }

    /// Records `items` for one user, atomically: the user's month record, its app's record and the
    /// pools all change together, or (on any error or refusal) nothing changes at all. `account`
    /// is the booking user's, if the caller keeps it (`account`); otherwise it is looked up.
    /// `items` are one request, as for `charge_request` without a service tier.
    pub fn charge(
        &self,
        account: Option<&Account>,
        booking: &Booking<'_>,
        items: &[UsageItem<'_>],
        mode: ChargeMode,
    ) -> LedgerResult<Receipt> {
        self.charge_request(account, booking, items, mode, None)
    }

    /// `charge` of `items` as one request: a table-priced type is priced for it
    /// (`with_tables`) at the booking's time, in `service_tier`.
    #[inline]
    pub fn charge_request(
        &self,
        account: Option<&Account>,
        booking: &Booking<'_>,
        items: &[UsageItem<'_>],
        mode: ChargeMode,
        service_tier: Option<&str>,
    ) -> LedgerResult<Receipt> {
        // The plain path is the one before tables existed: a table is only found in the error
        // branch `?` took before, when the plain index missed (`deltas_of`).
        let (deltas, unmapped_items) = match self.deltas_of(items) {
            Ok(deltas) => deltas,
            Err(LedgerError::PricedByTable(_)) => {
                return self.charge_by_tables(account, booking, items, mode, service_tier)
            }
            Err(error) => return Err(error),
        };
        self.charge_deltas(account, booking, &deltas, unmapped_items, mode)
    }

    #[cold]
    #[inline(never)]
    fn charge_by_tables(
        &self,
        account: Option<&Account>,
        booking: &Booking<'_>,
        items: &[UsageItem<'_>],
        mode: ChargeMode,
        service_tier: Option<&str>,
    ) -> LedgerResult<Receipt> {
        let priced = self.with_tables(items, service_tier, booking.now_ms)?;
        let (deltas, unmapped_items) = self.deltas_of(&priced)?;
        self.charge_deltas(account, booking, &deltas, unmapped_items, mode)
    }

    /// Records `units` of a usage type the cost map prices (`TypeRegistry::priced`), at its
    /// price: `charge` of one item without finding the type by name again.
    pub fn charge_priced(
        &self,
        account: &Account,
        booking: &Booking<'_>,
        usage_type: TypeId,
        units: u64,
    ) -> LedgerResult<Receipt> {
        if units == 0 {
            // Records nothing, as `charge` documents; still the user's month total.
            return self.charge_deltas(Some(account), booking, &[], 0, ChargeMode::Always);
        }
        let price = self.cost_map().entry(usage_type).price;
        let delta = Delta {
            usage_type,
            units,
            cost: price
                .cost_of(units)
                .ok_or_else(|| overflow("the cost of the call"))?,
            count: 1,
        };
        self.charge_deltas(Some(account), booking, &[delta], 0, ChargeMode::Always)
    }

    /// The id of a usage type to charge by `charge_priced`: `Some` if the cost map prices it,
    /// `None` if it is recorded for free (`Unmapped::Free`: charge it by name, which raises the
    /// alarm), and an error if it is invalid or unknown (`Unmapped::Error`).
    pub fn meter_type(&self, usage_type: &str) -> LedgerResult<Option<TypeId>> {
        validate_usage_type(usage_type)?;
        match self.types.priced(usage_type) {
            Some(id) => Ok(Some(id)),
            // A table-priced type is charged by name (`charge`, which asks for `with_tables`).
            None if self.unmapped == Unmapped::Free => Ok(None),
            None if self.cost_map().table(usage_type).is_some() => Ok(None),
            None => Err(LedgerError::UnknownUsageType(usage_type.to_string())),
        }
    }

    fn charge_deltas(
        &self,
        account: Option<&Account>,
        booking: &Booking<'_>,
        deltas: &[Delta],
        unmapped_items: usize,
        mode: ChargeMode,
    ) -> LedgerResult<Receipt> {
        let accounts;
        let account = match account {
            Some(account) => account,
            None => {
                accounts = self.accounts.pin();
                match accounts.get(booking.user_id) {
                    Some(account) => account,
                    None => {
                        if mode == ChargeMode::IfAffordable {
                            let refused = self.refusal_without_account(|state| {
                                self.charge_locked(state, booking, deltas, unmapped_items, mode)
                            })?;
                            if let Some(refused) = refused {
                                return Ok(refused);
                            }
                        }
                        account_in(&accounts, booking.user_id)
                    }
                }
            }
        };
        let mut state = account.state.lock();
        self.refuse_if_sealed()?;
        self.charge_locked(&mut state, booking, deltas, unmapped_items, mode)
    }

    /// For a strict call (`try_*`, `reserve`) of a user without an account: `decide` runs on an
    /// empty account that is then dropped, so that a refusal, or an error, leaves nothing behind
    /// (issue 18: a million refused calls with random user ids kept a million accounts, 923 MB).
    /// `Some(receipt)` when refused; `None` when it would be accepted: the caller makes the
    /// account and decides again under its lock (a user's first accepted call does the work
    /// twice; a user with an account never comes here). On a fleet's replica (which holds an
    /// account for every user the fleet has figures of, as of its last sync) an empty account
    /// holds no lease, so a charge it could afford asks the fleet, which needs the account; a
    /// refusal that asks nothing of the fleet, or a cost beyond the user's whole allowance (all
    /// a user without figures can have), is final here too.
    fn refusal_without_account(
        &self,
        decide: impl FnOnce(&mut AccountState) -> LedgerResult<Receipt>,
    ) -> LedgerResult<Option<Receipt>> {
        self.refuse_if_sealed()?;
        // `queued`: an acceptance decided here must not put the user in the change log.
        let mut empty = AccountState {
            queued: true,
            ..AccountState::default()
        };
        let receipt = decide(&mut empty)?;
        let refused = !receipt.accepted && (!receipt.ask_fleet || receipt.cost > receipt.allowance);
        Ok(refused.then_some(Receipt {
            ask_fleet: false,
            ..receipt
        }))
    }

    /// `charge_deltas` with the account's lock held: a keyed call runs it in the same critical
    /// section as its key's check and claim (`keyed`). Inlined, so that a call without a key is
    /// exactly the code it was before keys existed.
    #[inline(always)]
    fn charge_locked(
        &self,
        state: &mut AccountState,
        booking: &Booking<'_>,
        deltas: &[Delta],
        unmapped_items: usize,
        mode: ChargeMode,
    ) -> LedgerResult<Receipt> {
        let adjustment: [Delta; 1];
        let mut deltas = deltas;
        let allowance = state.allowance(booking.plan)?;
        let credit = state.credit;
        let before = state
            .months
            .get(&booking.month)
            .map_or(Money::ZERO, |m| m.total);
        if let ChargeMode::SetTotal(target) = mode {
            let difference = target
                .checked_sub(before)
                .ok_or_else(|| overflow("the adjustment"))?;
            if difference != Money::ZERO {
                adjustment = [Delta {
                    usage_type: self.types.intern(MANUAL_ADJUSTMENT),
                    units: 0,
                    cost: difference,
                    count: 1,
                }];
                deltas = &adjustment;
            }
        }
        if let ChargeMode::Refund(of) = mode {
            let month = state.months.get(&booking.month);
            check_refund(month.and_then(|m| m.app(booking.app_id)), of, &deltas[0]).map_err(
                |error| error.unwrap_or_else(|| refund_of_nothing_charged(&self.type_name(of))),
            )?;
        }
        if deltas.is_empty() {
            return Ok(Receipt {
                accepted: true,
                month_total: before,
                unmapped_items,
                ..Receipt::default()
            });
        }
        let cost = deltas
            .iter()
            .try_fold(Money::ZERO, |sum, d| sum.checked_add(d.cost));
        let cost = cost.ok_or_else(|| overflow("the cost of the call"))?;
        let calls = deltas.iter().map(|d| d.count).sum::<u64>();
        // Affordability is decided after validation: a call that could never be recorded raises
        // the same error whether or not the user could afford it.
        let checks = mode == ChargeMode::IfAffordable && cost.is_positive();
        // A fleet's replica decides on its lease (`replica.rs`): out of line, so that a single
        // process's charge stays as small as it was.
        // Outstanding holds are budget spoken for (`holds.rs`): on a fleet they are kept in the
        // lease, so the lease must cover them and the charge together.
        let held = match checks {
            true => state.held(booking.now_ms),
            false => Money::ZERO,
        };
        let (lease_short, ask_fleet) = match &self.leases {
            Some(rules) if checks => state.lease_decision(booking.month, cost.plus(held), rules),
            _ => (false, false),
        };
        let refuses = |pools: &MonthPools| {
            checks
                && (lease_short || pools::remaining(allowance, pools, &credit).minus(held) < cost)
        };
        let refused = Receipt {
            accepted: false,
            allowance,
            month_total: before,
            cost,
            ask_fleet,
            ..Receipt::default()
        };
        let mut new_credit = credit;
        let split_of = |pools: &MonthPools| match mode {
            ChargeMode::SetTotal(_) => adjustment_split(cost, allowance, pools),
            _ => Ok(pools::split(cost, allowance, pools, &credit)),
        };
        let (split, month_total) = match state.months.get_mut(&booking.month) {
            // The common call: one usage type, to a month whose only app is this one. That app's
            // record then holds the actor's own figures, so one hash lookup checks and writes.
            Some(month) if deltas.len() == 1 && month.has_only_app(booking.app_id) => {
                let record = &mut month.apps[0].1;
                let prepared = record.prepare(&deltas[0], "the actor's month")?;
                if refuses(&month.pools) {
                    return Ok(refused);
                }
                let split = split_of(&month.pools)?;
                prepared.commit();
                month.book(cost, calls, &split, &mut new_credit);
                month.days.add(booking.day, deltas);
                (split, month.total)
            }
            _ => {
                let empty_month = UserMonth::default();
                let current = state.months.get(&booking.month).unwrap_or(&empty_month);
                // When this app is the month's only one, checking its record below checks the
                // user's own figures too (they are the same): one hash probe per type, not two.
                if !current.has_only_app(booking.app_id) {
                    current.check_user(deltas, cost)?;
                }
                // A record that does not exist yet is checked as an empty one: a new app's (or
                // month's) record starts from the deltas alone.
                let no_record = UsageRecord::default();
                let app_record = current.app(booking.app_id).unwrap_or(&no_record);
                app_record.check(deltas, "the app's month")?;
                if refuses(&current.pools) {
                    return Ok(refused);
                }
                let split = split_of(&current.pools)?;
                // Everything is validated: commit. Nothing below can fail.
                let month = state.month_mut(booking.month);
                month.app_mut(booking.app_id).apply(deltas);
                month.book(cost, calls, &split, &mut new_credit);
                month.days.add(booking.day, deltas);
                (split, month.total)
            }
        };
        state.credit = new_credit;
        if self.leases.is_some() {
            state.spend_lease(booking.month, cost);
        }
        if self.track_changes {
            state.mark_changed(booking.user_id, Some(booking.month), &self.changes);
        }
        // Only a charge that went into overage with no credit left can cross an overuse multiple.
        let overuse_multiple = match new_credit.left() == Money::ZERO && split.overage.is_positive()
        {
            true => {
                let net_after = pools::usage_net_of_credit(&state.months[&booking.month].pools);
                let net_before = net_after.minus(split.allowance).minus(split.overage);
                pools::overuse_multiple_crossed(net_before, net_after, allowance)
            }
            false => None,
        };
        Ok(Receipt {
            accepted: true,
            allowance,
            month_total,
            cost,
            split,
            overuse_multiple,
            unmapped_items,
            ask_fleet: false,
        })
    }

    /// Refunds `units` and `cost` of `usage_type` to the booking's actor this month: booked as
    /// `refund:<usage_type>` (a negative cost), which gives the cost back to the pools in the
    /// reverse order of a charge (overage, then purchased credit, then allowance). `cost` `None`
    /// is the price of `units`. More than the actor's app was charged of that type this month,
    /// net of earlier refunds, is refused (`InvalidInput`), and so is a refund of nothing.
    pub fn refund(
        &self,
        account: Option<&Account>,
        booking: &Booking<'_>,
        usage_type: &str,
        units: u64,
        cost: Option<Money>,
    ) -> LedgerResult<Receipt> {
        let (delta, mode) = self.refund_delta(usage_type, units, cost)?;
        self.charge_deltas(account, booking, &[delta], 0, mode)
    }

    /// A refund's delta (`refund:<usage_type>`, negative) and the mode that checks it.
    fn refund_delta(
        &self,
        usage_type: &str,
        units: u64,
        cost: Option<Money>,
    ) -> LedgerResult<(Delta, ChargeMode)> {
        let cost = self.refund_cost(usage_type, units, cost)?;
        let of = self
            .types
            .existing(usage_type)
            .ok_or_else(|| refund_of_nothing_charged(usage_type))?;
        let delta = Delta {
            usage_type: self.types.intern(&format!("{REFUND_PREFIX}{usage_type}")),
            units,
            cost: cost.negated(),
            count: 1,
        };
        Ok((delta, ChargeMode::Refund(of)))
    }

    /// The cost of a refund, its input checked: a valid usage type, and `cost` (default: the
    /// price of `units`) or `units` above 0.
    pub fn refund_cost(
        &self,
        usage_type: &str,
        units: u64,
        cost: Option<Money>,
    ) -> LedgerResult<Money> {
        validate_usage_type(usage_type)?;
        let cost = match cost {
            Some(cost) => cost,
            None => self.cost_of(usage_type, units)?,
        };
        if units == 0 && cost == Money::ZERO {
            return Err(LedgerError::InvalidInput(
                "nothing to refund: give units or a cost above 0".into(),
            ));
        }
        Ok(cost)
    }

    /// Adds purchased credit to a user (lifetime, used after the monthly allowance).
    pub fn add_purchased(&self, user_id: &str, amount: Money) -> LedgerResult<Credit> {
        check_purchase(amount)?;
        let accounts = self.accounts.pin();
        let mut state = account_in(&accounts, user_id).state.lock();
        self.refuse_if_sealed()?;
        self.add_purchased_locked(&mut state, user_id, amount)
    }

    /// `add_purchased` with the account's lock held (and `amount` checked).
    fn add_purchased_locked(
        &self,
        state: &mut AccountState,
        user_id: &str,
        amount: Money,
    ) -> LedgerResult<Credit> {
        // Purchased credit is a per-actor amount: within 10^18 µ¢ like every other, so that every
        // budget sum stays in range (2 * 10^24 µ¢ of credit once made the budget reads panic).
        let purchased = state
            .credit
            .purchased
            .checked_add(amount)
            .filter(|p| p.fits_record())
            .ok_or_else(|| overflow("the user's purchased credit"))?;
        state.credit.purchased = purchased;
        state.clear_dry();
        if self.track_changes {
            state.mark_changed(user_id, None, &self.changes);
        }
        Ok(state.credit)
    }

    /// Runs `read` on a user's state, or on an empty one for a user never seen (creating nothing).
    fn read_account<T>(&self, user_id: &str, read: impl FnOnce(&AccountState) -> T) -> T {
        let accounts = self.accounts.pin();
        match accounts.get(user_id) {
            Some(account) => read(&account.state.lock()),
            None => read(&AccountState::default()),
        }
    }

    /// The user's budget for `month` under `plan`, at `now_ms` (for the holds).
    pub fn budget(
        &self,
        user_id: &str,
        month: MonthId,
        plan: Plan,
        now_ms: i64,
    ) -> LedgerResult<Budget> {
        self.read_account(user_id, |state| state.budget(month, plan, now_ms))
    }

    /// `budget` of an account the caller keeps (see `AccountHandle`).
    pub fn budget_in(
        &self,
        account: &Account,
        month: MonthId,
        plan: Plan,
        now_ms: i64,
    ) -> LedgerResult<Budget> {
        account.state.lock().budget(month, plan, now_ms)
    }

    /// The plan epoch to read before resolving a plan and pass to `set_plan_if`.
    pub fn plan_epoch(&self) -> u64 {
        self.plan_epoch.load(Ordering::SeqCst)
    }

    /// Caches the user's monthly allowance (plan `plan_id`) until `expires_at_ms` (see
    /// `Plan::Cached`), unless a `forget_plan` ran since `epoch` was read (then the plan may be
    /// stale: the invalidation wins) or the user has no account (a read-only check of a user never
    /// charged allocates nothing). Returns whether it cached it.
    pub fn set_plan_if(
        &self,
        user_id: &str,
        plan_id: &str,
        allowance: Money,
        expires_at_ms: i64,
        epoch: u64,
    ) -> bool {
        let accounts = self.accounts.pin();
        let Some(account) = accounts.get(user_id) else {
            return false;
        };
        let mut state = account.state.lock();
        // Checked under the lock that `forget_plan` clears the plan under, after bumping the
        // epoch: either this sees the bump, or the clear comes after this write.
        if self.plan_epoch.load(Ordering::SeqCst) != epoch {
            return false;
        }
        state.plan = Some((allowance, expires_at_ms));
        // Stored with the user's next change (a charge resolves its plan first): resolving a plan
        // alone writes nothing, so a report that reads a store leaves it as it was.
        let unchanged =
            matches!(&state.last_plan, Some((id, a)) if &**id == plan_id && *a == allowance);
        if !unchanged {
            state.last_plan = Some((Arc::from(plan_id), allowance));
        }
        true
    }

    /// Notes that a look-up of the user's plan saw an actor with an email (`email_seen`), if the
    /// user has an account (a guest's is kept in the plan cache only).
    pub fn note_email_seen(&self, user_id: &str) {
        if let Some(account) = self.accounts.pin().get(user_id) {
            let mut state = account.state.lock();
            if !state.email_seen {
                state.email_seen = true;
                if self.track_changes {
                    state.mark_changed(user_id, None, &self.changes);
                }
            }
        }
    }

    /// Whether a look-up of the user's plan saw an email since its last `forget_plan`.
    pub fn email_seen(&self, user_id: &str) -> bool {
        self.read_account(user_id, |state| state.email_seen)
    }

    /// The id and allowance of the plan the user was last resolved to (kept in the store).
    pub fn last_plan(&self, user_id: &str) -> Option<(String, Money)> {
        self.read_account(user_id, |state| {
            state
                .last_plan
                .as_ref()
                .map(|(id, allowance)| (id.to_string(), *allowance))
        })
    }

    /// Forgets the user's cached allowance; a resolution already running will not cache its
    /// (possibly stale) plan.
    pub fn forget_plan(&self, user_id: &str) {
        self.plan_epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(account) = self.accounts.pin().get(user_id) {
            let mut state = account.state.lock();
            state.plan = None;
            if std::mem::take(&mut state.email_seen) && self.track_changes {
                state.mark_changed(user_id, None, &self.changes);
            }
        }
    }

    /// Drops the allowance cached in the user's account (not the plan epoch: nothing resolved
    /// meanwhile is stale), so that the user's next charge takes the slow path again: when the
    /// month's monthly charges could not be applied at this one (`python::service::keyed`).
    pub fn drop_cached_allowance(&self, user_id: &str) {
        if let Some(account) = self.accounts.pin().get(user_id) {
            account.state.lock().plan = None;
        }
    }

    /// Whether the user has an account (was charged, credited, or metered through a `Meter`).
    pub fn has_account(&self, user_id: &str) -> bool {
        self.accounts.pin().contains_key(user_id)
    }

    /// The user's month record (all apps together).
    pub fn user_usage(&self, user_id: &str, month: MonthId) -> UsageReport {
        self.read_account(user_id, |state| {
            state
                .months
                .get(&month)
                .map(UserMonth::report)
                .unwrap_or_default()
        })
    }

    /// The user's month record for one app.
    pub fn app_usage(&self, user_id: &str, app_id: &str, month: MonthId) -> UsageReport {
        self.read_account(user_id, |state| {
            let record = state.months.get(&month).and_then(|m| m.app(app_id));
            record.map(UsageReport::of).unwrap_or_default()
        })
    }

    /// The user's month per day (over all apps), days in order: `days::UNDATED` first if the
    /// month was loaded from a store that kept no days.
    pub fn user_days(&self, user_id: &str, month: MonthId) -> Vec<DayReport> {
        self.read_account(user_id, |state| {
            state
                .months
                .get(&month)
                .map(|m| m.days.report())
                .unwrap_or_default()
        })
    }

    /// `(app, total, count)` for every app the user used this month, sorted by app.
    pub fn app_totals(&self, user_id: &str, month: MonthId) -> Vec<(String, Money, u64)> {
        let mut totals = self.read_account(user_id, |state| match state.months.get(&month) {
            Some(m) => m
                .apps
                .iter()
                .map(|(app, r)| (app.as_str().to_string(), r.total, r.count))
                .collect(),
            None => Vec::new(),
        });
        totals.sort();
        totals
    }

    /// Months in which the user has records, oldest first.
    pub fn months_of(&self, user_id: &str) -> Vec<MonthId> {
        self.read_account(user_id, |state| state.months.keys().copied().collect())
    }

    /// The month summed over every user, each read under its own lock (so each user's figures
    /// are consistent; calls made while the sum runs may or may not be in it). It walks every
    /// account: 7-10 ms per 10,000 users of 10 usage types each (release build, mostly cache
    /// misses, one or two per account).
    pub fn global_usage(&self, month: MonthId) -> LedgerResult<UsageReport> {
        let accounts = self.accounts.pin();
        let mut report = UsageReport::default();
        for (_, account) in accounts.iter() {
            if let Some(user_month) = account.state.lock().months.get(&month) {
                for (_, record) in &user_month.apps {
                    report
                        .add(record)
                        .ok_or_else(|| overflow("the global month"))?;
                }
            }
        }
        Ok(report)
    }

    /// Number of users with an account.
    pub fn user_count(&self) -> usize {
        self.accounts.len()
    }

    /// `(user, total, count)` of every user with usage in `month`.
    pub fn users_in_month(&self, month: MonthId) -> Vec<(String, Money, u64)> {
        let accounts = self.accounts.pin();
        let mut users = Vec::new();
        for (user_id, account) in accounts.iter() {
            if let Some(m) = account.state.lock().months.get(&month) {
                users.push((user_id.to_string(), m.total, m.count));
            }
        }
        users
    }

    /// Makes charges note what they change, for `take_changes` (set once, before use).
    pub fn track_changes(mut self) -> Ledger {
        self.track_changes = true;
        self
    }

    /// Copies of every user changed since the last call: its credit and its changed months.
    /// Each user is copied under its own lock, one at a time: metering never pauses as a whole.
    pub fn take_changes(&self) -> Vec<UserImage> {
        let accounts = self.accounts.pin();
        let mut changes = Vec::new();
        for user_id in self.changes.take() {
            let Some(account) = accounts.get(&*user_id) else {
                continue;
            };
            let mut state = account.state.lock();
            state.queued = false;
            let changed = std::mem::take(&mut state.changed_months);
            let months = changed
                .iter()
                .map(|m| (*m, self.month_image(&state.months[m])))
                .collect();
            let keys = self.take_keys(&mut state);
            changes.push(UserImage {
                user_id: user_id.into_string(),
                credit: state.credit,
                plan: state.last_plan.as_ref().map(|(id, a)| (id.to_string(), *a)),
                holds: state.hold_list(),
                months,
                keys,
            });
        }
        changes
    }

    fn record_image(&self, record: &UsageRecord) -> RecordImage {
        let mut by_type: Vec<_> = record
            .counters()
            .map(|(id, c)| (self.type_name(id).to_string(), c))
            .collect();
        by_type.sort_by(|a, b| a.0.cmp(&b.0));
        RecordImage {
            total: record.total,
            count: record.count,
            by_type,
        }
    }

    fn month_image(&self, month: &UserMonth) -> MonthImage {
        let mut apps: Vec<_> = month
            .apps
            .iter()
            .map(|(app, r)| (app.as_str().to_string(), self.record_image(r)))
            .collect();
        apps.sort_by(|a, b| a.0.cmp(&b.0));
        let mut days: days::DayImages = month
            .days
            .counters()
            .map(|(day, id, c)| (day, self.type_name(id).to_string(), c))
            .collect();
        days.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        MonthImage {
            usage: self.report_image(&month.report()),
            apps,
            pools: month.pools,
            days,
        }
    }

    /// A user's month summed over its apps, as stored (counts fit: they are a user's calls).
    fn report_image(&self, report: &UsageReport) -> RecordImage {
        let by_type = report.by_type.iter().map(|(id, t)| {
            let count = u64::try_from(t.count).expect("a user's calls fit in u64");
            (
                self.type_name(*id).to_string(),
                UsageCounter {
                    units: t.units,
                    cost: t.cost,
                    count,
                },
            )
        });
        let count = u64::try_from(report.count).expect("a user's calls fit in u64");
        RecordImage {
            total: report.total,
            count,
            by_type: by_type.collect(),
        }
    }

    fn record_from_image(&self, image: &RecordImage) -> UsageRecord {
        let counters = image
            .by_type
            .iter()
            .map(|(name, c)| (self.types.intern(name), *c));
        UsageRecord::from_counters(image.total, image.count, counters)
    }

    /// Loads users read from a store into an empty ledger.
    pub fn restore(&self, users: Vec<UserImage>) {
        let accounts = self.accounts.pin();
        for user in users {
            let (holds, email_seen) = holds::HoldBook::from_image(user.holds);
            let mut state = AccountState {
                credit: user.credit,
                last_plan: user.plan.map(|(id, allowance)| (Arc::from(id), allowance)),
                holds,
                email_seen,
                ..AccountState::default()
            };
            for (month, image) in user.months {
                // The store checked that the app records add up to the month's (`MonthImage::check`).
                state.months.insert(month, self.user_month_of(&image));
            }
            if let Some(keys) = user.keys {
                self.restore_keys(&mut state, keys);
            }
            let account = Account {
                state: Mutex::new(state),
            };
            accounts.insert(user.user_id.into_boxed_str(), Arc::new(account));
        }
    }
}

/// Refuses a negative purchase of credit.
fn check_purchase(amount: Money) -> LedgerResult<()> {
    match amount.is_negative() {
        true => Err(LedgerError::InvalidInput(
            "purchased credit cannot be negative".into(),
        )),
        false => Ok(()),
    }
}

/// `pools::adjustment_split`, with the refusal as the error the caller sees.
fn adjustment_split(cost: Money, allowance: Money, pools: &MonthPools) -> LedgerResult<Split> {
    pools::adjustment_split(cost, allowance, pools).ok_or_else(|| {
        LedgerError::InvalidInput(format!(
            "the month total cannot go below the {} µ¢ that purchased credit paid this month: \
             purchased credit moves only through update_addon_credit",
            pools.purchased_consumed.to_microcents_half_up()
        ))
    })
}

/// The error of a refund of a type the actor was not charged for.
pub fn refund_of_nothing_charged(usage_type: &str) -> LedgerError {
    LedgerError::InvalidInput(format!(
        "cannot refund {usage_type:?}: the actor was not charged for it this month"
    ))
}

/// Refuses a refund (`delta`, of usage type `of`) beyond what `record` (the actor's app's month)
/// holds of that type, net of the refunds booked before: `Err(None)` when it holds none of it
/// (the caller names the type), `Err(Some(error))` when the refund is larger.
fn check_refund(
    record: Option<&UsageRecord>,
    of: TypeId,
    delta: &Delta,
) -> Result<(), Option<LedgerError>> {
    let counter = |id| record.and_then(|r| r.counter(id));
    let charged = counter(of).ok_or(None)?;
    let refunded = counter(delta.usage_type).unwrap_or_default();
    refund_within(&charged, &refunded, delta.units, delta.cost.negated()).map_err(Some)
}

/// Refuses a refund of `units` and `refund` (positive) beyond what `charged` holds net of
/// `refunded` (the `refund:` counter, its cost negative): the one rule of a refund's size, for
/// the ledger and for a fleet's keyed refunds, decided on the shared ledger's figures.
pub fn refund_within(
    charged: &UsageCounter,
    refunded: &UsageCounter,
    units: u64,
    refund: Money,
) -> LedgerResult<()> {
    let units_left = charged.units.saturating_sub(refunded.units);
    let cost_left = charged.cost.plus(refunded.cost); // refunds are booked negative
    if u128::from(units) > units_left || refund > cost_left {
        return Err(LedgerError::InvalidInput(format!(
            "cannot refund {} units and {} µ¢: the actor's app was charged {} units and {} µ¢ of \
             this usage type this month, net of refunds",
            units,
            refund.to_microcent_string(),
            units_left,
            cost_left.max(Money::ZERO).to_microcent_string()
        )));
    }
    Ok(())
}

fn validate_usage_type(usage_type: &str) -> LedgerResult<()> {
    if usage_type.is_empty() {
        return Err(LedgerError::InvalidInput(
            "usage type must be a non-empty string".into(),
        ));
    }
    if RESERVED_USAGE_TYPES.contains(&usage_type) {
        return Err(LedgerError::InvalidInput(format!(
            "usage type {usage_type:?} is reserved: reports use it for the total"
        )));
    }
    if usage_type.starts_with(REFUND_PREFIX) {
        return Err(LedgerError::InvalidInput(format!(
            "usage type {usage_type:?} is reserved: {REFUND_PREFIX:?} names the refunds of a type"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
