//! Criterion benchmarks of the Rust core alone (no Python): `cargo bench --bench core`.
//!
//! - one thread over 1,000,000 distinct users (the target: >= 20 million increments/s);
//! - one hot user hit from 1 thread and from every core (the total must not fall).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use _core::costmap::CostMap;
use _core::ledger::month::MonthId;
use _core::ledger::{Booking, ChargeMode, Ledger, Plan, Unmapped, UsageItem};
use _core::money::Money;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const USERS: usize = 1_000_000;
const MONTH: MonthId = MonthId(2026 * 12 + 10);

fn ledger() -> Ledger {
    let map = CostMap::default_maps().expect("shipped cost maps load");
    Ledger::new(Arc::new(map), Unmapped::Error)
}

fn user_ids(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("user-{i:07}")).collect()
}

fn increment(ledger: &Ledger, user_id: &str) {
    let booking = Booking {
        user_id,
        app_id: "os-global",
        month: MONTH,
        plan: Plan::Fixed(Money::ZERO),
    };
    let item = UsageItem {
        usage_type: "claude:claude-sonnet-4-5-20250929:output_tokens",
        units: 7,
        cost_override: None,
    };
    black_box(
        ledger
            .charge(None, &booking, &[item], ChargeMode::Always)
            .expect("charge"),
    );
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
    group.finish();
}

/// Total increments per second of `threads` threads on one user for `duration`.
fn hot_user_rate(ledger: &Arc<Ledger>, threads: usize, duration: Duration) -> f64 {
    let started = Instant::now();
    let counts: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut count = 0u64;
                    while started.elapsed() < duration {
                        for _ in 0..1_000 {
                            increment(ledger, "hot-user");
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
    for threads in [1, cores] {
        group.bench_function(format!("hot user, {threads} thread(s), 100 ms"), |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let rate = hot_user_rate(&ledger, threads, Duration::from_millis(100));
                    // Report time per million increments so criterion's numbers compare directly.
                    total += Duration::from_secs_f64(1_000_000.0 / rate);
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, distinct_users, hot_user);
criterion_main!(benches);
