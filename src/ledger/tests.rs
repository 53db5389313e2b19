//! Ledger behaviour that needs no Python: exactness, atomicity, pools and threads.

use std::sync::Arc;

use super::*;
use crate::costmap::CostMap;

const OCTOBER: MonthId = MonthId(2026 * 12 + 9);
const NOVEMBER: MonthId = MonthId(2026 * 12 + 10);

fn ledger() -> Ledger {
    let map = CostMap::from_json_sources([(
        "t.json",
        r#"{"kv:write": 125, "kv:read": 63, "egress": "0.0111758708953857421875"}"#,
    )])
    .unwrap();
    Ledger::new(Arc::new(map), Unmapped::Error)
}

fn m(microcents: i128) -> Money {
    Money::from_microcents(microcents).unwrap()
}

fn booking(user_id: &str) -> Booking<'_> {
    Booking {
        user_id,
        app_id: "os-global",
        month: OCTOBER,
        day: 5,
        plan: Plan::Fixed(m(1_000)),
        now_ms: 0,
    }
}

fn item(usage_type: &str, units: u64) -> UsageItem<'_> {
    UsageItem {
        usage_type,
        units,
        cost_override: None,
    }
}

/// An item of the unpriced type "x" whose whole cost is `microcents` (a cost override).
fn costing(microcents: i128) -> UsageItem<'static> {
    UsageItem {
        usage_type: "x",
        units: 0,
        cost_override: Some(m(microcents)),
    }
}

#[test]
fn a_cached_plan_is_used_until_it_expires() {
    let ledger = ledger();
    let cached = Booking {
        plan: Plan::Cached { now_ms: 1_000 },
        now_ms: 0,
        ..booking("u")
    };
    let error = ledger.charge(None, &cached, &[item("kv:write", 1)], ChargeMode::Always);
    assert_eq!(error, Err(LedgerError::PlanNeeded));
    assert_eq!(ledger.user_usage("u", OCTOBER), UsageReport::default());
    // A never-charged user gets no cached plan (a check allocates nothing) ...
    assert!(!ledger.set_plan_if("never-charged", "p", m(100), 2_000, ledger.plan_epoch()));
    assert!(!ledger.has_account("never-charged"));
    // ... and a plan resolved while an invalidation ran is not cached.
    let epoch = ledger.plan_epoch();
    ledger.forget_plan("someone else");
    assert!(!ledger.set_plan_if("u", "p", m(100), 2_000, epoch));
    assert!(ledger.set_plan_if("u", "p", m(100), 2_000, ledger.plan_epoch()));
    assert_eq!(ledger.last_plan("u"), Some(("p".to_string(), m(100))));
    let receipt = ledger
        .charge(None, &cached, &[item("kv:write", 1)], ChargeMode::Always)
        .unwrap();
    assert_eq!(
        (
            receipt.allowance,
            receipt.split.allowance,
            receipt.split.overage
        ),
        (m(100), m(100), m(25))
    );
    let expired = Booking {
        plan: Plan::Cached { now_ms: 2_000 },
        now_ms: 0,
        ..booking("u")
    };
    assert_eq!(
        ledger.charge(None, &expired, &[item("kv:write", 1)], ChargeMode::Always),
        Err(LedgerError::PlanNeeded)
    );
    ledger.forget_plan("u");
    assert_eq!(
        ledger.budget("u", OCTOBER, Plan::Cached { now_ms: 1_000 }, 0),
        Err(LedgerError::PlanNeeded)
    );
}

#[test]
fn seed_batch_costs_439() {
    let ledger = ledger();
    let items = [
        item("kv:write", 1),
        item("kv:write", 1),
        item("kv:read", 1),
        item("kv:read", 1),
        item("kv:read", 1),
    ];
    let receipt = ledger
        .charge(None, &booking("u"), &items, ChargeMode::Always)
        .unwrap();
    assert_eq!(receipt.month_total, m(439));
    let report = ledger.user_usage("u", OCTOBER);
    assert_eq!(report.count, 5);
    let write = ledger.types.priced("kv:write").unwrap();
    let (_, counter) = report.by_type.iter().find(|(id, _)| *id == write).unwrap();
    assert_eq!((counter.units, counter.cost, counter.count), (2, m(250), 2));
}

#[test]
fn many_small_calls_cost_what_one_big_call_costs() {
    let ledger = ledger();
    for _ in 0..1000 {
        ledger
            .charge(
                None,
                &booking("a"),
                &[item("egress", 1)],
                ChargeMode::Always,
            )
            .unwrap();
    }
    ledger
        .charge(
            None,
            &booking("b"),
            &[item("egress", 1000)],
            ChargeMode::Always,
        )
        .unwrap();
    assert_eq!(
        ledger.user_usage("a", OCTOBER).total,
        ledger.user_usage("b", OCTOBER).total
    );
}

#[test]
fn overflow_records_nothing_anywhere() {
    let ledger = ledger();
    ledger
        .charge(
            None,
            &booking("u"),
            &[item("egress", u64::MAX)],
            ChargeMode::Always,
        )
        .unwrap();
    let before = (
        ledger.user_usage("u", OCTOBER),
        ledger.global_usage(OCTOBER).unwrap(),
        ledger
            .budget("u", OCTOBER, Plan::Fixed(m(1_000)), 0)
            .unwrap(),
    );
    let error = ledger.charge(
        None,
        &booking("u"),
        &[item("kv:write", 1), item("egress", 1)],
        ChargeMode::Always,
    );
    assert!(matches!(error, Err(LedgerError::Overflow(_))), "{error:?}");
    let too_costly = ledger.charge(
        None,
        &booking("v"),
        &[item("kv:read", u64::MAX)],
        ChargeMode::Always,
    );
    assert!(
        matches!(too_costly, Err(LedgerError::Overflow(_))),
        "{too_costly:?}"
    );
    let after = (
        ledger.user_usage("u", OCTOBER),
        ledger.global_usage(OCTOBER).unwrap(),
        ledger
            .budget("u", OCTOBER, Plan::Fixed(m(1_000)), 0)
            .unwrap(),
    );
    assert_eq!(before, after);
}

