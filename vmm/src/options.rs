//! The `key=value,key=value` option syntax shared by every structured flag (`--memory`,
//! `--numa`), with errors that name the flag and the key.

use std::collections::BTreeMap;

use thiserror::Error;

use tidal_api::size::{parse_size, SizeError};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("--{flag}: '{item}' is not key=value")]
    NotKeyValue { flag: &'static str, item: String },
    #[error("--{flag}: unknown key '{key}' (known: {known})")]
    UnknownKey {
        flag: &'static str,
        key: String,
        known: String,
    },
    #[error("--{flag}: key '{key}' given twice")]
    Duplicate { flag: &'static str, key: String },
    #[error("--{flag}: missing required key '{key}'")]
    Missing {
        flag: &'static str,
        key: &'static str,
    },
    #[error("--{flag}: {key}: {source}")]
    BadSize {
        flag: &'static str,
        key: &'static str,
        source: SizeError,
    },
    #[error("--{flag}: {key}: '{value}' is not on or off")]
    NotSwitch {
        flag: &'static str,
        key: &'static str,
        value: String,
    },
    #[error("--{flag}: {key}: '{value}' is not a whole number")]
    BadNumber {
        flag: &'static str,
        key: &'static str,
        value: String,
    },
}

/// A parsed option string: the keys it may hold are fixed by the flag.
#[derive(Debug)]
pub struct KeyValues {
    flag: &'static str,
    values: BTreeMap<String, String>,
}

impl KeyValues {
    /// Splits `text` on commas into `key=value` pairs, refusing keys not in `known`. A value
    /// in square brackets is a list and may hold commas: `cpus=[0-1,4]`.
    pub fn parse(flag: &'static str, text: &str, known: &[&str]) -> Result<Self, OptionError> {
        let mut values = BTreeMap::new();
        for item in split_outside_brackets(text).filter(|item| !item.is_empty()) {
            let Some((key, value)) = item.split_once('=') else {
                return Err(OptionError::NotKeyValue {
                    flag,
                    item: item.to_string(),
                });
            };
            if !known.contains(&key) {
                return Err(OptionError::UnknownKey {
                    flag,
                    key: key.to_string(),
                    known: known.join(", "),
                });
            }
            if values.insert(key.to_string(), value.to_string()).is_some() {
                return Err(OptionError::Duplicate {
                    flag,
                    key: key.to_string(),
                });
            }
        }
        Ok(Self { flag, values })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    pub fn size(&self, key: &'static str) -> Result<Option<u64>, OptionError> {
        self.get(key)
            .map(|value| {
                parse_size(value).map_err(|source| OptionError::BadSize {
                    flag: self.flag,
                    key,
                    source,
                })
            })
            .transpose()
    }

    /// The items of a list value: `[a,b]` or a single `a`.
    pub fn list(&self, key: &str) -> Option<Vec<&str>> {
        let value = self.get(key)?;
        let inner = value
            .strip_prefix('[')
            .and_then(|v| v.strip_suffix(']'))
            .unwrap_or(value);
        Some(inner.split(',').map(str::trim).collect())
    }

    pub fn required_size(&self, key: &'static str) -> Result<u64, OptionError> {
        self.size(key)?.ok_or(OptionError::Missing {
            flag: self.flag,
            key,
        })
    }

    /// An `on`/`off` key; off when it is not given.
    pub fn switch(&self, key: &'static str) -> Result<bool, OptionError> {
        match self.get(key) {
            None | Some("off") => Ok(false),
            Some("on") => Ok(true),
            Some(value) => Err(OptionError::NotSwitch {
                flag: self.flag,
                key,
                value: value.to_string(),
            }),
        }
    }

    pub fn number<T: std::str::FromStr>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>, OptionError> {
        self.get(key)
            .map(|value| {
                value.parse().map_err(|_| OptionError::BadNumber {
                    flag: self.flag,
                    key,
                    value: value.to_string(),
                })
            })
            .transpose()
    }
}

/// Commas that are not inside `[...]`.
fn split_outside_brackets(text: &str) -> impl Iterator<Item = &str> {
    let mut depth = 0usize;
    text.split(move |c| {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        c == ',' && depth == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_keys() {
        let kv = KeyValues::parse("memory", "size=1G,slots=4", &["size", "slots"]).unwrap();
        assert_eq!(kv.required_size("size"), Ok(1 << 30));
        assert_eq!(kv.number::<u32>("slots"), Ok(Some(4)));
        assert_eq!(kv.size("hotplug_size"), Ok(None));
    }

    #[test]
    fn lists_in_brackets_keep_their_commas() {
        let kv = KeyValues::parse(
            "numa",
            "id=0,cpus=[0-1,4],memory=1G",
            &["id", "cpus", "memory"],
        )
        .unwrap();
        assert_eq!(kv.list("cpus"), Some(vec!["0-1", "4"]));
        assert_eq!(kv.list("id"), Some(vec!["0"]));
        assert_eq!(kv.list("memory"), Some(vec!["1G"]));
        assert_eq!(kv.list("nothing"), None);
    }

    #[test]
    fn errors_name_the_key() {
        let err = KeyValues::parse("memory", "size=1G,colour=red", &["size"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--memory: unknown key 'colour' (known: size)"
        );
        let err = KeyValues::parse("memory", "size", &["size"]).unwrap_err();
        assert!(matches!(err, OptionError::NotKeyValue { .. }));
        let err = KeyValues::parse("memory", "size=1G,size=2G", &["size"]).unwrap_err();
        assert!(matches!(err, OptionError::Duplicate { .. }));
        let kv = KeyValues::parse("memory", "size=12Q", &["size"]).unwrap();
        assert!(kv
            .required_size("size")
            .unwrap_err()
            .to_string()
            .starts_with("--memory: size: invalid size '12Q'"));
        let kv = KeyValues::parse("memory", "", &["size"]).unwrap();
        assert!(matches!(
            kv.required_size("size"),
            Err(OptionError::Missing { .. })
        ));
        let kv = KeyValues::parse("memory", "shared=yes", &["shared", "prefault"]).unwrap();
        assert_eq!(
            kv.switch("shared").unwrap_err().to_string(),
            "--memory: shared: 'yes' is not on or off"
        );
        assert_eq!(kv.switch("prefault"), Ok(false));
        let kv = KeyValues::parse("memory", "slots=x", &["slots"]).unwrap();
        assert!(matches!(
            kv.number::<u32>("slots"),
            Err(OptionError::BadNumber { .. })
        ));
    }
}
