//! Durable snapshots of the ledger in an embedded store.
//!
//! A store is a directory: `LOCK` (held while open, so a second opener fails at once),
//! `usagemeter.manifest` (backend, generation and record count, replaced atomically) and the
//! backend's data (`sled/` or `redb/ledger.redb`). Every record is `[version][payload][CRC32]`
//! (see `codec.rs`); the store's own meta record (generation, record count) is written in the same
//! atomic batch as the records it counts. Opening verifies all of it and refuses, never empties:
//! a damaged record, a lost record, a database older than its manifest, data files that vanished.

pub mod codec;
pub(crate) mod guard;
pub mod manifest;
pub mod redb_store;
pub mod sled_store;
pub mod snapshot;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use crate::ledger::image::UserImage;
use codec::{DecodeError, Key, Meta, TypeTable};
use manifest::Manifest;

/// A key/value backend: what sled and redb (and a future third) must provide.
pub trait Store: Send {
    /// Every key/value pair in the store.
    fn load(&self) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Every key in the store.
    fn keys(&self) -> StoreResult<Vec<Vec<u8>>>;
    /// Whether `key` is stored.
    fn contains(&self, key: &[u8]) -> StoreResult<bool>;
    /// Writes `puts` and deletes `removes` as one atomic batch.
    fn write_changes(
        &mut self,
        puts: &[(Vec<u8>, Vec<u8>)],
        removes: &[Vec<u8>],
    ) -> StoreResult<()>;
    /// Returns once everything written is durable on disk.
    fn flush(&mut self) -> StoreResult<()>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// Another process or service holds the store.
    Locked(String),
    /// Damaged, truncated or missing data: opening refuses rather than start empty.
    Corrupted(String),
    /// Written by a newer version of the library.
    NewerVersion(String),
    /// A snapshot could not be written (disk full, read-only, I/O error).
    Write(String),
    /// The store was closed (or its snapshot thread has ended).
    Closed(String),
    /// A shared ledger (Redis) cannot be reached: nothing of the call was recorded.
    Unavailable(String),
    /// A call's write was sent to the shared ledger but no reply came (a timeout, a dropped
    /// connection): it may have been recorded or not.
    OutcomeUnknown(String),
    /// Anything else (wrong backend, bad path).
    Other(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Locked(m)
            | StoreError::Corrupted(m)
            | StoreError::NewerVersion(m)
            | StoreError::Write(m)
            | StoreError::Closed(m)
            | StoreError::Unavailable(m)
            | StoreError::OutcomeUnknown(m)
            | StoreError::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StoreError {}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sled,
    Redb,
}

impl Backend {
    pub fn parse(name: &str) -> Option<Backend> {
        match name {
            "sled" => Some(Backend::Sled),
            "redb" => Some(Backend::Redb),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Sled => "sled",
            Backend::Redb => "redb",
        }
    }

    fn data_path(self, dir: &Path) -> PathBuf {
        dir.join(self.name())
    }

    fn open(self, dir: &Path) -> StoreResult<Box<dyn Store>> {
        Ok(match self {
            Backend::Sled => Box::new(sled_store::SledStore::open(&self.data_path(dir))?),
            Backend::Redb => Box::new(redb_store::RedbStore::open(&self.data_path(dir))?),
        })
    }
}

/// What opening found: the users, and figures for `usagemeter store verify`.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub users: Vec<UserImage>,
    pub types: Vec<String>,
    pub generation: u64,
    pub records: u64,
    pub months: u64,
}

/// An open store: the lock, the backend and the meta record as last written.
pub struct LedgerStore {
    dir: PathBuf,
    backend: Backend,
    store: Box<dyn Store>,
    meta: Meta,
    types: TypeTable,
    /// How many names of `types` are durable (the table is rewritten when it grows).
    types_written: usize,
    /// A write failed: the backend is reopened before the next one. Both sled and redb refuse
    /// every later write on the handle that saw an I/O error (disk full), even once space is back.
    reopen: bool,
    _lock: File,
}

fn other_io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Other(format!("cannot {what} {}: {e}", path.display()))
}

/// What a locked store's error says to do (issue 18: a second worker process of a web server got
/// only "in use by another process").
pub const ONE_PROCESS: &str = "a directory store belongs to one process at a time; for several \
    worker processes, share a Redis store (store=\"redis://host:6379/0\")";

fn lock(dir: &Path) -> StoreResult<File> {
    let path = dir.join("LOCK");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| other_io("open", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked(format!(
            "the store at {} is in use by another process or service: {ONE_PROCESS}",
            dir.display()
        ))),
        Err(TryLockError::Error(e)) => Err(other_io("lock", &path, e)),
    }
}