#[test]
fn unknown_types_fail_or_are_free() {
    let strict = ledger();
    let error = strict.charge(
        None,
        &booking("u"),
        &[item("kv:write", 1), item("nope", 1)],
        ChargeMode::Always,
    );
    assert_eq!(error, Err(LedgerError::UnknownUsageType("nope".into())));
    assert_eq!(strict.user_usage("u", OCTOBER), UsageReport::default());

    let free = Ledger::new(Arc::new(CostMap::default()), Unmapped::Free);
    let receipt = free
        .charge(None, &booking("u"), &[item("nope", 5)], ChargeMode::Always)
        .unwrap();
    assert_eq!(
        (receipt.month_total, receipt.unmapped_items),
        (Money::ZERO, 1)
    );
    assert_eq!(free.user_usage("u", OCTOBER).by_type[0].1.units, 5);
}

#[test]
fn try_charge_refuses_without_recording() {
    let ledger = ledger();
    let tight = Booking {
        plan: Plan::Fixed(m(200)),
        now_ms: 0,
        ..booking("u")
    };
    assert!(
        ledger
            .charge(
                None,
                &tight,
                &[item("kv:write", 1)],
                ChargeMode::IfAffordable
            )
            .unwrap()
            .accepted
    );
    let refused = ledger
        .charge(
            None,
            &tight,
            &[item("kv:write", 1)],
            ChargeMode::IfAffordable,
        )
        .unwrap();
    assert!(!refused.accepted);
    assert_eq!(ledger.user_usage("u", OCTOBER).total, m(125));
    assert_eq!(
        ledger
            .budget("u", OCTOBER, Plan::Fixed(m(200)), 0)
            .unwrap()
            .remaining,
        m(75)
    );
}

#[test]
fn set_total_never_moves_purchased_credit() {
    let ledger = ledger();
    ledger.add_purchased("u", m(500)).unwrap();
    let charge = |cost| ledger.charge(None, &booking("u"), &[costing(cost)], ChargeMode::Always);
    charge(1_200).unwrap(); // 1,000 allowance + 200 credit
    let set = |total| ledger.charge(None, &booking("u"), &[], ChargeMode::SetTotal(m(total)));
    let credit_before = ledger
        .budget("u", OCTOBER, Plan::Fixed(m(1_000)), 0)
        .unwrap()
        .credit;
    // (allowance used, purchased consumed, overage) after setting `total`; credit never moves.
    let pools_after_setting = |total| {
        set(total).unwrap();
        let budget = ledger
            .budget("u", OCTOBER, Plan::Fixed(m(1_000)), 0)
            .unwrap();
        assert_eq!(budget.credit, credit_before);
        let pools = budget.pools;
        (
            pools.allowance_used,
            pools.purchased_consumed,
            pools.overage,
        )
    };
    assert_eq!(pools_after_setting(5_000), (m(1_000), m(200), m(3_800)));
    assert_eq!(pools_after_setting(300), (m(100), m(200), m(0)));
    // Below what purchased credit paid this month: refused, nothing changes.
    assert!(matches!(set(199), Err(LedgerError::InvalidInput(_))));
    assert_eq!(ledger.user_usage("u", OCTOBER).total, m(300));
    set(200).unwrap();
}

#[test]
fn purchased_credit_stays_within_the_per_actor_range() {
    let ledger = ledger();
    let limit = m(1_000_000_000_000_000_000);
    ledger.add_purchased("u", limit).unwrap();
    assert!(matches!(
        ledger.add_purchased("u", m(1)),
        Err(LedgerError::Overflow(_))
    ));
    assert_eq!(
        ledger
            .budget("u", OCTOBER, Plan::Fixed(limit), 0)
            .unwrap()
            .remaining,
        limit.plus(limit)
    );
}

#[test]
fn a_zero_unit_charge_still_names_a_known_type() {
    let ledger = ledger();
    let error = ledger.charge(
        None,
        &booking("u"),
        &[item("bogus:type", 0)],
        ChargeMode::Always,
    );
    assert!(matches!(error, Err(LedgerError::UnknownUsageType(_))));
    assert!(ledger.check_item(&item("kv:write", 0)).is_ok());
    assert!(ledger.check_item(&item("", 1)).is_err());
    assert!(ledger.check_item(&item("total", 1)).is_err());
}

