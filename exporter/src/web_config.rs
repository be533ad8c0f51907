//! `--web.config.file`: TLS and basic auth in the exporter-toolkit format
//! that Prometheus' own exporters read, so one file serves them all.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt     # relative paths are relative to this file
//!   key_file: server.key
//! basic_auth_users:
//!   prometheus: $2y$10$...    # bcrypt hash, e.g. from `htpasswd -nBC 10 ""`
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum WebConfigError {
    #[error("cannot read web config file {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("web config file {file}: {message}")]
    Invalid { file: String, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Default)]
pub struct WebConfig {
    pub tls: Option<TlsFiles>,
    pub basic_auth: BasicAuth,
}

impl WebConfig {
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &file, base)
    }

    pub fn parse(text: &str, file: &str, base: &Path) -> Result<Self, WebConfigError> {
        let invalid = |message: String| WebConfigError::Invalid {
            file: file.to_owned(),
            message,
        };
        let raw: RawWebConfig = if text.trim().is_empty() {
            RawWebConfig {
                tls_server_config: None,
                basic_auth_users: BTreeMap::new(),
            }
        } else {
            serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?
        };
        for (user, hash) in &raw.basic_auth_users {
            hash.parse::<bcrypt::HashParts>().map_err(|_| {
                invalid(format!("basic_auth_users.{user}: the password must be a bcrypt hash ($2a$, $2b$ or $2y$)"))
            })?;
        }
        let tls = raw.tls_server_config.map(|t| TlsFiles {
            cert_file: base.join(t.cert_file),
            key_file: base.join(t.key_file),
        });
        Ok(WebConfig {
            tls,
            basic_auth: BasicAuth::new(raw.basic_auth_users),
        })
    }
}

/// Basic-auth users with bcrypt hashes. Checked passwords are cached by
/// digest so that a scrape every few seconds does not pay bcrypt each time.
#[derive(Debug, Default)]
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    verified: Mutex<HashMap<[u8; 32], bool>>,
}

/// Bounds the cache; a scraper sends one pair, attackers many.
const CACHE_LIMIT: usize = 1024;

/// Compared against when the user is unknown, so that unknown users take as
/// long to refuse as wrong passwords.
const DUMMY_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

impl BasicAuth {
    pub fn new(users: BTreeMap<String, String>) -> Self {
        BasicAuth {
            users,
            verified: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    pub fn check(&self, user: &str, password: &str) -> bool {
        let key: [u8; 32] = {
            let mut h = Sha256::new();
            h.update(user.as_bytes());
            h.update([0u8]);
            h.update(password.as_bytes());
            h.finalize().into()
        };
        if let Some(ok) = self.verified.lock().ok().and_then(|c| c.get(&key).copied()) {
            return ok;
        }
        let ok = match self.users.get(user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, DUMMY_HASH);
                false
            }
        };
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(key, ok);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tls_and_users_relative_to_the_file() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let text = format!("tls_server_config:\n  cert_file: a.crt\n  key_file: /abs/a.key\nbasic_auth_users:\n  prom: {hash}\n");
        let c = WebConfig::parse(&text, "w.yml", Path::new("/etc/x")).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert_file, PathBuf::from("/etc/x/a.crt"));
        assert_eq!(tls.key_file, PathBuf::from("/abs/a.key"));
        assert!(c.basic_auth.enabled());
        assert!(c.basic_auth.check("prom", "pw"));
        assert!(c.basic_auth.check("prom", "pw"), "cached answer");
        assert!(!c.basic_auth.check("prom", "wrong"));
        assert!(!c.basic_auth.check("nobody", "pw"));
    }

    #[test]
    fn errors_name_the_file_and_problem() {
        let e = WebConfig::parse(
            "tls_server_config:\n  cert_file: a\n  key_fil: b\n",
            "w.yml",
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("w.yml") && e.contains("key_fil") && e.contains("line 3"),
            "{e}"
        );
        let e = WebConfig::parse(
            "basic_auth_users:\n  prom: plaintext\n",
            "w.yml",
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("basic_auth_users.prom") && e.contains("bcrypt"),
            "{e}"
        );
        let empty = WebConfig::parse("", "w.yml", Path::new(".")).unwrap();
        assert!(empty.tls.is_none() && !empty.basic_auth.enabled());
    }
}
