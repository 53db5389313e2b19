//! The sync thread of one worker, and the budget-lease requests of its callers.
//!
//! Every `interval` (and for `flush` and `close`) a round:
//! 1. sends what is unsent: for each user changed here, its figures minus the fleet's figures as
//!    last known, merged into the fleet's figures (`figures::merge`) and written by one
//!    compare-and-set script per user, all in one pipeline. A write carries this worker's write
//!    id: a retry after a timeout is recognised and applied once. If the fleet moved meanwhile
//!    (another worker wrote), the reply holds its figures: merge again and retry.
//! 2. renews the budget leases held here (or returns those unused for a round);
//! 3. names the changed users in the feed stream, and reads the feed: users changed by other
//!    workers are read again and their new figures rebased into the local ledger; plan
//!    invalidations are applied.
//!
//! A round that fails (the server cannot be reached) keeps its writes and retries them, with the
//! same write ids, before taking anything new: while the server is away, what is unsent stays in
//! the ledger's own accounts (one copy per changed user and month, however many calls), so memory
//! does not grow with the calls made meanwhile.
//!
//! Every round first reads the shared ledger's identity (with the server's clock, in one round
//! trip): a ledger that lost its data is restored from the workers' copies, another ledger is
//! never written (`restore.rs`, `crate::fleet::identity`).
//!
//! Budget leases are in `lease.rs`, the feed of changed users in `feed.rs`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, MutexGuard};
use redis::Value;

use self::lease::{Ask, LeaseOutcome};

use super::bulk::{self, corrupted, pairs, text_of};
use super::figures::{merge, UserFigures};
use super::identity::Identity;
use super::link::{is_retryable_code, unavailable, Link};
use super::record::{self, Stored, StoredLease, USERS_KEY};
use crate::ledger::image::UserImage;
use crate::ledger::month::MonthId;
use crate::ledger::replica::{Release, Taken};
use crate::ledger::Ledger;
use crate::money::Money;
use crate::store::codec::TypeTable;
use crate::store::guard::quietly_failing;
use crate::store::snapshot::Round;
use crate::store::{StoreError, StoreResult};

mod feed;
mod keyed;
mod lease;
mod restore;

pub use keyed::{Keyed, KeyedWrite};

/// How a worker joins the fleet.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// One URL, or a cluster's seed nodes.
    pub urls: Vec<String>,
    pub cluster: bool,
    pub connect_timeout: Duration,
    /// How long a budget lease lives in the shared ledger without renewal.
    pub lease_ttl: Duration,
    /// Between two syncs.
    pub interval: Duration,
    /// The most a caller's call (a keyed call, a lease request) waits on the shared ledger in
    /// all, the wait for the sync thread's round included.
    pub caller_timeout: Duration,
}

/// Called with each user whose plan another worker invalidated.
pub type InvalidateHook = Box<dyn Fn(&str) + Send + Sync>;

/// Called with the message of a `ledger_lost` alarm (the shared ledger lost its data, or is not
/// the one this worker opened). Never runs Python: it queues the message.
pub type AlarmHook = Box<dyn Fn(&str) + Send + Sync>;

/// Users written per pipeline: bounds the memory of a round (commands and replies) however
/// many users changed in an interval.
const WRITE_BATCH: usize = 1000;

/// What a write sends, kept to apply its reply.
struct Planned {
    merged: UserFigures,
    lease: Option<LeaseOutcome>,
    types: TypeTable,
    /// The user was new to this worker (the write also added it to the set of users).
    was_new: bool,
}

enum Settled {
    Done { changed: bool },
    Retry,
}

/// One user's write, kept until the fleet confirms it.
struct Write {
    user: String,
    id: u64,
    /// What this worker recorded and the fleet has not: figures of the changed months, credit.
    delta: UserFigures,
    allowance: Money,
    ask: Ask,
}

/// Traffic figures, for `sync_stats` (benchmarks and tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub rounds: u64,
    pub round_trips: u64,
    pub bytes_sent: u64,
    pub writes: u64,
    pub conflicts: u64,
    pub lease_requests: u64,
}

