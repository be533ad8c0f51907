//! `--web.config.file`: TLS, client certificates, response headers and basic
//! auth in the exporter-toolkit format that Prometheus' own exporters read,
//! so one file serves them all.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt     # relative paths are relative to this file
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert
//!   client_ca_file: clients-ca.crt
//!   min_version: TLS12
//!   cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
//! http_server_config:
//!   headers:
//!     X-Frame-Options: deny
//! basic_auth_users:
//!   prometheus: $2y$10$...    # bcrypt hash, e.g. from `htpasswd -nBC 10 ""`
//! ```
//!
//! Everything the toolkit accepts is either applied the same way or refused
//! with the reason: a setting silently ignored would be a security setting
//! the operator believes in and does not have.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use axum::http::{HeaderName, HeaderValue};
use serde::Deserialize;
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
    http_server_config: RawHttp,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
    /// Known to the toolkit, not implemented here: refused by name below.
    rate_limit: Option<yaml_serde::Value>,
}

/// Values are read as text and checked afterwards, so that an error can name
/// its key and line (serde only knows the line of the enclosing mapping).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    #[serde(default)]
    cipher_suites: Vec<String>,
    #[serde(default = "yes")]
    prefer_server_cipher_suites: bool,
    #[serde(default)]
    curve_preferences: Vec<String>,
    // Known to the toolkit, not implemented here: refused by name below.
    cert: Option<yaml_serde::Value>,
    key: Option<yaml_serde::Value>,
    client_ca: Option<yaml_serde::Value>,
    client_allowed_sans: Option<yaml_serde::Value>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default = "yes")]
    http2: bool,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            http2: true,
            headers: BTreeMap::new(),
        }
    }
}

/// The parsed file. TLS material is only named here; `web::tls` reads it.
#[derive(Debug, Clone, Default)]
pub struct WebConfig {
    pub tls: Option<TlsSettings>,
    pub headers: Headers,
    /// Offer HTTP/2 by ALPN on TLS connections (the toolkit's `http2`).
    pub http2: bool,
    /// User name to bcrypt hash.
    pub basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_auth: ClientAuth,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// TLS 1.2 suites in preference order; empty for rustls' defaults.
    pub cipher_suites: Vec<CipherSuite>,
    pub prefer_server_cipher_suites: bool,
    /// Key exchange groups in preference order; empty for rustls' defaults.
    pub curve_preferences: Vec<Curve>,
}

impl TlsSettings {
    /// The files whose contents make up the TLS configuration, for reloads.
    pub fn files(&self) -> Vec<&Path> {
        let mut files = vec![self.cert_file.as_path(), self.key_file.as_path()];
        if let Some(ca) = self.client_auth.ca_file() {
            files.push(ca);
        }
        files
    }
}

/// What is asked of clients' certificates.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientAuth {
    None,
    /// VerifyClientCertIfGiven: a certificate is optional, but one that is
    /// sent must chain to the CA.
    VerifyIfGiven {
        ca_file: PathBuf,
    },
    /// RequireAndVerifyClientCert: mutual TLS.
    RequireAndVerify {
        ca_file: PathBuf,
    },
}

