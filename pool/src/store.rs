//! The ledger on disk: `ledger.json` in the pool's state directory, rewritten whole (a new
//! file renamed over the old) after every change, so a pool that restarts finds what it had
//! promised.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::ledger::Ledger;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot read the pool's ledger {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the pool's ledger {path} is not one: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write the pool's ledger {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Store {
    path: PathBuf,
}

impl Store {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("ledger.json"),
        }
    }

    /// The ledger kept before, if there is one.
    pub fn load(&self) -> Result<Option<Ledger>, StoreError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| StoreError::Parse {
                path: self.path.clone(),
                source,
            })
    }

    pub fn save(&self, ledger: &Ledger) -> Result<(), StoreError> {
        let write_error = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let text = serde_json::to_vec_pretty(ledger).map_err(|e| write_error(e.into()))?;
        let fresh = self.path.with_extension("json.new");
        std::fs::write(&fresh, text).map_err(write_error)?;
        std::fs::rename(&fresh, &self.path).map_err(write_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Registration;

    #[test]
    fn a_saved_ledger_loads_as_it_was() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::new(dir.path());
        assert_eq!(store.load().expect("no ledger yet"), None);
        let mut ledger = Ledger::new(8 << 30);
        ledger
            .register(
                Registration {
                    name: "a".into(),
                    socket: "/run/a.sock".into(),
                    pid: 7,
                    min: 1 << 30,
                    max: 4 << 30,
                    priority: 2,
                    boot: 1 << 30,
                    plugged: 0,
                },
                5,
            )
            .expect("a fits");
        ledger.reserve("a", 1 << 30).expect("a reserves");
        store.save(&ledger).expect("saved");
        assert_eq!(store.load().expect("loads"), Some(ledger));
        std::fs::write(dir.path().join("ledger.json"), "{").expect("broken");
        let error = store.load().expect_err("not a ledger");
        assert!(error.to_string().contains("is not one"), "{error}");
    }
}