/// The backend whose data is in `dir`, from its manifest or its files.
pub fn detect_backend(dir: &Path) -> StoreResult<Option<Backend>> {
    if let Some(manifest) = Manifest::read(dir)? {
        let backend = Backend::parse(&manifest.backend);
        return backend.map(Some).ok_or_else(|| {
            StoreError::Corrupted(format!(
                "{}: unknown backend {:?}",
                dir.display(),
                manifest.backend
            ))
        });
    }
    let found: Vec<_> = [Backend::Sled, Backend::Redb]
        .into_iter()
        .filter(|b| b.data_path(dir).exists())
        .collect();
    Ok(found.first().copied())
}

/// Decodes every pair into users, verifying each record and the meta record's count.
fn decode_all(dir: &Path, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> StoreResult<Loaded> {
    let corrupted = |key: &dyn fmt::Display, e: DecodeError| {
        match e {
        DecodeError::NewerVersion(version) => StoreError::NewerVersion(format!(
            "{}: {key} was written by a newer usagemeter (format {version}; this version reads up to {})",
            dir.display(),
            codec::FORMAT_VERSION
        )),
        DecodeError::Corrupted(why) => StoreError::Corrupted(format!("{}: {key}: {why}", dir.display())),
    }
    };
    let mut meta = None;
    let mut users: BTreeMap<String, UserImage> = BTreeMap::new();
    let mut records = 0u64;
    let mut months = 0u64;
    // The type table first: month records refer to it.
    let types = match pairs.iter().find(|(key, _)| key == codec::TYPES_KEY) {
        Some((_, value)) => codec::decode_types(value).map_err(|e| corrupted(&Key::Types, e))?,
        None => Vec::new(),
    };
    for (raw_key, value) in pairs {
        let key = Key::decode(&raw_key)
            .map_err(|e| corrupted(&format!("key {}", codec::describe_key(&raw_key)), e))?;
        match &key {
            Key::Types => {}
            Key::Meta => meta = Some(codec::decode_meta(&value).map_err(|e| corrupted(&key, e))?),
            Key::Credit { user_id } => {
                let (credit, plan, holds) =
                    codec::decode_credit(&raw_key, &value).map_err(|e| corrupted(&key, e))?;
                let user = users.entry(user_id.clone()).or_default();
                user.credit = credit;
                user.plan = plan;
                user.holds = holds;
                records += 1;
            }
            Key::Month { user_id, month } => {
                let image = codec::decode_month(&raw_key, &value, &types)
                    .map_err(|e| corrupted(&key, e))?;
                image
                    .check()
                    .map_err(|why| corrupted(&key, DecodeError::Corrupted(why)))?;
                users
                    .entry(user_id.clone())
                    .or_default()
                    .months
                    .push((*month, image));
                records += 1;
                months += 1;
            }
            Key::Keys { user_id } => {
                let keys = codec::decode_keys(&raw_key, &value).map_err(|e| corrupted(&key, e))?;
                users.entry(user_id.clone()).or_default().keys = Some(keys);
                records += 1;
            }
        }
    }
    let meta = meta.unwrap_or_default();
    if meta.records != records {
        return Err(StoreError::Corrupted(format!(
            "{}: the store should hold {} records but {records} were found",
            dir.display(),
            meta.records
        )));
    }
    let users = users
        .into_iter()
        .map(|(user_id, image)| UserImage { user_id, ..image })
        .collect();
    Ok(Loaded {
        users,
        types,
        generation: meta.generation,
        records,
        months,
    })
}

impl LedgerStore {
    /// Opens (or creates) the store in `dir` with `backend` and loads everything it holds,
    /// verified. An existing store of the other backend is refused.
    pub fn open(dir: &Path, backend: Backend) -> StoreResult<(LedgerStore, Loaded)> {
        LedgerStore::open_with(dir, Some(backend))
    }

    /// Opens (or creates) the store in `dir` and loads everything it holds, verified. `wanted`
    /// `None` takes the backend of the store already there (as `usagemeter store verify` does),
    /// or sled for a new store; an explicit backend that differs from the store's is refused.
    pub fn open_with(dir: &Path, wanted: Option<Backend>) -> StoreResult<(LedgerStore, Loaded)> {
        // An empty path would put LOCK, the manifest and the data in the working directory.
        if dir.as_os_str().is_empty() {
            return Err(StoreError::Other("the store path is empty".into()));
        }
        std::fs::create_dir_all(dir).map_err(|e| other_io("create", dir, e))?;
        let lock = lock(dir)?;
        let manifest = Manifest::read(dir)?;
        let found = detect_backend(dir)?;
        let backend = match (wanted, found) {
            (Some(wanted), Some(found)) if wanted != found => {
                return Err(StoreError::Other(format!(
                    "the store at {} uses the {} backend, but the {} backend was asked for \
                     (leave the backend unset to open a store with its own)",
                    dir.display(),
                    found.name(),
                    wanted.name()
                )))
            }
            (Some(wanted), _) => wanted,
            (None, Some(found)) => found,
            (None, None) => Backend::Sled,
        };
        match (&manifest, found) {
            (None, Some(_)) => {
                return Err(StoreError::Corrupted(format!(
                    "{}: data files without a manifest ({} is missing)",
                    dir.display(),
                    manifest::FILE_NAME
                )))
            }
            (Some(_), _) if !backend.data_path(dir).exists() => {
                return Err(StoreError::Corrupted(format!(
                    "{}: the manifest names {} data but {} is missing",
                    dir.display(),
                    backend.name(),
                    backend.data_path(dir).display()
                )))
            }
            _ => {}
        }
        let store = backend.open(dir)?;
        let pairs = store.load()?;
        // The decoders refuse what they cannot read; a panic in them (a bug, as the one
        // `make fuzz-codec` found) must still reach Python as StoreCorruptedError.
        let loaded = guard::quietly("usagemeter", "decoding", || decode_all(dir, pairs))?;
        let meta = Meta {
            generation: loaded.generation,
            records: loaded.records,
        };
        if let Some(manifest) = &manifest {
            // The manifest is written after the database is durable, so the database may be one
            // snapshot ahead of it, never behind.
            if meta.generation < manifest.generation {
                return Err(StoreError::Corrupted(format!(
                    "{}: the database holds snapshot {} but snapshot {} was written: data was lost",
                    dir.display(),
                    meta.generation,
                    manifest.generation
                )));
            }
        }
        let types = TypeTable::from_names(loaded.types.clone());
        let types_written = types.len();
        let opened = LedgerStore {
            dir: dir.to_path_buf(),
            backend,
            store,
            meta,
            types,
            types_written,
            reopen: false,
            _lock: lock,
        };
        if manifest.is_none() {
            opened
                .write_manifest()
                .map_err(|e| other_io("write the manifest of", dir, e))?;
        }
        Ok((opened, loaded))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn write_manifest(&self) -> std::io::Result<()> {
        let manifest = Manifest {
            format: codec::FORMAT_VERSION,
            backend: self.backend.name().into(),
            generation: self.meta.generation,
            records: self.meta.records,
        };
        manifest.write(&self.dir)
    }

    /// Writes the users' changed records as one atomic batch, makes it durable, then advances the
    /// manifest. On error nothing in memory advances: the caller retries the same changes.
    pub fn write_snapshot(&mut self, users: &[UserImage]) -> StoreResult<()> {
        if self.reopen {
            let failed = |e: StoreError| {
                StoreError::Write(format!(
                    "cannot reopen {} after a failed write: {e}",
                    self.dir.display()
                ))
            };
            // Drop the failed handle first: a backend may hold its files until then.
            self.store = Box::new(NoStore);
            self.store = self.backend.open(&self.dir).map_err(failed)?;
            // Any part of the failed batch may have landed (sled writes a batch's log entries as
            // they fill a segment; a full disk stops it midway), and so may a whole batch whose
            // manifest could not be written. Keys that landed are no longer new to `contains`,
            // so the count is taken from the store itself, once per failure (a key scan).
            self.meta.records = count_records(&*self.store).map_err(failed)?;
            self.reopen = false;
        }
        let result = self.write_batch(users);
        self.reopen = result.is_err();
        result
    }

    fn write_batch(&mut self, users: &[UserImage]) -> StoreResult<()> {
        let mut puts: Vec<(Vec<u8>, Vec<u8>)> = users
            .iter()
            .flat_map(|user| codec::encode_user(user, &mut self.types))
            .collect();
        let mut new_records = 0;
        for (key, _) in &puts {
            if !self.store.contains(key)? {
                new_records += 1;
            }
        }
        let meta = Meta {
            generation: self.meta.generation + 1,
            records: self.meta.records + new_records,
        };
        puts.push((codec::META_KEY.to_vec(), codec::encode_meta(&meta)));
        if self.types.len() > self.types_written {
            puts.push((codec::TYPES_KEY.to_vec(), codec::encode_types(&self.types)));
        }
        self.store.write_changes(&puts, &[])?;
        self.store.flush()?;
        self.types_written = self.types.len();
        let previous = std::mem::replace(&mut self.meta, meta);
        if let Err(e) = self.write_manifest() {
            self.meta = previous;
            return Err(StoreError::Write(format!(
                "cannot write the manifest of {}: {e}",
                self.dir.display()
            )));
        }
        Ok(())
    }
}

/// How many records (credit and month keys: not the meta record nor the type table) `store`
/// holds.
fn count_records(store: &dyn Store) -> StoreResult<u64> {
    let keys = store.keys()?;
    let records = keys
        .iter()
        .filter(|key| key.as_slice() != codec::META_KEY && key.as_slice() != codec::TYPES_KEY)
        .count();
    Ok(records as u64)
}

/// Stands in for a backend between dropping a failed handle and reopening it.
struct NoStore;

impl Store for NoStore {
    fn load(&self) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(Vec::new())
    }
    fn keys(&self) -> StoreResult<Vec<Vec<u8>>> {
        Ok(Vec::new())
    }
    fn contains(&self, _key: &[u8]) -> StoreResult<bool> {
        Err(StoreError::Write("the store is being reopened".into()))
    }
    fn write_changes(
        &mut self,
        _puts: &[(Vec<u8>, Vec<u8>)],
        _removes: &[Vec<u8>],
    ) -> StoreResult<()> {
        Err(StoreError::Write("the store is being reopened".into()))
    }
    fn flush(&mut self) -> StoreResult<()> {
        Err(StoreError::Write("the store is being reopened".into()))
    }
}

/// What `recover` kept and dropped.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    pub kept: u64,
    pub dropped: Vec<String>,
}

