//! COPY: new users and their children in PostgreSQL's COPY text format.

use sqlx::PgConnection;
use uuid::Uuid;

use super::StoreError;
use crate::model::UserRecord;

/// New users and their children in PostgreSQL's COPY text format: the fast path for users the
/// mirror does not have yet (a first sync), and what the benchmark's DB floor copies.
#[derive(Debug, Default)]
pub struct CopyRows {
    pub users: String,
    pub emails: String,
    pub phones: String,
    pub managers: String,
}

const COPY_USERS: &str = "COPY users (integrated_account_id, id, name, first_name, last_name, username, job_title, locale, timezone, role, status, organization_id, organization_name, custom_fields, remote_data, extra, created_at, updated_at, content_hash, last_changed_run_id, listed_hash) FROM STDIN";
const COPY_EMAILS: &str = "COPY user_emails (integrated_account_id, user_id, position, email, is_primary, type) FROM STDIN";
const COPY_PHONES: &str = "COPY user_phones (integrated_account_id, user_id, position, number, extension, type) FROM STDIN";
const COPY_MANAGERS: &str = "COPY user_managers (integrated_account_id, user_id, manager_id, manager_name, manager_emails) FROM STDIN";

/// Appends one COPY text-format field (NULL as `\N`; backslash, tab, newline, CR escaped).
/// Values never hold NUL: the model refuses such records.
fn copy_field(out: &mut String, v: Option<&str>) {
    match v {
        None => out.push_str("\\N"),
        // Most values need no escaping: two vectorized searches say so.
        Some(s)
            if memchr::memchr3(b'\\', b'\t', b'\n', s.as_bytes()).is_none()
                && memchr::memchr(b'\r', s.as_bytes()).is_none() =>
        {
            out.push_str(s)
        }
        Some(s) => {
            // Copy runs of plain bytes at once; only these four need escaping (all ASCII, so
            // the runs split the text at character boundaries).
            let mut start = 0;
            for (i, b) in s.bytes().enumerate() {
                let escaped = match b {
                    b'\\' => "\\\\",
                    b'\t' => "\\t",
                    b'\n' => "\\n",
                    b'\r' => "\\r",
                    _ => continue,
                };
                out.push_str(&s[start..i]);
                out.push_str(escaped);
                start = i + 1;
            }
            out.push_str(&s[start..]);
        }
    }
}

pub(super) fn copy_line(out: &mut String, fields: &[Option<&str>]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        copy_field(out, *f);
    }
    out.push('\n');
}

impl CopyRows {
    /// Adds `users` of `account` (written by `run_id`, when a run writes them).
    pub fn add(&mut self, account: Uuid, run_id: Option<i64>, users: &[&UserRecord]) {
        let acct = account.to_string();
        let run = run_id.map(|r| r.to_string());
        for u in users {
            let hash = bytea_text(&u.content_hash);
            let listed = bytea_text(&u.listed_hash);
            let created = u.created_at.map(|t| t.to_rfc3339());
            let updated = u.updated_at.map(|t| t.to_rfc3339());
            copy_line(
                &mut self.users,
                &[
                    Some(&acct),
                    Some(&u.id),
                    u.name.as_deref(),
                    u.first_name.as_deref(),
                    u.last_name.as_deref(),
                    u.username.as_deref(),
                    u.job_title.as_deref(),
                    u.locale.as_deref(),
                    u.timezone.as_deref(),
                    u.role.as_deref(),
                    u.status.as_deref(),
                    u.organization_id.as_deref(),
                    u.organization_name.as_deref(),
                    u.custom_fields.as_deref(),
                    u.remote_data.as_deref(),
                    u.extra.as_deref(),
                    created.as_deref(),
                    updated.as_deref(),
                    Some(hash.as_str()),
                    run.as_deref(),
                    Some(listed.as_str()),
                ],
            );
            for (p, e) in u.emails.iter().enumerate() {
                let pos = p.to_string();
                let primary = e.is_primary.map(|b| if b { "t" } else { "f" });
                copy_line(
                    &mut self.emails,
                    &[
                        Some(&acct),
                        Some(&u.id),
                        Some(&pos),
                        e.email.as_deref(),
                        primary,
                        e.kind.as_deref(),
                    ],
                );
            }
            for (p, ph) in u.phones.iter().enumerate() {
                let pos = p.to_string();
                copy_line(
                    &mut self.phones,
                    &[
                        Some(&acct),
                        Some(&u.id),
                        Some(&pos),
                        ph.number.as_deref(),
                        ph.extension.as_deref(),
                        ph.kind.as_deref(),
                    ],
                );
            }
            if let Some(m) = &u.manager {
                copy_line(
                    &mut self.managers,
                    &[
                        Some(&acct),
                        Some(&u.id),
                        m.id.as_deref(),
                        m.name.as_deref(),
                        m.emails.as_deref(),
                    ],
                );
            }
        }
    }

    /// Streams the rows into their tables on `conn` (inside the caller's transaction).
    pub async fn copy_in(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        copy_all(std::slice::from_ref(self), conn).await
    }
}

/// `bytes` as bytea input text (`\\x` and hex digits). Hashes are 16 bytes, so the text is
/// built on the stack: formatting each byte with `{:02x}` showed in a first sync's profile.
fn bytea_text(bytes: &[u8; 16]) -> HashText {
    let mut out = [0u8; 34];
    out[..2].copy_from_slice(b"\\x");
    hex::encode_to_slice(bytes, &mut out[2..]).expect("34 bytes hold 16 in hex");
    HashText(out)
}

/// A 16-byte hash as bytea input text.
struct HashText([u8; 34]);

impl HashText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII")
    }
}

/// Streams several sets of rows (one per page) into their tables: one COPY per table, each
/// set sent as it is, without first concatenating them.
pub async fn copy_all(sets: &[CopyRows], conn: &mut PgConnection) -> Result<(), StoreError> {
    type Part = fn(&CopyRows) -> &String;
    let tables: [(&str, Part); 4] = [
        (COPY_USERS, |r| &r.users),
        (COPY_EMAILS, |r| &r.emails),
        (COPY_PHONES, |r| &r.phones),
        (COPY_MANAGERS, |r| &r.managers),
    ];
    for (sql, part) in tables {
        if sets.iter().all(|r| part(r).is_empty()) {
            continue;
        }
        let mut copy = conn.copy_in_raw(sql).await?;
        for r in sets {
            let data = part(r);
            if !data.is_empty() {
                copy.send(data.as_bytes()).await?;
            }
        }
        copy.finish().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_written_as_bytea_hex() {
        let mut bytes = [0u8; 16];
        bytes[0] = 0x0f;
        bytes[15] = 0xa0;
        assert_eq!(
            bytea_text(&bytes).as_str(),
            "\\x0f0000000000000000000000000000a0"
        );
    }

    #[test]
    fn copy_fields_escape_what_copy_text_format_needs() {
        let mut s = String::new();
        copy_line(&mut s, &[Some("a\tb"), None, Some("c\\d\ne\rf")]);
        assert_eq!(s, "a\\tb\t\\N\tc\\\\d\\ne\\rf\n");
        // A carriage return alone, and plain text, each take their own path.
        let mut s = String::new();
        copy_line(&mut s, &[Some("x\ry"), Some("plain, ünïcode")]);
        assert_eq!(s, "x\\ry\tplain, ünïcode\n");
    }
}