impl ClientAuth {
    pub fn ca_file(&self) -> Option<&Path> {
        match self {
            ClientAuth::None => None,
            ClientAuth::VerifyIfGiven { ca_file } | ClientAuth::RequireAndVerify { ca_file } => {
                Some(ca_file)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ClientAuthType {
    #[default]
    NoClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

impl TryFrom<String> for ClientAuthType {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        match name.as_str() {
            "" | "NoClientCert" => Ok(ClientAuthType::NoClientCert),
            "VerifyClientCertIfGiven" => Ok(ClientAuthType::VerifyClientCertIfGiven),
            "RequireAndVerifyClientCert" => Ok(ClientAuthType::RequireAndVerifyClientCert),
            // Go asks for a certificate and then accepts any; rustls has no
            // such mode, and a certificate nobody checks authenticates no one.
            "RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert" => Err(format!(
                "{name} accepts client certificates without verifying them, which rustls does not \
                 offer; use RequireAndVerifyClientCert (or VerifyClientCertIfGiven) with client_ca_file"
            )),
            _ => Err(format!(
                "unknown client_auth_type {name:?}; use NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TryFrom<String> for TlsVersion {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        match name.as_str() {
            "TLS12" => Ok(TlsVersion::Tls12),
            "TLS13" => Ok(TlsVersion::Tls13),
            "TLS10" | "TLS11" => Err(format!(
                "{name} is not supported: rustls speaks TLS12 and TLS13 only (TLS 1.0 and 1.1 are deprecated by RFC 8996)"
            )),
            _ => Err(format!("unknown TLS version {name:?}; use TLS12 or TLS13")),
        }
    }
}

/// A cipher suite named as Go's `crypto/tls` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherSuite {
    /// A TLS 1.2 suite rustls implements.
    Tls12(Tls12Suite),
    /// A TLS 1.3 suite: accepted, as Go does, but TLS 1.3 suites are not
    /// configurable there and stay all enabled here too.
    Tls13,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls12Suite {
    EcdheEcdsaAes128GcmSha256,
    EcdheEcdsaAes256GcmSha384,
    EcdheEcdsaChacha20Poly1305Sha256,
    EcdheRsaAes128GcmSha256,
    EcdheRsaAes256GcmSha384,
    EcdheRsaChacha20Poly1305Sha256,
}

/// Go's names of the TLS 1.2 suites that rustls implements.
const TLS12_SUITES: [(&str, Tls12Suite); 6] = [
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        Tls12Suite::EcdheEcdsaAes128GcmSha256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        Tls12Suite::EcdheEcdsaAes256GcmSha384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        Tls12Suite::EcdheEcdsaChacha20Poly1305Sha256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        Tls12Suite::EcdheRsaAes128GcmSha256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        Tls12Suite::EcdheRsaAes256GcmSha384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        Tls12Suite::EcdheRsaChacha20Poly1305Sha256,
    ),
];

const TLS13_SUITES: [&str; 3] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Suites Go knows (some only as insecure) that rustls does not implement:
/// CBC modes, RSA key exchange, RC4 and 3DES.
const GO_ONLY_SUITES: [&str; 16] = [
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
];

impl TryFrom<String> for CipherSuite {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        // Go's old names without the hash, still accepted by crypto/tls.
        let canonical = match name.as_str() {
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => {
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            }
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            other => other,
        };
        if let Some((_, suite)) = TLS12_SUITES.iter().find(|(n, _)| *n == canonical) {
            return Ok(CipherSuite::Tls12(*suite));
        }
        if TLS13_SUITES.contains(&canonical) {
            return Ok(CipherSuite::Tls13);
        }
        let supported: Vec<&str> = TLS12_SUITES.iter().map(|(n, _)| *n).collect();
        if GO_ONLY_SUITES.contains(&canonical) {
            Err(format!(
                "cipher suite {name} is not implemented by rustls (no CBC, RSA key exchange, RC4 or 3DES); use {}",
                supported.join(", ")
            ))
        } else {
            Err(format!(
                "unknown cipher suite {name:?}; use {}",
                supported.join(", ")
            ))
        }
    }
}

/// An elliptic curve named as Go's `crypto/tls` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    X25519,
    P256,
    P384,
}

impl TryFrom<String> for Curve {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        match name.as_str() {
            "X25519" => Ok(Curve::X25519),
            "CurveP256" => Ok(Curve::P256),
            "CurveP384" => Ok(Curve::P384),
            "CurveP521" => Err(
                "CurveP521 is not implemented by rustls' ring provider; use X25519, CurveP256 or CurveP384".to_owned(),
            ),
            _ => Err(format!(
                "unknown curve {name:?}; use X25519, CurveP256 or CurveP384"
            )),
        }
    }
}

/// Response headers, limited to the ones the toolkit lets operators set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Headers(pub Vec<(HeaderName, HeaderValue)>);

/// The toolkit's list (web/handler.go): names match exactly, and two of them
/// take only the listed values. Kept identical so that a file accepted by
/// one Prometheus exporter is accepted by all.
const ALLOWED_HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// Checks one header against the toolkit's rules.
fn header(name: &str, value: &str) -> Result<Option<(HeaderName, HeaderValue)>, String> {
    let Some((_, allowed)) = ALLOWED_HEADERS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = ALLOWED_HEADERS.iter().map(|(n, _)| *n).collect();
        return Err(format!(
            "HTTP header {name:?} can not be configured; allowed: {}",
            names.join(", ")
        ));
    };
    if !allowed.is_empty() && !allowed.contains(&value) {
        return Err(format!(
            "invalid value for {name}: expected one of {allowed:?}, got {value:?}"
        ));
    }
    // "Unset if blank", as the toolkit documents.
    if value.is_empty() {
        return Ok(None);
    }
    let value = HeaderValue::from_str(value)
        .map_err(|_| format!("{name}: the value is not a valid HTTP header value"))?;
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name}: not a valid HTTP header name"))?;
    Ok(Some((name, value)))
}

