//! Criterion benchmarks of the Rust core alone (no Python): `cargo bench --bench core`.
//!
//! - one thread over 1,000,000 distinct users (the target: >= 20 million increments/s), by user
//!   id (`charge`) and by a kept account handle (`charge_priced`, what `Meter.add` runs);
//! - one hot user hit from 1 thread and from every core (the total must not fall), both ways.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use _core::costmap::CostMap;
use _core::ledger::month::MonthId;
use _core::ledger::record::TypeId;
use _core::ledger::{Account, Booking, ChargeMode, Ledger, Plan, Unmapped, UsageItem};
use _core::money::Money;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const USERS: usize = 1_000_000;
const MONTH: MonthId = MonthId(2026 * 12 + 10);
const USAGE_TYPE: &str = "claude:claude-sonnet-4-5-20250929:output_tokens";

fn ledger() -> Ledger {
    let map = CostMap::default_maps().expect("shipped cost maps load");
    Ledger::new(Arc::new(map), Unmapped::Error)
}

fn user_ids(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("user-{i:07}")).collect()
}

fn booking(user_id: &str) -> Booking<'_> {
    Booking {
        user_id,
        app_id: "os-global",
        month: MONTH,
        day: 1,
        plan: Plan::Fixed(Money::ZERO),
        // The first instant of MONTH: holds (none here) expire by it.
        now_ms: MONTH.start_epoch_ms(),
    }
}

/// `increment_usage`'s core: the user and the usage type found by name.
fn increment(ledger: &Ledger, user_id: &str) {
    let item = UsageItem {
        usage_type: USAGE_TYPE,
        units: 7,
        cost_override: None,
    };
    black_box(
        ledger
            .charge(None, &booking(user_id), &[item], ChargeMode::Always)
            .expect("charge"),
    );
}

/// `Meter.add`'s core: the account and the usage type resolved beforehand.
fn increment_kept(ledger: &Ledger, user_id: &str, account: &Account, usage_type: TypeId) {
    black_box(
        ledger
            .charge_priced(account, &booking(user_id), usage_type, 7)
            .expect("charge"),
    );
}

fn priced_type(ledger: &Ledger) -> TypeId {
    let id = ledger.meter_type(USAGE_TYPE).expect("a valid type");
    id.expect("a priced type")
}

fn distinct_users(c: &mut Criterion) {
    let ledger = ledger();
    let users = user_ids(USERS);
    for user in &users {
        increment(&ledger, user); // warm: every record exists
    }
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(USERS as u64));
    group.sample_size(10);
    group.bench_function("increment 1,000,000 distinct users, 1 thread", |b| {
        b.iter(|| {
            for user in &users {
                increment(&ledger, user);
            }
        })
    });
    let kept: Vec<_> = users.iter().map(|user| ledger.account(user)).collect();
    let usage_type = priced_type(&ledger);
    group.bench_function(
        "increment 1,000,000 distinct users by kept account, 1 thread",
        |b| {
            b.iter(|| {
                for (user, account) in users.iter().zip(&kept) {
                    increment_kept(&ledger, user, account, usage_type);
                }
            })
        },
    );
    group.finish();
}

/// Total increments per second of `threads` threads running `increment` for `duration`.
fn hot_user_rate(threads: usize, duration: Duration, increment: &(dyn Fn() + Sync)) -> f64 {
    let started = Instant::now();
    let counts: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut count = 0u64;
                    while started.elapsed() < duration {
                        for _ in 0..1_000 {
                            increment();
                        }
                        count += 1_000;
                    }
                    count
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    counts.iter().sum::<u64>() as f64 / started.elapsed().as_secs_f64()
}

fn hot_user(c: &mut Criterion) {
    let ledger = Arc::new(ledger());
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut group = c.benchmark_group("core");
    group.sample_size(10);
    let account = ledger.account("hot-user");
    let usage_type = priced_type(&ledger);
    let by_id = || increment(&ledger, "hot-user");
    let by_account = || increment_kept(&ledger, "hot-user", &account, usage_type);
    let ways: [(&str, &(dyn Fn() + Sync)); 2] = [("", &by_id), (" by kept account", &by_account)];
    for (way, work) in ways {
        for threads in [1, cores] {
            let name = format!("hot user{way}, {threads} thread(s), 100 ms");
            group.bench_function(name, |b| {
                b.iter_custom(|iterations| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        let rate = hot_user_rate(threads, Duration::from_millis(100), work);
                        // Time per million increments, so criterion's numbers compare directly.
                        total += Duration::from_secs_f64(1_000_000.0 / rate);
                    }
                    total
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, distinct_users, hot_user);
criterion_main!(benches);
