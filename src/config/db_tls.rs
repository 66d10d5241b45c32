//! The TLS parameters of `database.url`, read the way sqlx reads them, so that a mistake in
//! them is refused at start naming the parameter and the file (sqlx reports an unknown
//! `sslmode` as an unparsable URL, and a missing file only at the first connection, as "No such
//! file or directory" without its name), and so that the store can keep libpq's meaning of
//! `sslmode=require` beside a CA file. Nothing here quotes the URL: it may hold a password.

use std::path::Path;

/// The values sqlx accepts for `sslmode` (any case), libpq's.
pub const SSL_MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// The parameters' names in a URL, in the order of [`DbTls`]'s fields.
pub const URL_NAMES: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// The environment variables sqlx (like libpq) reads for what the URL does not say, in the
/// order of [`DbTls`]'s fields.
pub const ENV_NAMES: [&str; 4] = ["PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY"];

/// What `database.url` (or the environment) says about TLS (each `None` when it does not say it).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DbTls {
    pub mode: Option<String>,
    pub root_cert: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

impl DbTls {
    /// Reads the TLS parameters from a database URL, under every name sqlx accepts for them;
    /// `None` when the text is not a URL (sqlx then refuses it on its own).
    pub fn from_url(url: &str) -> Option<DbTls> {
        let parsed = reqwest::Url::parse(url).ok()?;
        let mut tls = DbTls::default();
        for (key, value) in parsed.query_pairs() {
            let value = Some(value.into_owned());
            match key.as_ref() {
                "sslmode" | "ssl-mode" => tls.mode = value,
                "sslrootcert" | "ssl-root-cert" | "ssl-ca" => tls.root_cert = value,
                "sslcert" | "ssl-cert" => tls.client_cert = value,
                "sslkey" | "ssl-key" => tls.client_key = value,
                _ => {}
            }
        }
        Some(tls)
    }

    /// Reads `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT` and `PGSSLKEY` through `var` (the
    /// process's environment, which sqlx reads), each `None` when unset.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> DbTls {
        let [mode, root_cert, client_cert, client_key] = ENV_NAMES.map(var);
        DbTls {
            mode,
            root_cert,
            client_cert,
            client_key,
        }
    }

    /// What of `self` (the environment's) is used beside `url`'s: the URL's own parameters win.
    pub fn beneath(self, url: &DbTls) -> DbTls {
        let unless = |v: Option<String>, set: &Option<String>| v.filter(|_| set.is_none());
        DbTls {
            mode: unless(self.mode, &url.mode),
            root_cert: unless(self.root_cert, &url.root_cert),
            client_cert: unless(self.client_cert, &url.client_cert),
            client_key: unless(self.client_key, &url.client_key),
        }
    }

    /// Whether nothing is said.
    pub fn is_empty(&self) -> bool {
        *self == DbTls::default()
    }

    /// Checks the parameters and reads the files they name: an unknown mode, a certificate or
    /// key file that cannot be read or holds no PEM of its kind. The message names the
    /// parameter as `names` (the URL's or the environment's) does, and the file, never the URL.
    pub fn check_as(&self, names: [&str; 4]) -> Result<(), String> {
        if let Some(mode) = &self.mode {
            if !SSL_MODES.contains(&mode.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "{}={mode} is not one of {}",
                    names[0],
                    SSL_MODES.join(", ")
                ));
            }
        }
        let files = [
            (names[1], &self.root_cert, "CERTIFICATE"),
            (names[2], &self.client_cert, "CERTIFICATE"),
            (names[3], &self.client_key, "PRIVATE KEY"),
        ];
        for (param, value, kind) in files {
            if let Some(value) = value {
                check_pem(param, value, kind, param == names[1])?;
            }
        }
        Ok(())
    }

    /// A client certificate and its key go together (wherever each was given: `with_env`).
    pub fn check_pair(&self, with_env: bool) -> Result<(), String> {
        if self.client_cert.is_some() == self.client_key.is_some() {
            return Ok(());
        }
        let (cert, key) = if with_env {
            ("sslcert (or PGSSLCERT)", "sslkey (or PGSSLKEY)")
        } else {
            ("sslcert", "sslkey")
        };
        Err(format!(
            "{cert} and {key} go together (a client certificate and its private key); one is \
             given without the other"
        ))
    }

    /// `self`'s parameters, and `other`'s where `self` says nothing.
    pub fn or(&self, other: &DbTls) -> DbTls {
        DbTls {
            mode: self.mode.clone().or_else(|| other.mode.clone()),
            root_cert: self.root_cert.clone().or_else(|| other.root_cert.clone()),
            client_cert: self
                .client_cert
                .clone()
                .or_else(|| other.client_cert.clone()),
            client_key: self.client_key.clone().or_else(|| other.client_key.clone()),
        }
    }
}

