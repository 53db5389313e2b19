//! The redb backend: copy-on-write B-trees with checksummed pages and an fsync per commit.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::{Store, StoreError, StoreResult};

const LEDGER: TableDefinition<&[u8], &[u8]> = TableDefinition::new("ledger");
pub const FILE_NAME: &str = "ledger.redb";

pub struct RedbStore {
    db: Database,
}

fn write_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Write(format!("redb: {e}"))
}

fn corrupted(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupted(format!("redb: {e}"))
}

/// redb reports some damage by panicking ("entered unreachable code" on a flipped page): a panic
/// while opening or reading is corruption, and must reach Python as `StoreCorruptedError`, not
/// as a `PanicException`.
fn guarded<T>(what: &str, f: impl FnOnce() -> StoreResult<T>) -> StoreResult<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(StoreError::Corrupted(format!(
            "redb panicked during {what}: the file is damaged"
        )))
    })
}

impl RedbStore {
    pub fn open(dir: &Path) -> StoreResult<RedbStore> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Other(format!("cannot create {}: {e}", dir.display())))?;
        let db = guarded("open", || {
            Database::create(dir.join(FILE_NAME)).map_err(corrupted)
        })?;
        Ok(RedbStore { db })
    }
}

impl Store for RedbStore {
    fn load(&self) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        guarded("read", || self.load_all())
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
        let read = self.db.begin_read().map_err(corrupted)?;
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
        let read = self.db.begin_read().map_err(write_error)?;
        match read.open_table(LEDGER) {
            Ok(table) => Ok(table.get(key).map_err(write_error)?.is_some()),
            Err(TableError::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(write_error(e)),
        }
    }

    fn write_batch(&mut self, puts: &[(Vec<u8>, Vec<u8>)], removes: &[Vec<u8>]) -> StoreResult<()> {
        // One write transaction: all of it commits (with an fsync) or none of it does.
        let write = self.db.begin_write().map_err(write_error)?;
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