/// Keeps every record of the store in `dir` whose checksum and invariants hold, deletes the
/// others, and rewrites the meta record and the manifest to match.
pub fn recover(dir: &Path) -> StoreResult<Recovery> {
    let _lock = lock(dir)?;
    let backend = detect_backend(dir)?
        .ok_or_else(|| StoreError::Other(format!("no usagemeter store at {}", dir.display())))?;
    let mut store = backend.open(dir)?;
    let mut recovery = Recovery::default();
    let mut removes = Vec::new();
    let mut generation = 0;
    let pairs = store.load()?;
    // A damaged type table makes every month record unreadable: they are dropped with it.
    let types = match pairs.iter().find(|(key, _)| key == codec::TYPES_KEY) {
        Some((_, value)) => codec::decode_types(value),
        None => Ok(Vec::new()),
    };
    for (raw_key, value) in pairs {
        // A panic while decoding one record (a decoder bug) drops that record like damage.
        let checked = guard::quietly("usagemeter", "decoding", || {
            Ok(Key::decode(&raw_key).and_then(|key| {
                let result = match &key {
                    Key::Meta => {
                        codec::decode_meta(&value).map(|meta| generation = meta.generation)
                    }
                    Key::Types => types.as_ref().map(|_| ()).map_err(Clone::clone),
                    Key::Credit { .. } => codec::decode_credit(&raw_key, &value).map(|_| ()),
                    Key::Keys { .. } => codec::decode_keys(&raw_key, &value).map(|_| ()),
                    Key::Month { .. } => types
                        .as_ref()
                        .map_err(Clone::clone)
                        .and_then(|types| codec::decode_month(&raw_key, &value, types))
                        .and_then(|image| image.check().map_err(DecodeError::Corrupted)),
                };
                result.map(|()| key)
            }))
        })
        .unwrap_or_else(|panicked| Err(DecodeError::Corrupted(panicked.to_string())));
        match checked {
            Ok(Key::Meta | Key::Types) => {}
            Ok(_) => recovery.kept += 1,
            Err(e) => {
                let name = Key::decode(&raw_key).map_or_else(
                    |_| format!("key {}", codec::describe_key(&raw_key)),
                    |k| k.to_string(),
                );
                recovery.dropped.push(format!("{name}: {e}"));
                removes.push(raw_key);
            }
        }
    }
    let meta = Meta {
        generation: generation + 1,
        records: recovery.kept,
    };
    store.write_changes(
        &[(codec::META_KEY.to_vec(), codec::encode_meta(&meta))],
        &removes,
    )?;
    store.flush()?;
    let manifest = Manifest {
        format: codec::FORMAT_VERSION,
        backend: backend.name().into(),
        generation: meta.generation,
        records: meta.records,
    };
    manifest.write(dir).map_err(|e| {
        StoreError::Write(format!(
            "cannot write the manifest of {}: {e}",
            dir.display()
        ))
    })?;
    Ok(recovery)
}

#[cfg(test)]
mod tests;