/// sqlx takes a value that is PEM itself (`-----BEGIN …-----`) as the certificate, and anything
/// else as a file's path.
fn is_inline_pem(value: &str) -> bool {
    let v = value.trim();
    v.starts_with("-----BEGIN") && v.ends_with("-----")
}

/// Reads the file a TLS parameter names and looks for a PEM block of `kind` (`CERTIFICATE`, or
/// `PRIVATE KEY`, which `RSA PRIVATE KEY` and `EC PRIVATE KEY` end with too).
fn check_pem(param: &str, value: &str, kind: &str, root: bool) -> Result<(), String> {
    let text = if is_inline_pem(value) {
        value.as_bytes().to_vec()
    } else {
        let path = Path::new(value);
        let read = std::fs::metadata(path)
            .and_then(|m| {
                // A CA bundle is kilobytes; the size check keeps a mistaken path (a device,
                // a log) from being read whole.
                if m.len() > 16 << 20 {
                    Err(std::io::Error::other("larger than 16 MiB: not a PEM file"))
                } else {
                    Ok(())
                }
            })
            .and_then(|()| std::fs::read(path));
        match read {
            Ok(text) => text,
            Err(e) => {
                let hint = if root && value == "system" {
                    " (sslrootcert=system is libpq's; lms-sync trusts the public web CAs built \
                     into it when sslrootcert is not given, or name the file of the CA that \
                     signed the server's certificate)"
                } else {
                    ""
                };
                return Err(format!(
                    "{param} names {value}, which cannot be read: {e}{hint}"
                ));
            }
        }
    };
    let text = String::from_utf8_lossy(&text);
    let has_kind = text.lines().any(|l| {
        let l = l.trim();
        l.starts_with("-----BEGIN ") && l.ends_with(&format!("{kind}-----"))
    });
    if has_kind {
        return Ok(());
    }
    let what = if is_inline_pem(value) {
        "its value".to_string()
    } else {
        format!("the file {value}")
    };
    Err(format!(
        "{param}: {what} holds no PEM {} (a block starting -----BEGIN {kind}-----){}",
        kind.to_ascii_lowercase(),
        if kind == "CERTIFICATE" {
            "; a DER certificate converts with `openssl x509 -inform der -in FILE -out FILE.pem`"
        } else {
            ""
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `check_database_url` checks of a URL whose environment says nothing of TLS.
    fn check(tls: &DbTls) -> Result<(), String> {
        tls.check_as(URL_NAMES)?;
        tls.check_pair(false)
    }

    fn temp(name: &str, body: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("lms-sync-db-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        path
    }

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

    #[test]
    fn reads_every_name_sqlx_accepts_and_only_the_query() {
        let tls = DbTls::from_url(
            "postgres://u:secret@db:5432/x?ssl-mode=verify-full&ssl-ca=/ca.pem&sslcert=/c&ssl-key=/k&application_name=a",
        )
        .unwrap();
        assert_eq!(
            tls,
            DbTls {
                mode: Some("verify-full".into()),
                root_cert: Some("/ca.pem".into()),
                client_cert: Some("/c".into()),
                client_key: Some("/k".into()),
            }
        );
        assert_eq!(
            DbTls::from_url("postgres://db/x").unwrap(),
            DbTls::default()
        );
        assert!(DbTls::from_url("not a url").is_none());
    }

    #[test]
    fn an_unknown_mode_names_the_known_ones_and_any_case_is_accepted() {
        let tls = DbTls::from_url("postgres://u:pw@db/x?sslmode=verify_full").unwrap();
        let e = check(&tls).unwrap_err();
        assert_eq!(
            e,
            "sslmode=verify_full is not one of disable, allow, prefer, require, verify-ca, verify-full"
        );
        assert!(!e.contains("pw"));
        let tls = DbTls::from_url("postgres://db/x?sslmode=Verify-Full").unwrap();
        assert_eq!(check(&tls), Ok(()));
    }

    #[test]
    fn a_missing_or_wrong_file_is_named_with_what_is_wrong() {
        let missing = DbTls {
            root_cert: Some("/nonexistent/ca.pem".into()),
            ..DbTls::default()
        };
        let e = check(&missing).unwrap_err();
        assert!(
            e.starts_with("sslrootcert names /nonexistent/ca.pem, which cannot be read: "),
            "{e}"
        );
        let system = DbTls {
            root_cert: Some("system".into()),
            ..DbTls::default()
        };
        assert!(check(&system).unwrap_err().contains("libpq's"));

        let der = temp("ca.der", &[0x30, 0x82, 0x01, 0x0a]);
        let e = check(&DbTls {
            root_cert: Some(der.display().to_string()),
            ..DbTls::default()
        })
        .unwrap_err();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        assert!(e.contains("openssl x509 -inform der"), "{e}");

        // A certificate where the key belongs.
        let cert = temp("client.pem", CERT.as_bytes());
        let e = check(&DbTls {
            client_cert: Some(cert.display().to_string()),
            client_key: Some(cert.display().to_string()),
            ..DbTls::default()
        })
        .unwrap_err();
        assert!(e.starts_with("sslkey: the file "), "{e}");
        assert!(e.contains("holds no PEM private key"), "{e}");
    }

    #[test]
    fn good_files_inline_pem_and_key_kinds_pass_and_a_lone_half_does_not() {
        let ca = temp("ca.pem", CERT.as_bytes());
        let key = temp(
            "client.key",
            KEY.replace("PRIVATE", "EC PRIVATE").as_bytes(),
        );
        let ok = DbTls {
            mode: Some("verify-full".into()),
            root_cert: Some(ca.display().to_string()),
            client_cert: Some(CERT.into()),
            client_key: Some(key.display().to_string()),
        };
        assert_eq!(check(&ok), Ok(()));
        let half = DbTls {
            client_cert: Some(ca.display().to_string()),
            ..DbTls::default()
        };
        assert!(check(&half)
            .unwrap_err()
            .starts_with("sslcert and sslkey go together"));
    }

    #[test]
    fn the_environment_fills_in_only_what_the_url_does_not_say() {
        let env = DbTls::from_env(|name| match name {
            "PGSSLMODE" => Some("verify_full".into()),
            "PGSSLKEY" => Some("/k".into()),
            _ => None,
        });
        let url = DbTls::from_url("postgres://db/x?sslcert=/c").unwrap();
        let under = env.clone().beneath(&url);
        assert_eq!(under, env);
        let e = under.check_as(ENV_NAMES).unwrap_err();
        assert!(e.starts_with("PGSSLMODE=verify_full is not one of "), "{e}");
        // A certificate in the URL and its key in the environment are a pair.
        assert_eq!(url.or(&under).check_pair(true), Ok(()));
        let alone = DbTls::from_url("postgres://db/x?sslkey=/k").unwrap();
        assert!(alone
            .check_pair(false)
            .unwrap_err()
            .starts_with("sslcert and sslkey go together"));
        assert!(DbTls::default()
            .or(&DbTls::from_env(|n| (n == "PGSSLCERT").then(|| "/c".into())))
            .check_pair(true)
            .unwrap_err()
            .starts_with("sslcert (or PGSSLCERT) and sslkey (or PGSSLKEY)"));
        // The URL's mode wins: the environment's is not used, so not checked.
        let url = DbTls::from_url("postgres://db/x?sslmode=require").unwrap();
        assert_eq!(env.beneath(&url).mode, None);
        assert!(DbTls::default().is_empty() && !url.is_empty());
    }
}
