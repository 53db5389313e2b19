//! The sled backend (the product design's default).

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::guard::quietly;
use super::{Store, StoreError, StoreResult};

/// How long opening retries while sled's own lock is still held, and closing waits for it.
///
/// sled's `Db` drop returns before its files are closed: its `sled-io-*` pool threads hold the
/// locked file until they finish, so an immediate reopen in the same process failed with
/// "could not acquire lock ... WouldBlock" 17 times in 500. Our `LOCK` file (taken first)
/// already excludes every other usagemeter opener, so the only holder can be our own handle,
/// about to let go.
const SLED_LOCK_WAIT: Duration = Duration::from_secs(5);

pub struct SledStore {
    /// `None` only while dropping.
    db: Option<sled::Db>,
    /// sled's own lock file (`sled/db`, locked with flock by sled).
    lock_path: PathBuf,
}

fn sled_call<T>(what: &str, f: impl FnOnce() -> sled::Result<T>) -> StoreResult<T> {
    quietly("sled", what, || match f() {
        Ok(value) => Ok(value),
        Err(sled::Error::Io(e)) => Err(StoreError::Write(format!("sled {what}: {e}"))),
        Err(e) => Err(StoreError::Corrupted(format!("sled {what}: {e}"))),
    })
}

/// sled says its lock is taken only in its message (an `Io` error of kind `Other`).
fn is_lock_error(error: &StoreError) -> bool {
    matches!(error, StoreError::Write(message) if message.contains("could not acquire lock"))
}

/// Waits (up to `SLED_LOCK_WAIT`) until nothing holds the flock on `path`; true once free.
fn wait_for_unlock(path: &Path) -> bool {
    let deadline = Instant::now() + SLED_LOCK_WAIT;
    loop {
        let free = match File::options().read(true).open(path) {
            Ok(file) => match file.try_lock() {
                Ok(()) => true, // released again when `file` is dropped
                Err(TryLockError::WouldBlock) => false,
                Err(TryLockError::Error(_)) => true, // cannot tell: do not wait
            },
            Err(_) => true, // no file, no lock
        };
        if free {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

impl SledStore {
    pub fn open(dir: &Path) -> StoreResult<SledStore> {
        let config = sled::Config::new().path(dir);
        let lock_path = dir.join("db");
        let deadline = Instant::now() + SLED_LOCK_WAIT;
        loop {
            match sled_call("open", || config.open()) {
                Ok(db) => {
                    return Ok(SledStore {
                        db: Some(db),
                        lock_path,
                    })
                }
                Err(e) if is_lock_error(&e) => {
                    if Instant::now() >= deadline {
                        return Err(StoreError::Locked(format!(
                            "the store's sled database at {} is still locked after {} s ({e}): {}",
                            dir.display(),
                            SLED_LOCK_WAIT.as_secs(),
                            super::ONE_PROCESS
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                // An I/O error while opening (no space, no permission) is not damage.
                Err(StoreError::Write(message)) => return Err(StoreError::Other(message)),
                Err(other) => return Err(other),
            }
        }
    }

    fn db(&self) -> StoreResult<&sled::Db> {
        self.db
            .as_ref()
            .ok_or_else(|| StoreError::Other("the sled database is closed".into()))
    }
}

impl Drop for SledStore {
    /// Closes the database and returns only once sled has let go of its lock, so the store can
    /// be reopened at once. A panic while closing a damaged database is swallowed quietly: the
    /// data is whatever was made durable before, and the next open verifies it.
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            let _ = quietly("sled", "close", || {
                drop(db);
                Ok(())
            });
        }
        wait_for_unlock(&self.lock_path);
    }
}

impl Store for SledStore {
    fn load(&self) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let db = self.db()?;
        sled_call("read", || {
            db.iter()
                .map(|pair| pair.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect()
        })
        .map_err(|e| match e {
            StoreError::Write(message) => StoreError::Corrupted(message),
            other => other,
        })
    }

    fn keys(&self) -> StoreResult<Vec<Vec<u8>>> {
        let db = self.db()?;
        sled_call("read", || {
            db.iter()
                .keys()
                .map(|key| key.map(|k| k.to_vec()))
                .collect()
        })
    }

    fn contains(&self, key: &[u8]) -> StoreResult<bool> {
        let db = self.db()?;
        sled_call("read", || db.contains_key(key))
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
        let db = self.db()?;
        sled_call("write", || db.apply_batch(batch))
    }

    fn flush(&mut self) -> StoreResult<()> {
        let db = self.db()?;
        sled_call("flush", || db.flush()).map(|_| ())
    }
}