struct State {
    link: Option<Link>,
    /// The next write id (per worker, increasing).
    next_id: u64,
    known: HashMap<String, Stored>,
    pending: Vec<Write>,
    /// Users holding a lease here.
    leased: BTreeSet<String>,
    /// The last feed entry read.
    feed_id: String,
    /// Plan invalidations to publish.
    invalidations: Vec<String>,
    /// Users whose writes the fleet holds and the feed does not name yet (kept through a
    /// failed round: the other workers must still learn of them).
    unannounced: Vec<String>,
    /// Just before the server's clock was last read: a lease written with an expiry taken from
    /// that reading is usable here until this instant plus `lease_ttl`, which comes before the
    /// fleet lets it expire.
    clock_read_at: Instant,
    /// While a caller's call runs: when it must have its answer (`FleetOptions::caller_timeout`).
    deadline: Option<Instant>,
    stats: Stats,
    /// The ledger this worker opened (its generation: the last restore it took part in).
    opened: Identity,
    standing: restore::Standing,
    /// Why a read showed a user older than this worker had read it (the ledger lost data): a
    /// restore starts at the next identity check.
    rolled_back: Option<String>,
    /// Whether the `ledger_lost` alarm of the current loss was raised here.
    lost_alarmed: bool,
    /// The keyed calls this worker recorded, written back by a restore (`restore.rs`).
    claims: restore::Claims,
}

pub struct Fleet {
    ledger: Arc<Ledger>,
    options: FleetOptions,
    worker: String,
    state: Mutex<State>,
    on_invalidate: InvalidateHook,
    /// Why the last contact with the shared ledger failed (shown to the callers refused while
    /// it is not reached again).
    last_failure: Mutex<String>,
    on_alarm: AlarmHook,
}

/// A unique id for this worker (process and service): its writes and leases are named by it.
fn worker_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = foldhash::fast::RandomState::default().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    format!("{:016x}{:08x}", hasher.finish(), std::process::id())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

/// A `{code, payload}` reply of the script.
fn script_reply(value: &Value) -> Option<(i64, &Value)> {
    match value {
        Value::Array(items) if items.len() == 2 => match &items[0] {
            Value::Int(code) => Some((*code, &items[1])),
            _ => None,
        },
        _ => None,
    }
}

impl Fleet {
    /// Connects (within the connect timeout), opens the shared ledger's identity (creating it
    /// for a new ledger, or one from before identities) and loads every user of it.
    pub fn open(
        ledger: Arc<Ledger>,
        options: FleetOptions,
        on_invalidate: InvalidateHook,
        on_alarm: AlarmHook,
    ) -> StoreResult<(Fleet, Vec<UserImage>)> {
        let mut link = Link::open(&options.urls, options.cluster, options.connect_timeout)?;
        let location = options.urls.join(",");
        let opened = restore::open_identity(&mut link, &location)?;
        let shown = crate::redact::redact_url(&location);
        let standing = match opened.phase {
            super::identity::Phase::Ready => restore::Standing::Ready,
            // Loads what is there, offline until the restore ends (then every user is read again).
            super::identity::Phase::Restoring { .. } => {
                on_alarm(&format!(
                    "opened while the shared ledger at {shown} is being restored from its \
                     workers' copies (it lost its data): this worker meters from memory, under \
                     the offline rules, until the restore ends"
                ));
                restore::Standing::Restoring { uploaded: true }
            }
        };
        let fleet = Fleet {
            ledger,
            worker: worker_id(),
            state: Mutex::new(State {
                link: None,
                next_id: 1,
                known: HashMap::new(),
                pending: Vec::new(),
                leased: BTreeSet::new(),
                feed_id: "0-0".into(),
                invalidations: Vec::new(),
                unannounced: Vec::new(),
                clock_read_at: Instant::now(),
                deadline: None,
                stats: Stats::default(),
                opened,
                standing,
                rolled_back: None,
                lost_alarmed: false,
                claims: restore::Claims::default(),
            }),
            on_invalidate,
            on_alarm,
            options,
            last_failure: Mutex::new(String::new()),
        };
        let images = {
            let mut state = fleet.state.lock();
            // The feed's position first: a change made while loading is then read again.
            state.feed_id = fleet.feed_end(&mut link)?;
            let users = fleet.all_users(&mut link)?;
            let stored = fleet.read_users(&mut link, &users)?;
            let mut images = Vec::with_capacity(stored.len());
            for (user, stored) in stored {
                images.push(stored.image(&user).map_err(|why| corrupted(&user, why))?);
                state.known.insert(user, stored);
            }
            state.link = Some(link);
            images
        };
        Ok((fleet, images))
    }