#[test]
fn a_sealed_ledger_refuses_writes_and_keeps_what_came_before() {
    let ledger = Arc::new(ledger().track_changes());
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let ledger = Arc::clone(&ledger);
            std::thread::spawn(move || {
                let mut accepted = 0u64;
                for i in 0..100_000u64 {
                    let user = format!("u{t}-{}", i % 50);
                    match ledger.charge(
                        None,
                        &booking(&user),
                        &[item("kv:write", 1)],
                        ChargeMode::Always,
                    ) {
                        Ok(_) => accepted += 1,
                        Err(LedgerError::Closed) => break,
                        Err(other) => panic!("{other}"),
                    }
                }
                accepted
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(5));
    ledger.seal();
    let snapshot = ledger.take_changes();
    let accepted: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    let saved: u64 = snapshot
        .iter()
        .flat_map(|user| user.months.iter().map(|(_, month)| month.usage.count))
        .sum();
    assert_eq!(
        saved, accepted,
        "every accepted charge is in the snapshot taken after seal"
    );
    assert!(ledger.take_changes().is_empty());
    assert_eq!(ledger.add_purchased("v", m(1)), Err(LedgerError::Closed));
}

#[test]
fn set_total_books_the_difference_and_refunds_pools() {
    let ledger = ledger();
    ledger
        .charge(
            None,
            &booking("u"),
            &[item("kv:write", 10)],
            ChargeMode::Always,
        )
        .unwrap();
    let budget = ledger
        .budget("u", OCTOBER, Plan::Fixed(m(1_000)), 0)
        .unwrap();
    assert_eq!(
        (budget.pools.allowance_used, budget.pools.overage),
        (m(1_000), m(250))
    );
    let receipt = ledger
        .charge(None, &booking("u"), &[], ChargeMode::SetTotal(m(1_000)))
        .unwrap();
    assert_eq!(receipt.month_total, m(1_000));
    assert_eq!(receipt.split.overage, m(-250));
    let budget = ledger
        .budget("u", OCTOBER, Plan::Fixed(m(1_000)), 0)
        .unwrap();
    assert_eq!(
        (budget.pools.allowance_used, budget.pools.overage),
        (m(1_000), m(0))
    );
    let receipt = ledger
        .charge(None, &booking("u"), &[], ChargeMode::SetTotal(m(100)))
        .unwrap();
    assert_eq!(receipt.month_total, m(100));
    let budget = ledger
        .budget("u", OCTOBER, Plan::Fixed(m(1_000)), 0)
        .unwrap();
    assert_eq!(
        (budget.pools.allowance_used, budget.pools.overage),
        (m(100), m(0))
    );
}

#[test]
fn months_are_separate_and_credit_is_lifetime() {
    let ledger = ledger();
    ledger.add_purchased("u", m(100)).unwrap();
    let october = Booking {
        plan: Plan::Fixed(m(100)),
        now_ms: 0,
        ..booking("u")
    };
    let november = Booking {
        month: NOVEMBER,
        ..october
    };
    ledger
        .charge(None, &october, &[costing(150)], ChargeMode::Always)
        .unwrap();
    assert_eq!(
        ledger
            .budget("u", NOVEMBER, Plan::Fixed(m(100)), 0)
            .unwrap()
            .remaining,
        m(150)
    );
    let receipt = ledger
        .charge(None, &november, &[costing(400)], ChargeMode::Always)
        .unwrap();
    assert_eq!(
        receipt.split,
        Split {
            allowance: m(100),
            purchased: m(50),
            overage: m(250)
        }
    );
    // A single jump from under the allowance pages nobody.
    assert_eq!(receipt.overuse_multiple, None);
    let receipt = ledger
        .charge(None, &november, &[costing(500)], ChargeMode::Always)
        .unwrap();
    // Net of the 50 of purchased credit: 350 -> 850 crosses 8x the allowance of 100.
    assert_eq!(receipt.overuse_multiple, Some(8));
    assert_eq!(ledger.months_of("u"), vec![OCTOBER, NOVEMBER]);
    assert_eq!(ledger.user_usage("u", OCTOBER).total, m(150));
}

#[test]
fn threads_lose_no_update_on_one_hot_user() {
    let ledger = Arc::new(ledger());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let ledger = Arc::clone(&ledger);
            std::thread::spawn(move || {
                for _ in 0..20_000 {
                    ledger
                        .charge(
                            None,
                            &booking("hot"),
                            &[item("kv:read", 1)],
                            ChargeMode::Always,
                        )
                        .unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(ledger.user_usage("hot", OCTOBER).total, m(63 * 160_000));
    assert_eq!(ledger.global_usage(OCTOBER).unwrap().count, 160_000);
}

#[test]
fn racing_try_charges_never_overspend() {
    let ledger = Arc::new(ledger());
    let allowance = m(125 * 100 + 60);
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let ledger = Arc::clone(&ledger);
            std::thread::spawn(move || {
                let b = Booking {
                    plan: Plan::Fixed(allowance),
                    now_ms: 0,
                    ..booking("racer")
                };
                (0..50)
                    .filter(|_| {
                        ledger
                            .charge(None, &b, &[item("kv:write", 1)], ChargeMode::IfAffordable)
                            .unwrap()
                            .accepted
                    })
                    .count()
            })
        })
        .collect();
    let accepted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(accepted, 100);
    assert_eq!(ledger.user_usage("racer", OCTOBER).total, m(12_500));
}

mod replica {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::fleet::figures::UserFigures;
    use crate::ledger::replica;

    fn replica() -> Ledger {
        ledger().track_changes().with_leases(false)
    }

    fn try_charge(ledger: &Ledger, microcents: i128) -> Receipt {
        let items = [costing(microcents)];
        let receipt = ledger.charge(None, &booking("u"), &items, ChargeMode::IfAffordable);
        receipt.unwrap()
    }

    #[test]
    fn an_affordable_charge_needs_a_lease_that_covers_it() {
        let ledger = replica();
        ledger.set_online(true);
        // No lease: refused, and the caller is told to ask the fleet.
        let refused = try_charge(&ledger, 100);
        assert!(!refused.accepted && refused.ask_fleet);
        let later = Instant::now() + Duration::from_secs(60);
        ledger.set_lease("u", OCTOBER, m(250), later, None);
        assert!(try_charge(&ledger, 100).accepted);
        assert!(try_charge(&ledger, 100).accepted);
        // 50 left of the lease: a charge of 100 is short even though the allowance is not.
        assert!(try_charge(&ledger, 100).ask_fleet);
        assert_eq!(ledger.lease_left("u", OCTOBER), m(50));
        // A charge that always records spends the lease too (saturating).
        let always = [costing(80)];
        let booked = ledger.charge(None, &booking("u"), &always, ChargeMode::Always);
        assert!(booked.unwrap().accepted);
        assert_eq!(ledger.lease_left("u", OCTOBER), Money::ZERO);
    }

    #[test]
    fn a_lease_is_unusable_offline_expired_or_of_another_month() {
        let ledger = replica();
        let later = Instant::now() + Duration::from_secs(60);
        ledger.set_lease("u", OCTOBER, m(500), later, None);
        assert!(try_charge(&ledger, 10).ask_fleet, "offline: refused");
        ledger.set_online(true);
        assert!(try_charge(&ledger, 10).accepted);
        ledger.set_lease("u", NOVEMBER, m(500), later, None);
        assert!(
            try_charge(&ledger, 10).ask_fleet,
            "a lease of another month"
        );
        ledger.set_lease("u", OCTOBER, m(500), Instant::now(), None);
        assert!(try_charge(&ledger, 10).ask_fleet, "expired");
        let offline_ok = ledger_with_offline_leases();
        offline_ok.set_lease("u", OCTOBER, m(500), later, None);
        let items = [costing(10)];
        let receipt = offline_ok.charge(None, &booking("u"), &items, ChargeMode::IfAffordable);
        assert!(
            receipt.unwrap().accepted,
            "serve_offline spends the lease held"
        );
    }

    fn ledger_with_offline_leases() -> Ledger {
        ledger().track_changes().with_leases(true)
    }

    #[test]
    fn no_room_is_remembered_until_the_user_changes() {
        let ledger = replica();
        ledger.set_online(true);
        let later = Instant::now() + Duration::from_secs(60);
        ledger.set_lease("u", OCTOBER, Money::ZERO, later, Some((m(100), later)));
        let refused = try_charge(&ledger, 100);
        assert!(!refused.accepted && !refused.ask_fleet, "not worth asking");
        assert!(
            try_charge(&ledger, 99).ask_fleet,
            "a smaller charge may fit"
        );
        ledger.rebase("u", &UserFigures::default(), None).unwrap();
        let unchanged = try_charge(&ledger, 100);
        assert!(!unchanged.ask_fleet, "nothing changed: still no room");
        let credit = UserFigures {
            credit: [m(500).attocents(), 0],
            ..UserFigures::default()
        };
        ledger.rebase("u", &credit, None).unwrap();
        let changed = try_charge(&ledger, 100);
        assert!(changed.ask_fleet, "the user changed: ask again");
    }

    #[test]
    fn a_lease_unspent_since_the_last_take_is_given_up_at_the_take() {
        // Given up under the account's lock: nothing can be spent from it while the write that
        // returns it is on its way (that spending would be usage the fleet holds no lease for).
        let ledger = replica();
        ledger.set_online(true);
        let later = Instant::now() + Duration::from_secs(60);
        ledger.set_lease("u", OCTOBER, m(500), later, None);
        assert!(try_charge(&ledger, 100).accepted);
        let spent = ledger.take_for_fleet(&["u".into()], replica::Release::Unspent);
        assert!(!spent[0].released, "spent in the last round: kept");
        assert_eq!(ledger.lease_left("u", OCTOBER), m(400));
        let idle = ledger.take_for_fleet(&["u".into()], replica::Release::Unspent);
        assert!(idle[0].released);
        assert_eq!(ledger.lease_left("u", OCTOBER), Money::ZERO);
        assert!(try_charge(&ledger, 100).ask_fleet);
    }

    /// Two replicas and a shared ledger kept as figures, synced the way `fleet::sync` does
    /// (take, difference against the known figures, merge, rebase by what the merge changed;
    /// pull: rebase by the fleet's newer figures), in a random interleaving with charges,
    /// adjustments and credit. At the end every replica and the fleet hold every charge once,
    /// the pools add up to the month, and the allowance is never used beyond itself.
    #[test]
    fn replicas_synced_in_any_order_hold_every_charge_once() {
        use crate::fleet::figures::merge;
        let allowance = m(1_000);
        for seed in 1..=200u64 {
            let mut rng = seed;
            let mut next = |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let workers = [replica(), replica()];
            let mut known = [UserFigures::default(), UserFigures::default()];
            let mut fleet = UserFigures::default();
            let mut charged = 0i128;
            let mut purchased = 0i128;
            let fixed = Booking {
                plan: Plan::Fixed(allowance),
                now_ms: 0,
                ..booking("u")
            };
            for _ in 0..60 {
                let w = next(2) as usize;
                match next(5) {
                    0 | 1 => {
                        let cost = 1 + next(400) as i128;
                        let items = [costing(cost)];
                        let receipt = workers[w].charge(None, &fixed, &items, ChargeMode::Always);
                        assert!(receipt.unwrap().accepted);
                        charged += cost;
                    }
                    2 => {
                        let amount = 1 + next(300) as i128;
                        workers[w].add_purchased("u", m(amount)).unwrap();
                        purchased += amount;
                    }
                    3 => {
                        for taken in workers[w].take_for_fleet(&[], replica::Release::None) {
                            let sent = UserFigures::of(&taken.image);
                            let months = taken.image.months.iter().map(|(month, _)| *month);
                            let delta = sent.minus(&known[w].only_months(months));
                            // The fleet may have moved since this worker knew it (the CAS
                            // conflict): merge into the fleet's figures, as a retry does.
                            let held_fleet = fleet.clone();
                            workers[w]
                                .rebase("u", &held_fleet.minus(&known[w]), None)
                                .unwrap();
                            let merged = merge(&held_fleet, &delta, allowance).unwrap();
                            let held = held_fleet.plus(&delta);
                            workers[w].rebase("u", &merged.minus(&held), None).unwrap();
                            known[w] = merged.clone();
                            fleet = merged;
                        }
                    }
                    _ => {
                        workers[w]
                            .rebase("u", &fleet.minus(&known[w]), None)
                            .unwrap();
                        known[w] = fleet.clone();
                    }
                }
            }
            for w in 0..2 {
                for taken in workers[w].take_for_fleet(&[], replica::Release::None) {
                    let sent = UserFigures::of(&taken.image);
                    let months = taken.image.months.iter().map(|(month, _)| *month);
                    let delta = sent.minus(&known[w].only_months(months));
                    workers[w]
                        .rebase("u", &fleet.minus(&known[w]), None)
                        .unwrap();
                    let merged = merge(&fleet, &delta, allowance).unwrap();
                    workers[w]
                        .rebase("u", &merged.minus(&fleet.plus(&delta)), None)
                        .unwrap();
                    known[w] = merged.clone();
                    fleet = merged;
                }
            }
            for w in 0..2 {
                workers[w]
                    .rebase("u", &fleet.minus(&known[w]), None)
                    .unwrap();
                assert_eq!(
                    workers[w].user_usage("u", OCTOBER).total,
                    m(charged),
                    "seed {seed}"
                );
                let budget = workers[w].budget("u", OCTOBER, fixed.plan, 0).unwrap();
                let pools = budget.pools;
                let split = pools
                    .allowance_used
                    .plus(pools.purchased_consumed)
                    .plus(pools.overage);
                assert_eq!(
                    split,
                    m(charged),
                    "seed {seed}: the pools add up to the month"
                );
                assert!(pools.allowance_used <= allowance, "seed {seed}");
                assert_eq!(budget.credit.purchased, m(purchased), "seed {seed}");
                assert_eq!(
                    budget.credit.consumed, pools.purchased_consumed,
                    "seed {seed}"
                );
                assert!(
                    budget.credit.consumed <= budget.credit.purchased,
                    "seed {seed}"
                );
            }
            let image = fleet.to_image("u").unwrap();
            assert_eq!(image.months[0].1.usage.total, m(charged), "seed {seed}");
        }
    }

    #[test]
    fn take_then_rebase_keeps_what_was_recorded_meanwhile() {
        let ledger = replica();
        ledger
            .charge(
                None,
                &booking("u"),
                &[item("kv:write", 2)],
                ChargeMode::Always,
            )
            .unwrap();
        let taken = ledger.take_for_fleet(&[], replica::Release::None);
        assert_eq!(taken.len(), 1);
        let sent = UserFigures::of(&taken[0].image);
        // Recorded after the take: still unsent.
        ledger
            .charge(
                None,
                &booking("u"),
                &[item("kv:write", 1)],
                ChargeMode::Always,
            )
            .unwrap();
        // The fleet's figures: what was sent, plus another worker's 4 writes.
        let other = replica();
        other
            .charge(
                None,
                &booking("u"),
                &[item("kv:write", 4)],
                ChargeMode::Always,
            )
            .unwrap();
        let theirs = UserFigures::of(
            &other
                .take_for_fleet(&[], replica::Release::None)
                .remove(0)
                .image,
        );
        let fleet = sent.plus(&theirs);
        ledger.rebase("u", &fleet.minus(&sent), None).unwrap();
        let usage = ledger.user_usage("u", OCTOBER);
        assert_eq!(usage.total, m(125 * 7));
    }
}

mod holds {
    use super::*;

    fn at(user_id: &str, now_ms: i64) -> Booking<'_> {
        Booking {
            now_ms,
            ..booking(user_id)
        }
    }

    fn reserve(ledger: &Ledger, now_ms: i64, microcents: i128) -> Option<u64> {
        let id = ledger.new_hold_id();
        let receipt = ledger
            .reserve(None, &at("u", now_ms), id, m(microcents), 1_000)
            .unwrap();
        receipt.accepted.then_some(id)
    }

    fn remaining(ledger: &Ledger, now_ms: i64) -> Money {
        let plan = booking("u").plan;
        ledger.budget("u", OCTOBER, plan, now_ms).unwrap().remaining
    }

    #[test]
    fn a_hold_lowers_what_remains_and_every_affordability_check_but_no_allowance_figure() {
        let ledger = ledger();
        let id = reserve(&ledger, 0, 600).unwrap();
        assert_eq!(remaining(&ledger, 0), m(400));
        let budget = ledger.budget("u", OCTOBER, booking("u").plan, 0).unwrap();
        assert_eq!((budget.held, budget.pools), (m(600), MonthPools::default()));
        // 500 µ¢ no longer fit, 400 do; a second hold of 500 is refused too.
        let try_charge = |microcents| {
            let receipt = ledger.charge(
                None,
                &at("u", 0),
                &[costing(microcents)],
                ChargeMode::IfAffordable,
            );
            receipt.unwrap().accepted
        };
        assert!(!try_charge(500));
        assert_eq!(reserve(&ledger, 0, 500), None);
        assert!(try_charge(400));
        assert_eq!(remaining(&ledger, 0), m(0));
        // Released, the hold's budget is back.
        assert_eq!(ledger.release("u", id, 0).unwrap().unwrap().amount, m(600));
        assert_eq!(remaining(&ledger, 0), m(600));
        // Released once: a second release is refused.
        let again = ledger.release("u", id, 0);
        assert!(matches!(again, Err(LedgerError::HoldFinished(_))));
    }

    #[test]
    fn settling_records_the_real_usage_and_frees_the_rest_in_one_step() {
        let ledger = ledger();
        let id = reserve(&ledger, 0, 700).unwrap();
        let items = [item("kv:write", 2)];
        let (receipt, hold) = ledger.settle(None, &at("u", 5), id, &items).unwrap();
        assert_eq!((receipt.cost, receipt.month_total), (m(250), m(250)));
        assert_eq!(hold.unwrap().amount, m(700));
        assert_eq!(remaining(&ledger, 5), m(750));
        // More than the hold is recorded too (the call ran): into overage past the budget.
        let id = reserve(&ledger, 5, 100).unwrap();
        let items = [costing(2_000)];
        let (receipt, _) = ledger.settle(None, &at("u", 5), id, &items).unwrap();
        assert!(receipt.accepted);
        assert_eq!(receipt.split.overage, m(1_250));
        // A hold settled already: refused, nothing recorded.
        let again = ledger.settle(None, &at("u", 5), id, &items);
        assert!(matches!(again, Err(LedgerError::HoldFinished(_))));
        assert_eq!(ledger.user_usage("u", OCTOBER).total, m(2_250));
        // A hold that expired or is unknown: the usage is still recorded (the call ran), no hold
        // is returned; once.
        let expired = reserve(&ledger, 5, 0).unwrap();
        let (receipt, hold) = ledger
            .settle(None, &at("u", 2_000), expired, &items)
            .unwrap();
        assert!(receipt.accepted && hold.is_none());
        let again = ledger.settle(None, &at("u", 2_000), expired, &items);
        assert!(matches!(again, Err(LedgerError::HoldFinished(_))));
    }

    fn keyed_call(key: &str, now_ms: i64) -> crate::ledger::idempotency::KeyedCall<'_> {
        crate::ledger::idempotency::KeyedCall {
            key,
            fingerprint: crate::ledger::idempotency::FingerprintBuilder::new("settle").finish(),
            now_ms,
            kind: crate::ledger::idempotency::KeyKind::Caller,
        }
    }

    #[test]
    fn a_hold_settles_once_whatever_the_key_and_a_retry_with_the_first_key_replays() {
        use crate::ledger::idempotency::Keyed;
        let ledger = ledger();
        let id = reserve(&ledger, 0, 700).unwrap();
        let items = [item("kv:write", 2)];
        let first = ledger.settle_keyed(None, &at("u", 5), id, &items, &keyed_call("a", 5));
        assert!(matches!(first, Ok(Keyed::Done(_))));
        let retry = ledger.settle_keyed(None, &at("u", 6), id, &items, &keyed_call("a", 6));
        assert!(matches!(retry, Ok(Keyed::Replayed(o)) if o.total == m(250)));
        let other = ledger.settle_keyed(None, &at("u", 7), id, &items, &keyed_call("b", 7));
        assert!(matches!(other, Err(LedgerError::HoldFinished(_))));
        let unkeyed = ledger.settle(None, &at("u", 8), id, &items);
        assert!(matches!(unkeyed, Err(LedgerError::HoldFinished(_))));
        assert!(matches!(
            ledger.extend("u", id, 100, 9),
            Err(LedgerError::HoldFinished(_))
        ));
        assert_eq!(ledger.user_usage("u", OCTOBER).total, m(250));
    }

    #[test]
    fn a_fleet_claim_takes_a_hold_once_and_gives_it_back_when_the_charge_fails() {
        use crate::ledger::holds::Claim;
        let ledger = ledger();
        let id = reserve(&ledger, 0, 700).unwrap();
        let claim = ledger.claim_settle("u", id, "a", 1).unwrap();
        assert!(matches!(claim, Claim::Taken(Some(hold)) if hold.amount == m(700)));
        assert_eq!(ledger.claim_settle("u", id, "a", 2).unwrap(), Claim::Retry);
        let other = ledger.claim_settle("u", id, "b", 2);
        assert!(matches!(other, Err(LedgerError::HoldFinished(_))));
        let Claim::Taken(hold) = claim else {
            unreachable!()
        };
        ledger.unclaim_settle("u", id, hold);
        assert_eq!(ledger.held("u", 3), m(700));
        assert!(matches!(
            ledger.claim_settle("u", id, "b", 3),
            Ok(Claim::Taken(Some(_)))
        ));
    }

    #[test]
    fn a_finished_hold_is_forgotten_after_its_window_and_the_memory_is_bounded() {
        let ledger = ledger()
            .with_key_limits(crate::ledger::idempotency::KeyLimits {
                window_ms: 10_000,
                ..Default::default()
            })
            .track_changes();
        let items = [item("kv:write", 2)];
        let id = reserve(&ledger, 0, 7).unwrap();
        ledger.settle(None, &at("u", 5), id, &items).unwrap();
        assert!(ledger.settle(None, &at("u", 10_004), id, &items).is_err());
        assert!(ledger.settle(None, &at("u", 10_005), id, &items).is_ok());
        // A caller that settles unknown ids by the thousand keeps at most the bound.
        let bound = super::super::holds::MAX_FINISHED_PER_USER as u64;
        for unknown in 0..bound + 10 {
            ledger
                .settle(None, &at("u", 20_000), 1 << 40 | unknown, &items)
                .unwrap();
        }
        let images = ledger.take_changes();
        assert_eq!(images[0].holds.len() as u64, bound);
    }

    #[test]
    fn the_email_flag_travels_with_the_user_image_and_forget_plan_clears_it() {
        let ledger = ledger().track_changes();
        ledger
            .charge(None, &at("u", 0), &[costing(1)], ChargeMode::Always)
            .unwrap();
        ledger.note_email_seen("u");
        ledger.note_email_seen("nobody"); // no account: nothing made
        assert_eq!(ledger.user_count(), 1);
        let images = ledger.take_changes();
        // Stored as an expired hold of nothing, which an older reader ignores.
        assert!(images[0]
            .holds
            .iter()
            .all(|h| h.amount == m(0) && h.expires_ms < 0));
        let restored = super::ledger().track_changes();
        restored.restore(images);
        assert!(restored.email_seen("u") && restored.holds("u", 0).is_empty());
        restored.forget_plan("u");
        assert!(!restored.email_seen("u"));
        let images = restored.take_changes();
        assert!(images[0].holds.is_empty());
    }

    #[test]
    fn a_finished_hold_outlives_a_restore() {
        let ledger = ledger().track_changes();
        let settled = reserve(&ledger, 0, 300).unwrap();
        let released = reserve(&ledger, 0, 200).unwrap();
        let live = reserve(&ledger, 0, 100).unwrap();
        ledger
            .settle(None, &at("u", 1), settled, &[item("kv:write", 2)])
            .unwrap();
        ledger.release("u", released, 1).unwrap();
        let images = ledger.take_changes();
        // An older reader of format 3 sees the finished ones as expired holds of nothing.
        let stored: Vec<_> = images[0].holds.iter().filter(|h| h.id != live).collect();
        assert!(stored.iter().all(|h| h.amount == m(0) && h.expires_ms < 0));
        let restored = super::ledger();
        restored.restore(images);
        assert_eq!(restored.held("u", 2), m(100));
        assert_eq!(
            restored
                .holds("u", 2)
                .iter()
                .map(|h| h.id)
                .collect::<Vec<_>>(),
            [live]
        );
        let again = restored.settle(None, &at("u", 2), settled, &[item("kv:write", 2)]);
        assert!(matches!(again, Err(LedgerError::HoldFinished(m)) if m.contains("settled")));
        let again = restored.settle(None, &at("u", 2), released, &[item("kv:write", 2)]);
        assert!(matches!(again, Err(LedgerError::HoldFinished(m)) if m.contains("released")));
    }

    #[test]
    fn a_hold_holds_nothing_once_expired_and_cannot_be_revived() {
        let ledger = ledger();
        let id = reserve(&ledger, 10_000, 900).unwrap();
        assert_eq!(remaining(&ledger, 10_999), m(100));
        assert_eq!(remaining(&ledger, 11_000), m(1_000));
        let extended = ledger.extend("u", id, 5_000, 10_500).unwrap().unwrap();
        assert_eq!(extended.expires_ms, 15_500);
        assert_eq!(remaining(&ledger, 15_499), m(100));
        assert_eq!(ledger.extend("u", id, 5_000, 15_500).unwrap(), None);
        assert!(ledger.holds("u", 15_500).is_empty());
        assert_eq!(ledger.release("u", id, 15_500).unwrap(), None);
    }

    #[test]
    fn bad_holds_are_refused_and_change_nothing() {
        let ledger = ledger();
        for (microcents, ttl_ms) in [(-1, 1_000), (5, 0), (5, -1), (5, 367 * 86_400_000)] {
            let error = ledger.reserve(None, &at("u", 0), 1, m(microcents), ttl_ms);
            assert!(matches!(error, Err(LedgerError::InvalidInput(_))));
        }
        let late = ledger.reserve(None, &at("u", i64::MAX - 10), 1, m(5), 1_000);
        assert!(matches!(late, Err(LedgerError::Overflow(_))));
        let huge = ledger.reserve(None, &at("u", 0), 1, m(1_000_000_000_000_000_001), 1_000);
        assert!(matches!(huge, Err(LedgerError::Overflow(_))));
        assert!(ledger.holds("u", 0).is_empty());
        assert_eq!(remaining(&ledger, 0), m(1_000));
    }

    #[test]
    fn a_user_has_a_bounded_number_of_holds() {
        let ledger = ledger();
        for _ in 0..super::super::holds::MAX_HOLDS_PER_USER {
            assert!(reserve(&ledger, 0, 0).is_some());
        }
        let error = ledger.reserve(None, &at("u", 0), 0, m(0), 1_000);
        assert!(matches!(error, Err(LedgerError::InvalidInput(_))));
        // Expired ones do not count.
        assert!(reserve(&ledger, 1_000, 0).is_some());
    }

    #[test]
    fn sixteen_threads_reserving_the_last_credits_never_hold_more_than_the_budget() {
        let ledger = Arc::new(ledger());
        let accepted: u64 = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    let ledger = Arc::clone(&ledger);
                    scope.spawn(move || (0..100).filter_map(|_| reserve(&ledger, 0, 7)).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap() as u64).sum()
        });
        assert_eq!(accepted, 1_000 / 7);
        assert_eq!(ledger.held("u", 0), m(7 * (1_000 / 7)));
    }

    #[test]
    fn a_refused_strict_call_of_a_user_never_charged_leaves_no_account() {
        use crate::ledger::idempotency::Keyed;
        let ledger = ledger().track_changes();
        let too_much = [costing(1_001)];
        for user in ["a", "b", "c"] {
            let refused = ledger.charge(None, &at(user, 0), &too_much, ChargeMode::IfAffordable);
            assert!(!refused.unwrap().accepted);
            let held = ledger
                .reserve(None, &at(user, 0), 1, m(1_001), 1_000)
                .unwrap();
            assert!(!held.accepted);
            let call = keyed_call("k", 0);
            let keyed = ledger.charge_keyed(
                None,
                &at(user, 0),
                &too_much,
                ChargeMode::IfAffordable,
                &call,
            );
            assert!(matches!(keyed, Ok(Keyed::Done(receipt)) if !receipt.accepted));
        }
        assert_eq!(ledger.user_count(), 0);
        assert!(ledger.take_changes().is_empty());
        // Bad input still raises for a user never charged, and leaves nothing either.
        let bad = ledger.charge(None, &at("d", 0), &[item("", 1)], ChargeMode::IfAffordable);
        assert!(bad.is_err());
        assert_eq!(ledger.user_count(), 0);
        // Accepted calls make the account, once, and record.
        let fits = [costing(1_000)];
        assert!(
            ledger
                .charge(None, &at("a", 0), &fits, ChargeMode::IfAffordable)
                .unwrap()
                .accepted
        );
        assert!(
            ledger
                .reserve(None, &at("b", 0), 2, m(1_000), 1_000)
                .unwrap()
                .accepted
        );
        assert_eq!(ledger.user_count(), 2);
        assert_eq!(ledger.user_usage("a", OCTOBER).total, m(1_000));
        assert_eq!(ledger.held("b", 0), m(1_000));
        let users: Vec<_> = ledger
            .take_changes()
            .into_iter()
            .map(|u| u.user_id)
            .collect();
        assert_eq!(users, ["a", "b"]);
    }

    #[test]
    fn holds_travel_with_the_user_image_and_ids_stay_unique_after_a_restore() {
        let ledger = ledger().track_changes();
        let id = reserve(&ledger, 0, 300).unwrap();
        let images = ledger.take_changes();
        assert_eq!(images[0].holds.len(), 1);
        let restored = super::ledger();
        restored.restore(images);
        assert_eq!(restored.held("u", 0), m(300));
        assert_ne!(restored.new_hold_id(), id);
    }
}

