//! `usagemeter.manifest`: a small text file beside the database that says which backend holds
//! the store and how far it got. It lets opening tell "new store" from "store whose data files
//! vanished", and catch a database that went back in time (lost snapshots).
//!
//! Replaced atomically (write a temporary file, fsync, rename, fsync the directory).

use std::fs;
use std::io::Write;
use std::path::Path;

use super::codec::FORMAT_VERSION;
use super::StoreError;

pub const FILE_NAME: &str = "usagemeter.manifest";
const HEADER: &str = "usagemeter-store";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub format: u16,
    pub backend: String,
    /// The generation of the last snapshot known to be durable in the database.
    pub generation: u64,
    pub records: u64,
}

impl Manifest {
    fn body(&self) -> String {
        format!(
            "{HEADER}\nformat={}\nbackend={}\ngeneration={}\nrecords={}\n",
            self.format, self.backend, self.generation, self.records
        )
    }

    /// Reads the manifest of `dir`, or `None` if there is none.
    pub fn read(dir: &Path) -> Result<Option<Manifest>, StoreError> {
        let path = dir.join(FILE_NAME);
        let text = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(StoreError::Other(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        let corrupted = |why: &str| StoreError::Corrupted(format!("{}: {why}", path.display()));
        let text = String::from_utf8(text).map_err(|_| corrupted("not text"))?;
        let (body, checksum) = text
            .rsplit_once("crc=")
            .ok_or_else(|| corrupted("no checksum line"))?;
        let checksum = u32::from_str_radix(checksum.trim_end(), 16)
            .map_err(|_| corrupted("bad checksum line"))?;
        if crc32fast::hash(body.as_bytes()) != checksum {
            return Err(corrupted("checksum mismatch"));
        }
        let mut lines = body.lines();
        if lines.next() != Some(HEADER) {
            return Err(corrupted("not a usagemeter manifest"));
        }
        let mut field = |name: &str| -> Result<String, StoreError> {
            let line = lines
                .next()
                .ok_or_else(|| corrupted(&format!("missing {name}")))?;
            let value = line
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='));
            value
                .map(str::to_string)
                .ok_or_else(|| corrupted(&format!("expected {name}=, found {line:?}")))
        };
        let format: u16 = field("format")?
            .parse()
            .map_err(|_| corrupted("bad format"))?;
        if format > FORMAT_VERSION {
            return Err(StoreError::NewerVersion(format!(
                "{} was written by a newer usagemeter (store format {format}; this version reads up to {FORMAT_VERSION})",
                path.display()
            )));
        }
        let backend = field("backend")?;
        let generation = field("generation")?
            .parse()
            .map_err(|_| corrupted("bad generation"))?;
        let records = field("records")?
            .parse()
            .map_err(|_| corrupted("bad records"))?;
        Ok(Some(Manifest {
            format,
            backend,
            generation,
            records,
        }))
    }

    /// Replaces the manifest of `dir` atomically and durably.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let body = self.body();
        let text = format!("{body}crc={:08x}\n", crc32fast::hash(body.as_bytes()));
        let temporary = dir.join(format!("{FILE_NAME}.tmp"));
        let mut file = fs::File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, dir.join(FILE_NAME))?;
        fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_edits() {
        let dir = std::env::temp_dir().join(format!("usagemeter-manifest-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let manifest = Manifest {
            format: 1,
            backend: "sled".into(),
            generation: 7,
            records: 42,
        };
        manifest.write(&dir).unwrap();
        assert_eq!(Manifest::read(&dir).unwrap(), Some(manifest));
        let path = dir.join(FILE_NAME);
        let edited = fs::read_to_string(&path)
            .unwrap()
            .replace("records=42", "records=43");
        fs::write(&path, edited).unwrap();
        assert!(matches!(
            Manifest::read(&dir),
            Err(StoreError::Corrupted(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
