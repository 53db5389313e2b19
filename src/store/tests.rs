//! Stores on real disks: round trips, refusal of damage, locking, recovery, for both backends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::snapshot::Snapshotter;
use super::*;
use crate::costmap::CostMap;
use crate::ledger::month::MonthId;
use crate::ledger::{Booking, ChargeMode, Ledger, Plan, Unmapped, UsageItem};
use crate::money::Money;

const BACKENDS: [Backend; 2] = [Backend::Sled, Backend::Redb];
const OCTOBER: MonthId = MonthId(2026 * 12 + 9);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("usagemeter-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn ledger() -> Ledger {
    let map =
        CostMap::from_json_sources([("t.json", r#"{"kv:write": 125, "kv:read": 63}"#)]).unwrap();
    Ledger::new(Arc::new(map), Unmapped::Error).track_changes()
}

fn charge(ledger: &Ledger, user_id: &str, app_id: &str, units: u64) {
    let booking = Booking {
        user_id,
        app_id,
        month: OCTOBER,
        day: 5,
        plan: Plan::Fixed(Money::from_microcents(1_000).unwrap()),
        now_ms: 0,
    };
    let item = UsageItem {
        usage_type: "kv:write",
        units,
        cost_override: None,
    };
    ledger
        .charge(None, &booking, &[item], ChargeMode::Always)
        .unwrap();
}

fn write_sample(dir: &std::path::Path, backend: Backend) {
    let (store, loaded) = LedgerStore::open(dir, backend).unwrap();
    assert!(loaded.users.is_empty());
    let ledger = Arc::new(ledger());
    let snapshotter = Snapshotter::start(
        Arc::clone(&ledger),
        store,
        Duration::from_secs(60),
        Box::new(|_| {}),
    );
    charge(&ledger, "alice", "os-global", 3);
    charge(&ledger, "alice", "app-1", 1);
    charge(&ledger, "bob", "os-global", 2);
    ledger
        .add_purchased("carol", Money::from_microcents(500).unwrap())
        .unwrap();
    snapshotter.flush().unwrap();
    charge(&ledger, "bob", "os-global", 1);
    snapshotter.stop().unwrap();
}

#[test]
fn a_closed_store_reopens_with_everything() {
    for backend in BACKENDS {
        let dir = temp_dir(&format!("roundtrip-{}", backend.name()));
        write_sample(&dir, backend);
        let (_store, loaded) = LedgerStore::open(&dir, backend).unwrap();
        let restored = ledger();
        restored.restore(loaded.users);
        assert_eq!(
            restored.user_usage("alice", OCTOBER).total,
            Money::from_microcents(500).unwrap()
        );
        assert_eq!(
            restored.user_usage("bob", OCTOBER).total,
            Money::from_microcents(375).unwrap()
        );
        assert_eq!(restored.app_totals("alice", OCTOBER).len(), 2);
        assert_eq!(
            restored.global_usage(OCTOBER).unwrap().total,
            Money::from_microcents(875).unwrap()
        );
        let carol = restored
            .budget("carol", OCTOBER, Plan::Fixed(Money::ZERO), 0)
            .unwrap();
        assert_eq!(carol.credit.purchased, Money::from_microcents(500).unwrap());
        assert_eq!(
            loaded.records, 5,
            "credits of alice, bob, carol and two months"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_second_opener_is_refused_at_once() {
    for backend in BACKENDS {
        let dir = temp_dir(&format!("locked-{}", backend.name()));
        let (_held, _) = LedgerStore::open(&dir, backend).unwrap();
        assert!(matches!(
            LedgerStore::open(&dir, backend),
            Err(StoreError::Locked(_))
        ));
        drop(_held);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn the_other_backend_is_refused() {
    let dir = temp_dir("mismatch");
    drop(LedgerStore::open(&dir, Backend::Redb).unwrap());
    let error = LedgerStore::open(&dir, Backend::Sled).err().unwrap();
    assert!(
        matches!(&error, StoreError::Other(m) if m.contains("redb")),
        "{error:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn vanished_data_is_corruption_not_an_empty_store() {
    for backend in BACKENDS {
        let dir = temp_dir(&format!("vanished-{}", backend.name()));
        write_sample(&dir, backend);
        std::fs::remove_dir_all(backend.data_path(&dir)).unwrap();
        let error = LedgerStore::open(&dir, backend).err().unwrap();
        assert!(matches!(error, StoreError::Corrupted(_)), "{error:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_damaged_record_is_named_then_recovered_without_it() {
    for backend in BACKENDS {
        let dir = temp_dir(&format!("damaged-{}", backend.name()));
        write_sample(&dir, backend);
        {
            // Damage one record through the backend itself (its own checksums stay valid, ours not).
            let mut store = backend.open(&dir).unwrap();
            let key = codec::Key::Credit {
                user_id: "carol".into(),
            }
            .encode();
            let mut value = store
                .load()
                .unwrap()
                .into_iter()
                .find(|(k, _)| *k == key)
                .unwrap()
                .1;
            value[3] ^= 0x40;
            store.write_changes(&[(key, value)], &[]).unwrap();
            store.flush().unwrap();
        }
        let error = LedgerStore::open(&dir, backend).err().unwrap();
        assert!(
            matches!(&error, StoreError::Corrupted(m) if m.contains("carol")),
            "{error:?}"
        );
        let recovery = recover(&dir).unwrap();
        assert_eq!(recovery.kept, 4);
        assert_eq!(recovery.dropped.len(), 1);
        assert!(recovery.dropped[0].contains("carol"));
        let (_store, loaded) = LedgerStore::open(&dir, backend).unwrap();
        assert_eq!(
            loaded
                .users
                .iter()
                .map(|u| u.user_id.as_str())
                .collect::<Vec<_>>(),
            ["alice", "bob"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_dropped_key_is_described_once_as_text() {
    for backend in BACKENDS {
        let dir = temp_dir(&format!("bad-key-{}", backend.name()));
        write_sample(&dir, backend);
        {
            let mut store = backend.open(&dir).unwrap();
            let bad_keys = [b"z\x01\xffodd \"key\"".to_vec(), b"c\xff\xfe".to_vec()];
            let puts: Vec<_> = bad_keys
                .iter()
                .map(|k| (k.clone(), b"x".to_vec()))
                .collect();
            store.write_changes(&puts, &[]).unwrap();
            store.flush().unwrap();
        }
        let error = LedgerStore::open(&dir, backend).err().unwrap().to_string();
        assert!(
            !error.contains('['),
            "a key printed as a byte list: {error}"
        );
        let mut dropped = recover(&dir).unwrap().dropped;
        dropped.sort();
        assert_eq!(
            dropped,
            [
                r#"key "c\xff\xfe": the user id is not UTF-8"#,
                r#"key "z\x01\xffodd \"key\"": not a key this version writes"#,
            ],
            "{backend:?}"
        );
        LedgerStore::open(&dir, backend).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn the_record_count_holds_after_a_failed_batch_that_partly_landed() {
    for backend in BACKENDS {
        let dir = temp_dir(&format!("partly-landed-{}", backend.name()));
        let user = |user_id: &str| crate::ledger::image::UserImage {
            user_id: user_id.into(),
            credit: crate::ledger::pools::Credit {
                purchased: Money::from_microcents(5).unwrap(),
                consumed: Money::ZERO,
            },
            plan: None,
            holds: Vec::new(),
            months: Vec::new(),
            keys: None,
        };
        {
            let (mut store, _) = LedgerStore::open(&dir, backend).unwrap();
            store.write_snapshot(&[user("alice")]).unwrap();
            // A batch for bob fails after his record landed (a full disk stops sled midway):
            // the record is in the store, the meta record still counts 1.
            let mut types = codec::TypeTable::default();
            let landed = codec::encode_user(&user("bob"), &mut types);
            store.store.write_changes(&landed, &[]).unwrap();
            store.store.flush().unwrap();
            store.reopen = true;
            // Space is back: the retry writes bob again, then carol.
            store.write_snapshot(&[user("bob")]).unwrap();
            store.write_snapshot(&[user("carol")]).unwrap();
        }
        let (_store, loaded) = LedgerStore::open(&dir, backend)
            .unwrap_or_else(|e| panic!("{backend:?} does not reopen: {e}"));
        assert_eq!(loaded.records, 3);
        assert_eq!(loaded.users.len(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn open_with_takes_the_stores_own_backend_or_sled() {
    let dir = temp_dir("detect");
    let (store, _) = LedgerStore::open_with(&dir, None).unwrap();
    assert_eq!(store.backend(), Backend::Sled);
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
    drop(LedgerStore::open(&dir, Backend::Redb).unwrap());
    let (store, _) = LedgerStore::open_with(&dir, None).unwrap();
    assert_eq!(store.backend(), Backend::Redb);
    drop(store);
    let error = LedgerStore::open_with(&dir, Some(Backend::Sled))
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("uses the redb backend") && error.contains("sled"),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(
        LedgerStore::open_with(Path::new(""), None),
        Err(StoreError::Other(_))
    ));
}

/// A month record as version 2 wrote it (no per-day figures): `value` (version 3) re-encoded
/// without its days, the count byte cut, the version set to 2 and the checksum made again.
fn as_version_2(key: &[u8], value: &[u8], types: &mut codec::TypeTable) -> Vec<u8> {
    let image = codec::decode_month(key, value, types.names()).unwrap();
    let undated = crate::ledger::image::MonthImage {
        days: Vec::new(),
        ..image
    };
    let v3 = codec::encode_month(key, &undated, types);
    let mut body = v3[..v3.len() - 5].to_vec(); // less the checksum and the days' count (0)
    body[..2].copy_from_slice(&2u16.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(&body);
    body.extend_from_slice(&hasher.finalize().to_le_bytes());
    body
}

#[test]
fn months_of_a_version_2_store_load_undated_and_keep_their_days_after() {
    for backend in BACKENDS {
        let dir = temp_dir(&format!("v2-days-{}", backend.name()));
        write_sample(&dir, backend);
        {
            let mut store = backend.open(&dir).unwrap();
            let records = store.load().unwrap();
            let names = records.iter().find(|(k, _)| k == codec::TYPES_KEY).unwrap();
            let mut types = codec::TypeTable::from_names(codec::decode_types(&names.1).unwrap());
            let months: Vec<_> = records
                .iter()
                .filter(|(k, _)| matches!(codec::Key::decode(k), Ok(codec::Key::Month { .. })))
                .map(|(k, v)| (k.clone(), as_version_2(k, v, &mut types)))
                .collect();
            assert_eq!(months.len(), 2);
            store.write_changes(&months, &[]).unwrap();
            store.flush().unwrap();
        }
        let (store, loaded) = LedgerStore::open(&dir, backend).unwrap();
        let loaded_ledger = Arc::new(ledger());
        loaded_ledger.restore(loaded.users);
        let days = loaded_ledger.user_days("alice", OCTOBER);
        assert_eq!(days.len(), 1);
        assert_eq!(days[0].day, crate::ledger::days::UNDATED);
        assert_eq!(
            days[0].total,
            loaded_ledger.user_usage("alice", OCTOBER).total
        );
        // Metering goes on: the new usage has its day, the old stays undated, through a snapshot.
        let snapshotter = Snapshotter::start(
            Arc::clone(&loaded_ledger),
            store,
            Duration::from_secs(60),
            Box::new(|_| {}),
        );
        charge(&loaded_ledger, "alice", "app-1", 2);
        snapshotter.stop().unwrap();
        let (_store, loaded) = LedgerStore::open(&dir, backend).unwrap();
        let reopened = ledger();
        reopened.restore(loaded.users);
        let days = reopened.user_days("alice", OCTOBER);
        assert_eq!(days.iter().map(|d| d.day).collect::<Vec<_>>(), [0, 5]);
        assert_eq!(days[1].total, Money::from_microcents(250).unwrap());
        assert_eq!(days, loaded_ledger.user_days("alice", OCTOBER));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