mod keys {
    use super::*;
    use crate::ledger::idempotency::{KeyKind, KeyLimits, Keyed, KeyedCall, Outcome};

    fn call(key: &str, fingerprint: u8, now_ms: i64) -> KeyedCall<'_> {
        KeyedCall {
            key,
            fingerprint: [fingerprint; 16],
            now_ms,
            kind: KeyKind::Caller,
        }
    }

    fn charge(
        ledger: &Ledger,
        key: &KeyedCall<'_>,
        mode: ChargeMode,
    ) -> LedgerResult<Keyed<Receipt>> {
        ledger.charge_keyed(None, &booking("u"), &[item("kv:write", 1)], mode, key)
    }

    #[test]
    fn a_retry_records_once_and_replays_the_first_result() {
        let ledger = ledger();
        let first = charge(&ledger, &call("k", 1, 0), ChargeMode::Always).unwrap();
        let Keyed::Done(receipt) = first else {
            panic!("{first:?}")
        };
        assert_eq!(receipt.month_total, m(125));
        // Another charge in between: the retry still returns the first call's total.
        ledger
            .charge(
                None,
                &booking("u"),
                &[item("kv:read", 1)],
                ChargeMode::Always,
            )
            .unwrap();
        let retry = charge(&ledger, &call("k", 1, 10), ChargeMode::Always).unwrap();
        assert_eq!(
            retry,
            Keyed::Replayed(Outcome {
                total: m(125),
                cost: m(125)
            })
        );
        assert_eq!(ledger.user_usage("u", OCTOBER).total, m(188));
        let reused = charge(&ledger, &call("k", 2, 10), ChargeMode::Always);
        assert!(
            matches!(reused, Err(LedgerError::KeyReused(_))),
            "{reused:?}"
        );
        assert_eq!(ledger.user_usage("u", OCTOBER).total, m(188));
        assert_eq!(ledger.key_count(), 1);
    }

    #[test]
    fn a_refusal_or_an_error_keeps_no_key() {
        let ledger = ledger();
        let poor = Booking {
            plan: Plan::Fixed(m(100)),
            ..booking("u")
        };
        let refused = ledger
            .charge_keyed(
                None,
                &poor,
                &[item("kv:write", 1)],
                ChargeMode::IfAffordable,
                &call("k", 1, 0),
            )
            .unwrap();
        assert!(matches!(refused, Keyed::Done(r) if !r.accepted));
        let bad = ledger.charge_keyed(
            None,
            &poor,
            &[item("nope", 1)],
            ChargeMode::Always,
            &call("k", 2, 0),
        );
        assert!(matches!(bad, Err(LedgerError::UnknownUsageType(_))));
        assert_eq!(ledger.key_count(), 0);
        // The retry is decided again (here on a larger allowance) and may use another payload.
        let retried = charge(&ledger, &call("k", 3, 0), ChargeMode::IfAffordable).unwrap();
        assert!(matches!(retried, Keyed::Done(r) if r.accepted));
    }

    #[test]
    fn keys_expire_after_the_window_and_are_bounded() {
        let ledger = ledger().with_key_limits(KeyLimits {
            window_ms: 1_000,
            per_user: 2,
            global: 3,
        });
        charge(&ledger, &call("a", 1, 0), ChargeMode::Always).unwrap();
        charge(&ledger, &call("b", 1, 500), ChargeMode::Always).unwrap();
        let full = charge(&ledger, &call("c", 1, 600), ChargeMode::Always);
        assert!(matches!(full, Err(LedgerError::KeyLimit(_))), "{full:?}");
        // "a" expired at 1,000: a new key fits, and "a" is a new call again.
        assert!(matches!(
            charge(&ledger, &call("c", 1, 1_000), ChargeMode::Always),
            Ok(Keyed::Done(_))
        ));
        assert!(matches!(
            charge(&ledger, &call("b", 1, 1_000), ChargeMode::Always),
            Ok(Keyed::Replayed(_))
        ));
        assert_eq!(ledger.user_usage("u", OCTOBER).count, 3);
        // The global bound: another user's keys count too.
        let other = |key| {
            ledger.charge_keyed(
                None,
                &booking("v"),
                &[item("kv:write", 1)],
                ChargeMode::Always,
                &call(key, 1, 1_100),
            )
        };
        other("x").unwrap();
        assert!(matches!(other("y"), Err(LedgerError::KeyLimit(_))));
        assert_eq!(ledger.key_count(), 3);
    }

    #[test]
    fn threads_racing_with_one_key_record_once() {
        let ledger = Arc::new(ledger());
        let results: Vec<_> = (0..16)
            .map(|_| {
                let ledger = Arc::clone(&ledger);
                std::thread::spawn(move || {
                    charge(&ledger, &call("race", 1, 0), ChargeMode::Always).unwrap()
                })
            })
            .map(|thread| thread.join().unwrap())
            .collect();
        let done = results
            .iter()
            .filter(|r| matches!(r, Keyed::Done(_)))
            .count();
        assert_eq!(done, 1);
        assert_eq!(ledger.user_usage("u", OCTOBER).count, 1);
    }

    #[test]
    fn keys_go_to_the_snapshot_with_their_charge_and_come_back() {
        let ledger = ledger().track_changes();
        charge(&ledger, &call("k", 1, 0), ChargeMode::Always).unwrap();
        let taken = ledger.take_changes();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].months.len(), 1);
        let keys = taken[0].keys.clone().unwrap();
        assert_eq!(keys[0].key, "k");
        // Unchanged keys are not taken again.
        ledger.add_purchased("u", m(1)).unwrap();
        assert_eq!(ledger.take_changes()[0].keys, None);
        let restored = self::ledger();
        restored.restore(taken);
        assert_eq!(restored.key_count(), 1);
        assert!(matches!(
            charge(&restored, &call("k", 1, 5), ChargeMode::Always),
            Ok(Keyed::Replayed(_))
        ));
        assert_eq!(restored.user_usage("u", OCTOBER).count, 1);
    }

    #[test]
    fn monthly_charges_are_claimed_once_per_month() {
        let ledger = ledger();
        let now = OCTOBER.start_epoch_ms() + 5;
        let seat = [costing(500)];
        let first = ledger
            .apply_monthly(None, &booking("u"), &seat, now)
            .unwrap();
        assert!(matches!(first, Keyed::Done(r) if r.cost == m(500)));
        let again = ledger
            .apply_monthly(None, &booking("u"), &[costing(900)], now + 1)
            .unwrap();
        assert_eq!(
            again,
            Keyed::Replayed(Outcome {
                total: m(500),
                cost: m(500)
            })
        );
        assert_eq!(
            ledger.monthly_applied("u", OCTOBER, now),
            Some(Outcome {
                total: m(500),
                cost: m(500)
            })
        );
        // Kept until October is over, though the window is a day.
        let late = NOVEMBER.start_epoch_ms() - 1;
        assert!(ledger.monthly_applied("u", OCTOBER, late).is_some());
        let november = Booking {
            month: NOVEMBER,
            ..booking("u")
        };
        let next = ledger
            .apply_monthly(None, &november, &seat, NOVEMBER.start_epoch_ms())
            .unwrap();
        assert!(matches!(next, Keyed::Done(_)));
        assert_eq!(ledger.user_usage("u", NOVEMBER).total, m(500));
        // Monthly keys are not caller keys: they are not bounded and callers cannot pass them.
        assert_eq!(ledger.key_count(), 0);
    }
}