/// Checks that a password is a bcrypt hash, so that a plaintext password is
/// refused at start-up rather than locking everyone out. The message must
/// not echo the value: it may be a plaintext password.
fn bcrypt_hash(hash: &str) -> Result<(), String> {
    hash.parse::<bcrypt::HashParts>()
        .map(|_| ())
        .map_err(|_| "the password must be a bcrypt hash ($2a$, $2b$ or $2y$)".to_owned())
}

/// Finds where a key (and a value under it) is in the file, for messages.
/// Block and flow style as people write web configs; `None` if not found.
fn locate(text: &str, path: &[&str], value: Option<&str>) -> Option<usize> {
    let mut indents: Vec<usize> = Vec::new();
    let mut found = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        // Leaving the block of the deepest key matched so far (a list may
        // sit at its key's own indentation).
        if let Some(&last) = indents.last() {
            let list_item = trimmed.starts_with("- ") && indent == last;
            if indent <= last && !list_item {
                return found;
            }
        }
        if indents.len() < path.len() {
            let key = path[indents.len()];
            let is_key = [
                format!("{key}:"),
                format!("\"{key}\":"),
                format!("'{key}':"),
            ]
            .iter()
            .any(|k| trimmed.starts_with(k.as_str()));
            if is_key {
                indents.push(indent);
                found = Some(n + 1);
                if indents.len() < path.len() {
                    continue;
                }
            }
        }
        if indents.len() == path.len() {
            match value {
                None => return found,
                Some(v) if trimmed.contains(v) => return Some(n + 1),
                Some(_) => {}
            }
        }
    }
    found
}

/// Formats an error about a key the way the query file's errors read:
/// "line 4, key `tls_server_config.min_version`: …".
struct Context<'a> {
    text: &'a str,
}

impl Context<'_> {
    fn error(&self, path: &[&str], value: Option<&str>, message: impl std::fmt::Display) -> String {
        let key = path.join(".");
        match locate(self.text, path, value) {
            Some(line) => format!("line {line}, key `{key}`: {message}"),
            None => format!("key `{key}`: {message}"),
        }
    }
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
        if text.trim().is_empty() {
            return Ok(WebConfig {
                http2: true,
                ..WebConfig::default()
            });
        }
        // Syntax errors and unknown keys: serde names the key and the line.
        let raw: RawWebConfig = yaml_serde::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let cx = Context { text };
        if raw.rate_limit.is_some() {
            return Err(invalid(cx.error(
                &["rate_limit"],
                None,
                "not supported by this exporter; remove it (new passwords are already checked one at a time, and a flood of them is turned away)",
            )));
        }
        for (user, hash) in &raw.basic_auth_users {
            bcrypt_hash(hash)
                .map_err(|e| invalid(cx.error(&["basic_auth_users", user], None, e)))?;
        }
        let mut headers = Vec::new();
        for (name, value) in &raw.http_server_config.headers {
            let checked = header(name, value).map_err(|e| {
                invalid(cx.error(&["http_server_config", "headers", name], None, e))
            })?;
            headers.extend(checked);
        }
        let tls = match raw.tls_server_config {
            None => None,
            Some(t) => Some(tls_settings(t, base, &cx).map_err(invalid)?),
        };
        Ok(WebConfig {
            tls,
            headers: Headers(headers),
            http2: raw.http_server_config.http2,
            basic_auth_users: raw.basic_auth_users,
        })
    }
}

