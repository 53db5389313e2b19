//! The shared ledger's identity: which ledger a worker opened, and whether it is being restored.
//!
//! `usagemeter:ledger` holds one string, `usagemeter-ledger:LAYOUT:ID:CREATED_MS:GENERATION:PHASE`
//! (`PHASE` is `ready`, or `restoring:DEADLINE_MS` on the server's clock). The first worker to
//! open an empty Redis (or a ledger from before the identity, which keeps its figures) creates it
//! with `SET NX`, so that racing first workers agree on one; `usagemeter store copy` into Redis
//! creates it too. Every worker remembers the id it opened and checks the key every round, and
//! before every keyed write and lease request (in the pipeline that reads the server's clock: no
//! extra round trip).
//!
//! The key gone (a `FLUSHALL`, a restart without persistence, a failover to an empty replica) or
//! figures older than a worker has read (a restart from an old snapshot): the ledger lost data.
//! The worker that sees it first marks the ledger `restoring` (the same id, the next generation,
//! a deadline), every live worker writes back its copy of every user it knows, newest version
//! wins (`RESTORE_SCRIPT`), and once the server's clock passes the deadline a worker marks it
//! `ready` again (`SET_IF_SCRIPT`); every worker then reads every user again and goes on. An id
//! that is not the one opened is another ledger: never written, never adopted (`Seen::Foreign`);
//! this id with an older generation is this ledger rolled back to a backup: restored (`Seen::Lost`).

use crate::store::{StoreError, StoreResult};

pub const LEDGER_KEY: &str = "usagemeter:ledger";

/// The layout of the shared ledger's keys this version writes.
pub const LAYOUT: u32 = 1;

const PREFIX: &str = "usagemeter-ledger";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Ready,
    /// Workers write back their copies until the server's clock passes `deadline_ms`.
    Restoring {
        deadline_ms: i64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// 128 random bits, hex.
    pub id: String,
    pub layout: u32,
    pub created_ms: i64,
    /// Bumped by each restore: a worker that sees a newer one missed a restore.
    pub generation: u64,
    pub phase: Phase,
}

/// 128 random bits as hex (`ring`'s system random, already built for rustls).
fn random_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // No system randomness (never seen): the clock and the process, hashed twice.
        use std::hash::{BuildHasher, Hasher};
        for half in bytes.chunks_mut(8) {
            let mut hasher = foldhash::fast::RandomState::default().build_hasher();
            hasher.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            );
            hasher.write_u32(std::process::id());
            half.copy_from_slice(&hasher.finish().to_le_bytes());
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Identity {
    /// A new ledger's identity, ready.
    pub fn new(now_ms: i64) -> Identity {
        Identity {
            id: random_id(),
            layout: LAYOUT,
            created_ms: now_ms,
            generation: 0,
            phase: Phase::Ready,
        }
    }

    pub fn encode(&self) -> String {
        let phase = match self.phase {
            Phase::Ready => "ready".to_string(),
            Phase::Restoring { deadline_ms } => format!("restoring:{deadline_ms}"),
        };
        format!(
            "{PREFIX}:{}:{}:{}:{}:{phase}",
            self.layout, self.id, self.created_ms, self.generation
        )
    }

    pub fn parse(text: &str) -> StoreResult<Identity> {
        let bad = || {
            StoreError::Corrupted(format!(
                "the shared ledger's identity ({LEDGER_KEY}) cannot be read: {text:?}"
            ))
        };
        let parts: Vec<&str> = text.split(':').collect();
        if parts.len() < 6 || parts[0] != PREFIX {
            return Err(bad());
        }
        let layout: u32 = parts[1].parse().map_err(|_| bad())?;
        if layout > LAYOUT {
            return Err(StoreError::NewerVersion(format!(
                "the shared ledger was laid out by a newer usagemeter (layout {layout}; this \
                 version knows up to {LAYOUT})"
            )));
        }
        let phase = match (parts[5], parts.get(6)) {
            ("ready", None) => Phase::Ready,
            ("restoring", Some(deadline)) => Phase::Restoring {
                deadline_ms: deadline.parse().map_err(|_| bad())?,
            },
            _ => return Err(bad()),
        };
        Ok(Identity {
            id: parts[2].to_string(),
            layout,
            created_ms: parts[3].parse().map_err(|_| bad())?,
            generation: parts[4].parse().map_err(|_| bad())?,
            phase,
        })
    }

    /// This ledger marked as being restored (the next generation) until `deadline_ms`.
    pub fn restoring(&self, deadline_ms: i64) -> Identity {
        Identity {
            generation: self.generation + 1,
            phase: Phase::Restoring { deadline_ms },
            ..self.clone()
        }
    }

    pub fn ready(&self) -> Identity {
        Identity {
            phase: Phase::Ready,
            ..self.clone()
        }
    }
}

/// What a worker makes of the identity it read, against the one it opened (`id`, and the
/// generation it last took part in).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Ready, the ledger this worker is writing.
    Mine,
    /// Being restored (a generation this worker has not written its copies for yet: `upload`).
    Restoring {
        deadline_ms: i64,
        generation: u64,
        upload: bool,
    },
    /// Ready again after a restore (this worker's or one it missed: `missed`): read everything.
    Restored { generation: u64, missed: bool },
    /// The key is gone (the ledger lost its data), or holds an older generation of this ledger
    /// (a backup from before a restore): restore it.
    Lost,
    /// Another ledger (another id): never written, never adopted.
    Foreign(String),
}