#[test]
fn a_table_prices_the_whole_request_at_the_bookings_time_and_service_tier() {
    let map = CostMap::from_json_sources([(
        "tables.json",
        r#"{"p": {"price": 2, "tiers": [{"above": 10, "count": ["p"], "price": 3}],
                  "service_tiers": {"flex": 1}},
            "o": {"price": 5, "tiers": [{"above": 10, "count": ["p"], "price": 7}],
                  "from": [{"date": "1970-01-02", "price": 6}]},
            "plain": 4}"#,
    )])
    .unwrap();
    let ledger = Ledger::new(Arc::new(map), Unmapped::Error);
    let big = [item("p", 11), item("o", 1), item("plain", 1)];
    // The plain index does not know the tables: a charge finds them in its error branch.
    assert!(matches!(
        ledger.deltas_of(&big),
        Err(LedgerError::PricedByTable(name)) if name == "p"
    ));
    let receipt = ledger
        .charge(None, &booking("u"), &big, ChargeMode::Always)
        .unwrap();
    assert_eq!(receipt.cost, m(11 * 3 + 7 + 4));
    let small = [item("p", 10), item("o", 1)];
    let flex = ledger
        .charge_request(
            None,
            &booking("v"),
            &small,
            ChargeMode::Always,
            Some("flex"),
        )
        .unwrap();
    assert_eq!(flex.cost, m(10 + 5));
    let next_day = Booking {
        now_ms: 86_400_000,
        ..booking("w")
    };
    let dated = ledger
        .charge(None, &next_day, &small, ChargeMode::Always)
        .unwrap();
    assert_eq!(dated.cost, m(10 * 2 + 6));
    let unknown =
        ledger.charge_request(None, &booking("x"), &small, ChargeMode::Always, Some("flx"));
    assert!(
        matches!(unknown, Err(LedgerError::InvalidInput(reason)) if reason.contains("\"flx\""))
    );
    assert_eq!(ledger.cost_of("plain", 2).unwrap(), m(8));
    assert!(matches!(
        ledger.cost_of("o", 1),
        Err(LedgerError::PricedByTable(_))
    ));
    assert_eq!(ledger.meter_type("p").unwrap(), None);
}
