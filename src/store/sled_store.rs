//! The sled backend (the product design's default).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use super::{Store, StoreError, StoreResult};

pub struct SledStore {
    db: sled::Db,
}

/// sled reports some damage by panicking; a panic while opening or reading is corruption.
fn guarded<T>(what: &str, f: impl FnOnce() -> sled::Result<T>) -> StoreResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(sled::Error::Io(e))) => Err(StoreError::Write(format!("sled {what}: {e}"))),
        Ok(Err(e)) => Err(StoreError::Corrupted(format!("sled {what}: {e}"))),
        Err(_) => Err(StoreError::Corrupted(format!(
            "sled panicked during {what}"
        ))),
    }
}

impl SledStore {
    pub fn open(dir: &Path) -> StoreResult<SledStore> {
        let config = sled::Config::new().path(dir);
        // An I/O error while opening (no space, no permission) is not damage: plain StoreError.
        let db = guarded("open", || config.open()).map_err(|e| match e {
            StoreError::Write(message) => StoreError::Other(message),
            other => other,
        })?;
        Ok(SledStore { db })
    }
}

impl Store for SledStore {
    fn load(&self) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        guarded("read", || {
            self.db
                .iter()
                .map(|pair| pair.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect()
        })
        .map_err(|e| match e {
            StoreError::Write(message) => StoreError::Corrupted(message),
            other => other,
        })
    }

    fn contains(&self, key: &[u8]) -> StoreResult<bool> {
        guarded("read", || self.db.contains_key(key))
    }

    fn write_changes(
        &mut self,
        puts: &[(Vec<u8>, Vec<u8>)],
        removes: &[Vec<u8>],
    ) -> StoreResult<()> {
        let mut batch = sled::Batch::default();
        for (key, value) in puts {
            batch.insert(key.as_slice(), value.as_slice());
        }
        for key in removes {
            batch.remove(key.as_slice());
        }
        guarded("write", || self.db.apply_batch(batch))
    }

    fn flush(&mut self) -> StoreResult<()> {
        guarded("flush", || self.db.flush()).map(|_| ())
    }
}