/// The decision (pure, for the unit tests): `seen` read now, `id` opened, `generation` the last
/// this worker took part in, `uploaded` whether it wrote its copies for `generation`'s restore,
/// `restoring` whether it is waiting for that restore to end.
pub fn judge(
    id: &str,
    generation: u64,
    restoring: bool,
    uploaded: bool,
    seen: Option<&Identity>,
) -> Seen {
    let Some(seen) = seen else {
        return Seen::Lost;
    };
    if seen.id != id {
        return Seen::Foreign(seen.id.clone());
    }
    if seen.generation < generation {
        return Seen::Lost;
    }
    match seen.phase {
        Phase::Restoring { deadline_ms } => Seen::Restoring {
            deadline_ms,
            generation: seen.generation,
            upload: seen.generation > generation || !uploaded,
        },
        Phase::Ready if seen.generation > generation => Seen::Restored {
            generation: seen.generation,
            missed: true,
        },
        Phase::Ready if restoring => Seen::Restored {
            generation: seen.generation,
            missed: false,
        },
        Phase::Ready => Seen::Mine,
    }
}

/// Sets KEYS[1] to ARGV[2] if it holds ARGV[1] (or does not exist, with ARGV[1] empty); replies
/// 1 when set. A restore starts, and ends, once, whichever workers try at the same time.
pub const SET_IF_SCRIPT: &str = r#"
local current = redis.call('GET', KEYS[1])
if (current == false and ARGV[1] == '') or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// A worker's copy of one user, written back during a restore: replaces the user's hash only if
/// it has none or an older version (every write bumps the version, and during a restore no
/// other write is made, so a higher version is a newer copy of the same history). KEYS[1]: the
/// user's hash; ARGV[1]: the copy's version; then its fields and values (`v` among them).
/// Replies 1 when written.
pub const RESTORE_SCRIPT: &str = r#"
local version = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if not copy_wins(version, tonumber(ARGV[1])) then
  return 0
end
redis.call('DEL', KEYS[1])
for i = 2, #ARGV - 1, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
"#;

/// `RESTORE_SCRIPT`'s decision, in Lua and here (for its unit test): a copy replaces what the
/// ledger holds when that is absent (version 0) or older.
pub const COPY_WINS_LUA: &str = "local function copy_wins(stored, copy) return copy > stored end";

pub fn copy_wins(stored_version: u64, copy_version: u64) -> bool {
    copy_version > stored_version
}

/// The restore script with its decision.
pub fn restore_script() -> String {
    format!("{COPY_WINS_LUA}\n{RESTORE_SCRIPT}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(generation: u64, phase: Phase) -> Identity {
        Identity {
            id: "abc".into(),
            layout: LAYOUT,
            created_ms: 5,
            generation,
            phase,
        }
    }

    #[test]
    fn an_identity_reads_back_as_written() {
        let ready = Identity::new(1_700_000_000_000);
        assert_eq!(ready.id.len(), 32);
        assert_ne!(ready.id, Identity::new(1).id);
        let restoring = ready.restoring(42);
        for one in [ready, restoring] {
            assert_eq!(Identity::parse(&one.encode()).unwrap(), one);
        }
        assert!(Identity::parse("junk").is_err());
        assert!(matches!(
            Identity::parse("usagemeter-ledger:9:abc:1:0:ready"),
            Err(StoreError::NewerVersion(_))
        ));
    }

    #[test]
    fn a_worker_judges_the_identity_it_reads() {
        let ready = identity(1, Phase::Ready);
        let restoring = identity(2, Phase::Restoring { deadline_ms: 9 });
        assert_eq!(judge("abc", 1, false, false, Some(&ready)), Seen::Mine);
        assert_eq!(judge("abc", 1, false, false, None), Seen::Lost);
        let other = Identity {
            id: "xyz".into(),
            ..ready.clone()
        };
        assert_eq!(
            judge("abc", 1, false, false, Some(&other)),
            Seen::Foreign("xyz".into())
        );
        // A backup from before the last restore: this ledger, older than the workers' copies.
        assert_eq!(judge("abc", 2, false, false, Some(&ready)), Seen::Lost);
        // A restore starts: upload once.
        let upload = |upload| Seen::Restoring {
            deadline_ms: 9,
            generation: 2,
            upload,
        };
        assert_eq!(
            judge("abc", 1, false, false, Some(&restoring)),
            upload(true)
        );
        assert_eq!(judge("abc", 2, true, false, Some(&restoring)), upload(true));
        assert_eq!(judge("abc", 2, true, true, Some(&restoring)), upload(false));
        // It ends: read everything again, once.
        let done = identity(2, Phase::Ready);
        assert_eq!(
            judge("abc", 2, true, true, Some(&done)),
            Seen::Restored {
                generation: 2,
                missed: false
            }
        );
        assert_eq!(judge("abc", 2, false, true, Some(&done)), Seen::Mine);
        // A worker that was away for the whole restore.
        assert_eq!(
            judge("abc", 1, false, false, Some(&done)),
            Seen::Restored {
                generation: 2,
                missed: true
            }
        );
    }

    #[test]
    fn the_newest_copy_wins_a_restore() {
        assert!(copy_wins(0, 1), "absent: any copy");
        assert!(copy_wins(4, 7));
        assert!(!copy_wins(7, 7), "the same version is the same figures");
        assert!(!copy_wins(8, 7));
    }
}
