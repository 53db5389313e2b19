//! A fleet of workers (processes, machines) sharing one ledger through Redis.
//!
//! Each worker's in-process ledger is a replica: every call is answered from it, as with one
//! process, and a native thread syncs it with the shared ledger every `snapshot_interval`
//! (`sync.rs`). Strict spending across the fleet goes through budget leases
//! (`crate::ledger::replica`). The Redis layout is in `record.rs`; the arithmetic of
//! differences and merges in `figures.rs`.

pub mod bulk;
pub mod figures;
pub mod identity;
pub mod link;
pub mod record;
pub mod sync;
