//! The redb backend: copy-on-write B-trees with checksummed pages and an fsync per commit.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::guard::quietly;
use super::{Store, StoreError, StoreResult};

const LEDGER: TableDefinition<&[u8], &[u8]> = TableDefinition::new("ledger");
pub const FILE_NAME: &str = "ledger.redb";

pub struct RedbStore {
    /// `None` only while dropping.
    db: Option<Database>,
}

fn write_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Write(format!("redb: {e}"))
}

fn corrupted(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupted(format!("redb: {e}"))
}

/// redb reports some damage by panicking ("entered unreachable code" on a flipped page, a
/// `Utf8Error` unwrapped on a damaged table name): every call runs in `quietly`, so a panic
/// becomes `StoreCorruptedError`, never a `PanicException`, and prints nothing.
fn guarded<T>(what: &str, f: impl FnOnce() -> StoreResult<T>) -> StoreResult<T> {
    quietly("redb", what, f)
}

impl RedbStore {
    pub fn open(dir: &Path) -> StoreResult<RedbStore> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Other(format!("cannot create {}: {e}", dir.display())))?;
        let db = guarded("open", || {
            Database::create(dir.join(FILE_NAME)).map_err(corrupted)
        })?;
        Ok(RedbStore { db: Some(db) })
    }

    fn db(&self) -> StoreResult<&Database> {
        self.db
            .as_ref()
            .ok_or_else(|| StoreError::Other("the redb database is closed".into()))
    }
}

impl Drop for RedbStore {
    /// A damaged file can open and read correctly and then panic while redb closes it: that
    /// panic is swallowed quietly (everything written was committed durably before; the next
    /// open verifies the file) instead of killing the snapshot thread and reaching `close()`.
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            let _ = guarded("close", || {
                drop(db);
                Ok(())
            });
        }
    }
}

impl Store for RedbStore {
    fn load(&self) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        guarded("read", || self.load_all())
    }

    fn keys(&self) -> StoreResult<Vec<Vec<u8>>> {
        guarded("read", || {
            self.load_all()
                .map(|pairs| pairs.into_iter().map(|(key, _)| key).collect())
        })
    }

    fn contains(&self, key: &[u8]) -> StoreResult<bool> {
        guarded("read", || self.contains_key(key))
    }

    fn write_changes(
        &mut self,
        puts: &[(Vec<u8>, Vec<u8>)],
        removes: &[Vec<u8>],
    ) -> StoreResult<()> {
        guarded("write", || self.write_batch(puts, removes))
    }

    fn flush(&mut self) -> StoreResult<()> {
        Ok(()) // every commit is already durable (redb's default durability is Immediate)
    }
}

impl RedbStore {
    fn load_all(&self) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let read = self.db()?.begin_read().map_err(corrupted)?;
        let table = match read.open_table(LEDGER) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(corrupted(e)),
        };
        let mut pairs = Vec::new();
        for entry in table.iter().map_err(corrupted)? {
            let (key, value) = entry.map_err(corrupted)?;
            pairs.push((key.value().to_vec(), value.value().to_vec()));
        }
        Ok(pairs)
    }

    fn contains_key(&self, key: &[u8]) -> StoreResult<bool> {
        let read = self.db()?.begin_read().map_err(write_error)?;
        match read.open_table(LEDGER) {
            Ok(table) => Ok(table.get(key).map_err(write_error)?.is_some()),
            Err(TableError::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(write_error(e)),
        }
    }

    fn write_batch(&mut self, puts: &[(Vec<u8>, Vec<u8>)], removes: &[Vec<u8>]) -> StoreResult<()> {
        // One write transaction: all of it commits (with an fsync) or none of it does.
        let write = self.db()?.begin_write().map_err(write_error)?;
        {
            let mut table = write.open_table(LEDGER).map_err(write_error)?;
            for (key, value) in puts {
                table
                    .insert(key.as_slice(), value.as_slice())
                    .map_err(write_error)?;
            }
            for key in removes {
                table.remove(key.as_slice()).map_err(write_error)?;
            }
        }
        write.commit().map_err(write_error)
    }
}