    fn io(&self, e: &redis::RedisError) -> StoreError {
        unavailable(&self.options.urls.join(","), e)
    }

    /// The shared ledger's URL as it may be shown (its password masked).
    pub(super) fn shown(&self) -> String {
        crate::redact::redact_url(&self.options.urls.join(","))
    }

    /// The state for a caller's call, with its deadline set: refused at once while the last
    /// contact with the shared ledger failed (the sync thread tries again each round; until it
    /// succeeds the offline rules apply), and after `caller_timeout` of waiting for a round.
    fn caller_state(&self) -> StoreResult<MutexGuard<'_, State>> {
        let wait = self.options.caller_timeout;
        if !self.ledger.is_online() {
            return Err(StoreError::Unavailable(format!(
                "{}; calls are not sent there until the sync thread reaches it again (nothing of \
                 this call was recorded)",
                self.last_failure.lock()
            )));
        }
        let deadline = Instant::now() + wait;
        let Some(mut state) = self.state.try_lock_until(deadline) else {
            // The round holding the state is stalled on the server as far as callers can tell:
            // the next callers are refused at once too, until a round ends well.
            let error = StoreError::Unavailable(format!(
                "the sync with the shared ledger at {} took longer than the caller's wait \
                 (caller_timeout, {} ms): nothing of this call was recorded",
                self.shown(),
                wait.as_millis()
            ));
            *self.last_failure.lock() = error.to_string();
            self.ledger.set_online(false);
            return Err(error);
        };
        state.deadline = Some(deadline);
        Ok(state)
    }

    /// Ends a caller's call: the state's deadline is dropped, and a failure to reach the
    /// shared ledger sends no more callers there until the sync thread reaches it again.
    fn caller_done<T>(&self, state: &mut State, result: &StoreResult<T>) {
        state.deadline = None;
        if let Err(error @ (StoreError::Unavailable(_) | StoreError::OutcomeUnknown(_))) = result {
            self.went_offline(state, error);
        }
    }

    /// The shared ledger was not reached: callers are refused at once until a round reaches it
    /// (the offline rules apply), and the next contact connects again (it may have restarted).
    fn went_offline(&self, state: &mut State, error: &StoreError) {
        *self.last_failure.lock() = error.to_string();
        self.ledger.set_online(false);
        state.link = None;
    }

    fn all_users(&self, link: &mut Link) -> StoreResult<Vec<String>> {
        bulk::all_users(link).map_err(|e| self.io(&e))
    }

    /// Reads users' hashes (users with no hash are left out).
    fn read_users(&self, link: &mut Link, users: &[String]) -> StoreResult<Vec<(String, Stored)>> {
        bulk::read_users(link, users, &self.options.urls.join(","))
    }

    /// Queues a plan invalidation for the other workers (sent with the next round).
    pub fn publish_invalidation(&self, user_id: &str) {
        self.state.lock().invalidations.push(user_id.to_string());
    }

    pub fn stats(&self) -> Stats {
        self.state.lock().stats
    }

    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Whether this worker writes to the shared ledger (false while it is being restored, and
    /// for good once the address holds another ledger).
    pub fn is_ready(&self) -> bool {
        matches!(self.state.lock().standing, restore::Standing::Ready)
    }

    /// Asks the fleet now for a lease covering at least `need` of `month` for `user_id` (a
    /// caller's `try_increment_usage` that its lease does not cover). Sends the user's unsent
    /// figures in the same write. Returns whether a lease was granted; false when the fleet has
    /// no room, or cannot be reached (then the error is returned too, for the alarm).
    pub fn request_lease(
        &self,
        user_id: &str,
        month: MonthId,
        need: Money,
        allowance: Money,
    ) -> StoreResult<bool> {
        let mut state = self.caller_state()?;
        let result = quietly_failing("a budget lease request", || {
            self.request_locked(&mut state, user_id, month, need, allowance)
        });
        self.caller_done(&mut state, &result);
        result
    }

    fn request_locked(
        &self,
        state: &mut State,
        user_id: &str,
        month: MonthId,
        need: Money,
        allowance: Money,
    ) -> StoreResult<bool> {
        self.ready_or_why(state)?;
        self.connect(state)?;
        let now = self.checked_clock(state)?;
        if !state.pending.is_empty() {
            self.write(state, now)?;
        }
        let Some(taken) = self.ledger.take_user_for_fleet(user_id) else {
            return Ok(false);
        };
        state.stats.lease_requests += 1;
        let id = state.next_id;
        state.next_id += 1;
        let left = match &taken.lease {
            Some((lease, _)) if lease.month == month => lease.left(),
            _ => Money::ZERO,
        };
        let mut write = self.write_of(state, taken, id);
        write.ask = Ask::Need { month, need, left };
        write.allowance = allowance;
        state.pending.push(write);
        self.write(state, now)?;
        self.announce(state)?;
        Ok(self.ledger.lease_left(user_id, month) >= need)
    }

    fn connect(&self, state: &mut State) -> StoreResult<()> {
        if state.link.is_none() {
            let mut timeout = self.options.connect_timeout;
            if let Some(deadline) = state.deadline {
                timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
                if timeout.is_zero() {
                    return Err(self.caller_out_of_time());
                }
            }
            state.link = Some(Link::open(
                &self.options.urls,
                self.options.cluster,
                timeout,
            )?);
        }
        Ok(())
    }

    /// The connection, its commands bounded by the caller's deadline (if a caller waits).
    fn link<'s>(&self, state: &'s mut State) -> StoreResult<&'s mut Link> {
        let deadline = state.deadline;
        let Some(link) = state.link.as_mut() else {
            return Err(StoreError::Unavailable(format!(
                "not connected to the shared ledger at {}",
                self.shown()
            )));
        };
        link.bound(deadline)
            .map_err(|_| self.caller_out_of_time())?;
        Ok(link)
    }

    fn caller_out_of_time(&self) -> StoreError {
        StoreError::Unavailable(format!(
            "the shared ledger at {} did not answer within the caller's wait (caller_timeout, \
             {} ms)",
            self.shown(),
            self.options.caller_timeout.as_millis()
        ))
    }

    /// The server's clock (ms), and the shared ledger's identity, in one round trip: every
    /// lease expiry is decided on the server's clock, never on a worker's.
    fn clock_and_identity(&self, state: &mut State) -> StoreResult<(i64, Option<Identity>)> {
        state.stats.round_trips += 1;
        state.clock_read_at = Instant::now();
        let commands = [
            redis::cmd("TIME"),
            redis::cmd("GET").arg(super::identity::LEDGER_KEY).clone(),
        ];
        let replies = self.link(state)?.run(&commands).map_err(|e| self.io(&e))?;
        let now = match replies.first() {
            Some(Value::Array(parts)) if parts.len() == 2 => {
                let seconds: i64 = text_of(&parts[0]).and_then(|s| s.parse().ok()).unwrap_or(0);
                let micros: i64 = text_of(&parts[1]).and_then(|s| s.parse().ok()).unwrap_or(0);
                seconds * 1000 + micros / 1000
            }
            _ => now_ms(),
        };
        let identity = restore::identity_of(replies.get(1), &self.shown())?;
        Ok((now, identity))
    }

    /// One round (see the module's documentation). `last`: returns every lease.
    fn round(&self, state: &mut State, last: bool) -> StoreResult<()> {
        self.connect(state)?;
        state.stats.rounds += 1;
        let (now, identity) = self.clock_and_identity(state)?;
        // Nothing is written before the ledger is known to be the one this worker opened.
        self.reconcile(state, now, identity)?;
        if !state.pending.is_empty() {
            self.write(state, now)?;
        }
        let leased: Vec<String> = state.leased.iter().cloned().collect();
        let id = state.next_id;
        state.next_id += 1;
        let release = if last { Release::All } else { Release::Unspent };
        for taken in self.ledger.take_for_fleet(&leased, release) {
            let write = self.write_of(state, taken, id);
            if write.delta.is_zero() && write.ask == Ask::None && !self.plan_changed(state, &write)
            {
                continue;
            }
            state.pending.push(write);
        }
        self.write(state, now)?;
        self.announce(state)?;
        self.pull(state)
    }

    fn plan_changed(&self, state: &State, write: &Write) -> bool {
        let known = state
            .known
            .get(&write.user)
            .and_then(|s| s.figures.plan.as_ref());
        write.delta.plan.is_some() && write.delta.plan.as_ref() != known
    }

    /// What to write for one taken user.
    fn write_of(&self, state: &State, taken: Taken, id: u64) -> Write {
        let user = taken.image.user_id.clone();
        let sent = UserFigures::of(&taken.image);
        let months: Vec<MonthId> = taken.image.months.iter().map(|(m, _)| *m).collect();
        let known = state
            .known
            .get(&user)
            .map(|s| s.figures.only_months(months.iter().copied()))
            .unwrap_or_default();
        let delta = sent.minus(&known);
        let ask = match taken.lease {
            None => Ask::None,
            Some((lease, _)) if taken.released => Ask::Release { month: lease.month },
            // Only the memory that the fleet had no room: nothing held in the fleet.
            Some((lease, _)) if !lease.granted.is_positive() => Ask::None,
            Some((lease, _)) => Ask::Renew {
                month: lease.month,
                left: lease.left(),
            },
        };
        let allowance = taken
            .allowance
            .or(taken.image.plan.as_ref().map(|(_, a)| *a))
            .unwrap_or(Money::ZERO);
        Write {
            user,
            id,
            delta,
            allowance,
            ask,
        }
    }

    /// Sends every pending write until each is confirmed or this fails; returns the users whose
    /// figures it changed (for the feed).
    fn write(&self, state: &mut State, now: i64) -> StoreResult<()> {
        let mut all = std::mem::take(&mut state.pending);
        while !all.is_empty() {
            let rest = all.split_off(all.len().min(WRITE_BATCH));
            state.pending = all;
            if let Err(error) = self.write_batch(state, now) {
                state.pending.extend(rest);
                return Err(error);
            }
            all = rest;
        }
        Ok(())
    }

    /// `write` of at most `WRITE_BATCH` users: one pipeline a pass.
    fn write_batch(&self, state: &mut State, now: i64) -> StoreResult<()> {
        let mut script_loaded = false;
        for _pass in 0..16 {
            if state.pending.is_empty() {
                return Ok(());
            }
            let mut commands = Vec::with_capacity(state.pending.len() * 2);
            let mut planned = Vec::with_capacity(state.pending.len());
            for write in &state.pending {
                let empty = Stored::default();
                let known = state.known.get(&write.user).unwrap_or(&empty);
                let merged = merge(&known.figures, &write.delta, write.allowance)
                    .map_err(|why| corrupted(&write.user, why))?;
                let lease = self
                    .lease_after(write, known, &merged, now)
                    .map_err(|why| corrupted(&write.user, why))?;
                let mut types = TypeTable::from_names(known.types.clone());
                let months: Vec<MonthId> = write.delta.months.keys().copied().collect();
                let mut sets = record::encode(&write.user, &merged, &months, &mut types)
                    .map_err(|why| corrupted(&write.user, why))?;
                let mut deletes: Vec<Vec<u8>> = Vec::new();
                if let Some(LeaseOutcome { month, amount, .. }) = lease {
                    let field = format!("l:{}", self.worker).into_bytes();
                    match amount.is_positive() {
                        true => {
                            let expires_ms = now + self.options.lease_ttl.as_millis() as i64;
                            let stored = StoredLease {
                                worker: self.worker.clone(),
                                amount,
                                month,
                                expires_ms,
                            };
                            sets.push((field, stored.encode().into_bytes()));
                        }
                        false => deletes.push(field),
                    }
                }
                // Expired leases of other workers, and write ids older than an hour (a retry
                // comes within seconds of its write).
                for lease in &known.leases {
                    if lease.worker != self.worker && lease.expires_ms <= now {
                        deletes.push(format!("l:{}", lease.worker).into_bytes());
                    }
                }
                for (worker, _, ms) in &known.writes {
                    if worker != &self.worker && *ms < now - 3_600_000 {
                        deletes.push(format!("s:{worker}").into_bytes());
                    }
                }
                if known.version == 0 {
                    let mut add = redis::cmd("SADD");
                    add.arg(USERS_KEY).arg(&write.user);
                    commands.push(add);
                }
                let mut cas =
                    match state.link.as_ref().is_some_and(Link::is_cluster) || script_loaded {
                        // A cluster sends the script's text (each node caches it on first use).
                        true => {
                            let mut c = redis::cmd("EVAL");
                            c.arg(record::SCRIPT);
                            c
                        }
                        false => {
                            let mut c = redis::cmd("EVALSHA");
                            c.arg(redis::Script::new(record::SCRIPT).get_hash());
                            c
                        }
                    };
                cas.arg(1)
                    .arg(record::user_key(&write.user))
                    .arg(known.version)
                    .arg(format!("s:{}", self.worker))
                    .arg(write.id)
                    .arg(now)
                    .arg(sets.len());
                for (field, value) in &sets {
                    cas.arg(field).arg(value);
                }
                cas.arg(deletes.len());
                for field in &deletes {
                    cas.arg(field);
                }
                commands.push(cas);
                planned.push(Planned {
                    merged,
                    lease,
                    types,
                    was_new: known.version == 0,
                });
            }
            state.stats.round_trips += 1;
            state.stats.bytes_sent += commands
                .iter()
                .map(|c| c.get_packed_command().len() as u64)
                .sum::<u64>();
            let replies = self.link(state)?.run(&commands).map_err(|e| self.io(&e))?;
            // The replies of the scripts (after any SADD).
            let mut replies = replies.into_iter();
            let mut keep = Vec::new();
            let mut failure = None;
            let pending = std::mem::take(&mut state.pending);
            for (write, planned) in pending.into_iter().zip(planned) {
                if planned.was_new {
                    replies.next();
                }
                let reply = replies.next().unwrap_or(Value::Nil);
                if let Value::ServerError(error) = &reply {
                    if error.code() == "NOSCRIPT" {
                        script_loaded = true;
                        keep.push(write);
                        continue;
                    }
                }
                // A write that is not settled stays for the next pass or round, whatever
                // happened to the others: it may have been applied (the retry then finds its
                // write id) or not.
                match self.settle(state, &write, planned, &reply, now) {
                    Ok(Settled::Done { changed: true }) => state.unannounced.push(write.user),
                    Ok(Settled::Done { changed: false }) => {}
                    Ok(Settled::Retry) => keep.push(write),
                    Err(error) => {
                        failure.get_or_insert(error);
                        keep.push(write);
                    }
                }
            }
            state.pending = keep;
            if let Some(error) = failure {
                return Err(error);
            }
        }
        Err(StoreError::Write(
            "the shared ledger changed under every write for 16 tries; retried next round".into(),
        ))
    }

    /// Applies the reply to one write: `Done` (the fleet holds it; `changed` if its figures
    /// moved), or `Retry` (the fleet moved: its figures are brought in, merge again).
    fn settle(
        &self,
        state: &mut State,
        write: &Write,
        planned: Planned,
        reply: &Value,
        now: i64,
    ) -> StoreResult<Settled> {
        if let Value::ServerError(error) = reply {
            // A server restarting (LOADING), busy with a script or failing over: unavailable
            // for now, and the write is retried as for a server out of reach.
            if is_retryable_code(error.code()) {
                return Err(StoreError::Unavailable(format!(
                    "the shared ledger at {} cannot serve now ({}); it will again shortly",
                    self.shown(),
                    error.code()
                )));
            }
            return Err(StoreError::Write(format!(
                "the shared ledger refused a write: {error}"
            )));
        }
        let Some((code, payload)) = script_reply(reply) else {
            return Err(StoreError::Write(format!(
                "unexpected reply from the shared ledger: {reply:?}"
            )));
        };
        let empty = Stored::default();
        let known = state.known.get(&write.user).unwrap_or(&empty);
        let held = known.figures.plus(&write.delta);
        let user = &write.user;
        match code {
            0 => {
                let version = match payload {
                    Value::Int(v) => *v as u64,
                    _ => known.version + 1,
                };
                let Planned {
                    merged,
                    lease,
                    types,
                    ..
                } = planned;
                let difference = merged.minus(&held);
                self.ledger
                    .rebase(user, &difference, merged.plan.as_ref())
                    .map_err(|why| corrupted(user, why))?;
                let mut leases: Vec<StoredLease> = known
                    .leases
                    .iter()
                    .filter(|l| l.worker != self.worker)
                    .cloned()
                    .collect();
                let mut writes: Vec<(String, u64, i64)> = known
                    .writes
                    .iter()
                    .filter(|(worker, _, _)| worker != &self.worker)
                    .cloned()
                    .collect();
                writes.push((self.worker.clone(), write.id, now));
                if let Some(outcome) = lease {
                    self.apply_lease(state, write, outcome, now);
                    if outcome.amount.is_positive() {
                        leases.push(StoredLease {
                            worker: self.worker.clone(),
                            amount: outcome.amount,
                            month: outcome.month,
                            expires_ms: now + self.options.lease_ttl.as_millis() as i64,
                        });
                    }
                }
                state.stats.writes += 1;
                state.known.insert(
                    user.clone(),
                    Stored {
                        version,
                        figures: merged,
                        types: types.names().to_vec(),
                        leases,
                        writes,
                    },
                );
                let changed = !write.delta.is_zero() || matches!(write.ask, Ask::Release { .. });
                Ok(Settled::Done { changed })
            }
            1 | 2 => {
                let fleet =
                    record::decode(user, &pairs(payload)).map_err(|why| corrupted(user, why))?;
                if let Some(why) = self.older_than_read(user, known.version, fleet.version) {
                    state.rolled_back = Some(why.clone());
                    return Err(StoreError::Unavailable(why));
                }
                // Applied before (a retry): the fleet's figures hold this write. Moved: they do
                // not; bring them in and merge again.
                let base = if code == 1 { &held } else { &known.figures };
                let difference = fleet.figures.minus(base);
                self.ledger
                    .rebase(user, &difference, fleet.figures.plan.as_ref())
                    .map_err(|why| corrupted(user, why))?;
                let mine = fleet
                    .leases
                    .iter()
                    .find(|l| l.worker == self.worker)
                    .map(|l| l.amount);
                state.known.insert(user.clone(), fleet);
                if code == 2 {
                    state.stats.conflicts += 1;
                    return Ok(Settled::Retry);
                }
                if let Some(month) = Self::ask_month(write.ask) {
                    let outcome = LeaseOutcome {
                        month,
                        amount: mine.unwrap_or(Money::ZERO),
                        dry_until_ms: None,
                    };
                    self.apply_lease(state, write, outcome, now);
                }
                Ok(Settled::Done { changed: true })
            }
            4 => Err(bulk::wrong_type(user, text_of(payload).as_deref())),
            _ => Err(StoreError::Write(format!(
                "unexpected reply code {code} from the shared ledger"
            ))),
        }
    }
}

/// The sync thread's round (run by `Snapshotter`).
pub struct FleetRound(pub Arc<Fleet>);

impl Round for FleetRound {
    fn run(&mut self, last: bool) -> StoreResult<()> {
        let fleet = &self.0;
        let mut state = fleet.state.lock();
        state.deadline = None;
        let result = fleet.round(&mut state, last);
        match &result {
            Ok(()) => fleet.ledger.set_online(true),
            Err(error @ (StoreError::Unavailable(_) | StoreError::OutcomeUnknown(_))) => {
                fleet.went_offline(&mut state, error)
            }
            // The server answered (a damaged record, a refused write): it is reached, and the
            // callers' own calls tell them what they meet there.
            Err(_) => {}
        }
        result
    }
}