/// The values and the rules between keys, which the toolkit checks when it
/// builds Go's TLS configuration.
fn tls_settings(t: RawTls, base: &Path, cx: &Context) -> Result<TlsSettings, String> {
    let err = |key: &str, value: Option<&str>, message: String| {
        cx.error(&["tls_server_config", key], value, message)
    };
    for (name, value) in [
        ("cert", &t.cert),
        ("key", &t.key),
        ("client_ca", &t.client_ca),
    ] {
        if value.is_some() {
            return Err(err(
                name,
                None,
                format!("inline PEM is not supported; put it in a file and use {name}_file"),
            ));
        }
    }
    if t.client_allowed_sans.is_some() {
        return Err(err(
            "client_allowed_sans",
            None,
            "not supported; use a client CA that signs only the clients allowed in".into(),
        ));
    }
    let cert_file = t
        .cert_file
        .ok_or_else(|| err("cert_file", None, "missing (the server certificate)".into()))?;
    let key_file = t.key_file.ok_or_else(|| {
        err(
            "key_file",
            None,
            "missing (the server's private key)".into(),
        )
    })?;
    let auth_type = match &t.client_auth_type {
        None => ClientAuthType::NoClientCert,
        Some(name) => {
            ClientAuthType::try_from(name.clone()).map_err(|e| err("client_auth_type", None, e))?
        }
    };
    let ca_file = t.client_ca_file.map(|f| base.join(f));
    let client_auth = match (auth_type, ca_file) {
        (ClientAuthType::NoClientCert, None) => ClientAuth::None,
        (ClientAuthType::NoClientCert, Some(_)) => {
            return Err(err(
                "client_ca_file",
                None,
                "set, but client_auth_type is NoClientCert; set client_auth_type to RequireAndVerifyClientCert".into(),
            ))
        }
        (other, None) => {
            return Err(err(
                "client_auth_type",
                None,
                format!("{other:?} needs client_ca_file, the CA that signs client certificates"),
            ))
        }
        (ClientAuthType::VerifyClientCertIfGiven, Some(ca_file)) => {
            ClientAuth::VerifyIfGiven { ca_file }
        }
        (ClientAuthType::RequireAndVerifyClientCert, Some(ca_file)) => {
            ClientAuth::RequireAndVerify { ca_file }
        }
    };
    let version = |key: &str, value: &Option<String>, default: TlsVersion| match value {
        None => Ok(default),
        Some(v) => TlsVersion::try_from(v.clone()).map_err(|e| err(key, None, e)),
    };
    let min_version = version("min_version", &t.min_version, TlsVersion::Tls12)?;
    let max_version = version("max_version", &t.max_version, TlsVersion::Tls13)?;
    if min_version > max_version {
        return Err(err(
            "min_version",
            None,
            "min_version is above max_version".into(),
        ));
    }
    let cipher_suites = t
        .cipher_suites
        .iter()
        .map(|name| {
            CipherSuite::try_from(name.clone()).map_err(|e| err("cipher_suites", Some(name), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tls12_suites = cipher_suites
        .iter()
        .filter(|s| matches!(s, CipherSuite::Tls12(_)))
        .count();
    if !cipher_suites.is_empty() && tls12_suites == 0 && min_version == TlsVersion::Tls12 {
        return Err(err(
            "cipher_suites",
            None,
            "lists no TLS 1.2 suite while TLS 1.2 is allowed, so no TLS 1.2 client could connect; add one or set min_version: TLS13".into(),
        ));
    }
    let curve_preferences = t
        .curve_preferences
        .iter()
        .map(|name| {
            Curve::try_from(name.clone()).map_err(|e| err("curve_preferences", Some(name), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TlsSettings {
        cert_file: base.join(cert_file),
        key_file: base.join(key_file),
        client_auth,
        min_version,
        max_version,
        cipher_suites,
        prefer_server_cipher_suites: t.prefer_server_cipher_suites,
        curve_preferences,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WebConfig, String> {
        WebConfig::parse(text, "w.yml", Path::new("/etc/x")).map_err(|e| e.to_string())
    }

    const TLS: &str = "tls_server_config:\n  cert_file: a.crt\n  key_file: /abs/a.key\n";

    #[test]
    fn parses_tls_and_users_relative_to_the_file() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let c = parse(&format!("{TLS}basic_auth_users:\n  prom: {hash}\n")).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert_file, PathBuf::from("/etc/x/a.crt"));
        assert_eq!(tls.key_file, PathBuf::from("/abs/a.key"));
        assert_eq!(tls.client_auth, ClientAuth::None);
        assert_eq!(
            (tls.min_version, tls.max_version),
            (TlsVersion::Tls12, TlsVersion::Tls13)
        );
        assert!(tls.prefer_server_cipher_suites && c.http2);
        assert_eq!(c.basic_auth_users["prom"], hash);
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let e = parse("tls_server_config:\n  cert_file: a\n  key_fil: b\n").unwrap_err();
        assert!(
            e.contains("w.yml") && e.contains("key_fil") && e.contains("line 3"),
            "{e}"
        );
        let e = parse("basic_auth_users:\n  prom: plaintext\n").unwrap_err();
        assert!(
            e.contains("basic_auth_users.prom") && e.contains("bcrypt") && e.contains("line 2"),
            "{e}"
        );
        assert!(!e.contains("plaintext"), "the password is not echoed: {e}");
        let empty = parse("").unwrap();
        assert!(empty.tls.is_none() && empty.basic_auth_users.is_empty() && empty.http2);
    }

    #[test]
    fn client_auth_types() {
        let with = |extra: &str| parse(&format!("{TLS}{extra}"));
        let c = with("  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n")
            .unwrap();
        assert_eq!(
            c.tls.unwrap().client_auth,
            ClientAuth::RequireAndVerify {
                ca_file: "/etc/x/ca.crt".into()
            }
        );
        let c = with("  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n")
            .unwrap();
        assert!(matches!(
            c.tls.unwrap().client_auth,
            ClientAuth::VerifyIfGiven { .. }
        ));
        let e = with("  client_auth_type: RequireAndVerifyClientCert\n").unwrap_err();
        assert!(e.contains("client_ca_file"), "{e}");
        let e = with("  client_ca_file: ca.crt\n").unwrap_err();
        assert!(e.contains("NoClientCert"), "{e}");
        for unverified in ["RequireAnyClientCert", "RequestClientCert"] {
            let e = with(&format!(
                "  client_auth_type: {unverified}\n  client_ca_file: ca.crt\n"
            ))
            .unwrap_err();
            assert!(
                e.contains(unverified) && e.contains("without verifying") && e.contains("line 4"),
                "{e}"
            );
        }
        let e = with("  client_auth_type: Sometimes\n").unwrap_err();
        assert!(e.contains("unknown client_auth_type"), "{e}");
        let e = with("  client_allowed_sans: [a]\n").unwrap_err();
        assert!(e.contains("client_allowed_sans"), "{e}");
        let e = parse("tls_server_config:\n  cert: \"---\"\n  key_file: k\n").unwrap_err();
        assert!(e.contains("inline PEM"), "{e}");
    }

    #[test]
    fn versions() {
        let with = |extra: &str| parse(&format!("{TLS}{extra}"));
        let t = with("  min_version: TLS13\n").unwrap().tls.unwrap();
        assert_eq!(t.min_version, TlsVersion::Tls13);
        let t = with("  max_version: TLS12\n").unwrap().tls.unwrap();
        assert_eq!(t.max_version, TlsVersion::Tls12);
        let e = with("  min_version: TLS10\n").unwrap_err();
        assert!(e.contains("TLS10") && e.contains("TLS12 and TLS13"), "{e}");
        let e = with("  min_version: TLS13\n  max_version: TLS12\n").unwrap_err();
        assert!(e.contains("min_version is above max_version"), "{e}");
        let e = with("  max_version: SSL3\n").unwrap_err();
        assert!(e.contains("unknown TLS version"), "{e}");
    }

    #[test]
    fn cipher_suite_names_map_to_rustls_or_are_refused_by_name() {
        for (name, suite) in TLS12_SUITES {
            assert_eq!(
                CipherSuite::try_from(name.to_owned()),
                Ok(CipherSuite::Tls12(suite))
            );
        }
        assert_eq!(
            CipherSuite::try_from("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305".to_owned()),
            Ok(CipherSuite::Tls12(
                Tls12Suite::EcdheRsaChacha20Poly1305Sha256
            ))
        );
        assert_eq!(
            CipherSuite::try_from("TLS_AES_128_GCM_SHA256".to_owned()),
            Ok(CipherSuite::Tls13)
        );
        let e = CipherSuite::try_from("TLS_RSA_WITH_AES_128_CBC_SHA".to_owned()).unwrap_err();
        assert!(e.contains("not implemented by rustls"), "{e}");
        let e = parse(&format!(
            "{TLS}  cipher_suites:\n    - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\n    - TLS_BOGUS\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("TLS_BOGUS")
                && e.contains("key `tls_server_config.cipher_suites`")
                && e.contains("line 6"),
            "{e}"
        );
        let t = parse(&format!(
            "{TLS}  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, TLS_AES_128_GCM_SHA256]\n"
        ))
        .unwrap()
        .tls
        .unwrap();
        assert_eq!(t.cipher_suites.len(), 2);
        let e = parse(&format!("{TLS}  cipher_suites: [TLS_AES_128_GCM_SHA256]\n")).unwrap_err();
        assert!(e.contains("no TLS 1.2 suite"), "{e}");
        assert!(parse(&format!(
            "{TLS}  min_version: TLS13\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"
        ))
        .is_ok());
    }

    #[test]
    fn keys_and_values_are_located_for_messages() {
        let text = "# comment\ntls_server_config:\n  cert_file: a\n  cipher_suites:\n  - X\n  - Y\nbasic_auth_users:\n  \"prom\": h\n";
        assert_eq!(locate(text, &["tls_server_config"], None), Some(2));
        assert_eq!(
            locate(text, &["tls_server_config", "cipher_suites"], Some("Y")),
            Some(6),
            "a list at its key's indentation"
        );
        assert_eq!(locate(text, &["basic_auth_users", "prom"], None), Some(8));
        assert_eq!(
            locate(text, &["tls_server_config", "key_file"], None),
            Some(2),
            "falls back to the deepest key found"
        );
        let flow = "tls_server_config: {cert_file: a, min_version: TLS10}\n";
        assert_eq!(
            locate(flow, &["tls_server_config", "min_version"], None),
            Some(1)
        );
    }

    #[test]
    fn curves() {
        let t = parse(&format!("{TLS}  curve_preferences: [CurveP256, X25519]\n"))
            .unwrap()
            .tls
            .unwrap();
        assert_eq!(t.curve_preferences, vec![Curve::P256, Curve::X25519]);
        let e = parse(&format!("{TLS}  curve_preferences: [CurveP521]\n")).unwrap_err();
        assert!(e.contains("CurveP521"), "{e}");
    }

    #[test]
    fn header_rules_follow_the_toolkit() {
        let c = parse(
            "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    Content-Security-Policy: \"default-src 'self'\"\n    X-XSS-Protection: \"\"\n",
        )
        .unwrap();
        let names: Vec<&str> = c.headers.0.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-security-policy", "x-frame-options"]);
        let e = parse("http_server_config:\n  headers:\n    X-Frame-Options: allow\n").unwrap_err();
        assert!(
            e.contains("X-Frame-Options") && e.contains("sameorigin"),
            "{e}"
        );
        let e = parse("http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n")
            .unwrap_err();
        assert!(e.contains("nosniff"), "{e}");
        let e = parse("http_server_config:\n  headers:\n    Set-Cookie: a=b\n").unwrap_err();
        assert!(
            e.contains("\"Set-Cookie\" can not be configured") && e.contains("line 3"),
            "{e}"
        );
        // Names match exactly, as in the toolkit.
        assert!(parse("http_server_config:\n  headers:\n    x-frame-options: deny\n").is_err());
        let c = parse("http_server_config:\n  http2: false\n").unwrap();
        assert!(!c.http2);
        let e = parse("rate_limit:\n  interval: 1s\n  burst: 5\n").unwrap_err();
        assert!(e.contains("rate_limit"), "{e}");
    }
}
