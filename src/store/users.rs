//! Users and their children (emails, phones, manager): classifying a batch's users against
//! what is mirrored, and writing only what changed.

use std::collections::HashMap;

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::copy::{copy_all, copy_line, CopyRows};
use super::history::{record_updates, snapshots};
use super::pages::PageWrite;
use super::StoreError;
use crate::model::{Rejection, UserRecord};

/// What [`write_users`] did.
#[derive(Debug, Default)]
pub(super) struct Written {
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub undeleted: u64,
    /// Scanned records that turned out not to decode.
    pub rejected: Vec<Rejection>,
    /// Role and status values outside the documented lists among the users written.
    pub unknown_enums: Vec<(&'static str, String)>,
}

/// What the mirror holds of a user: content hash, listed-text hash, deleted.
type Stored = (Vec<u8>, Option<Vec<u8>>, bool);

/// A batch's users sorted against what the mirror holds.
struct Classified<'a> {
    /// Users that are new or whose content changed.
    changed: Vec<&'a UserRecord>,
    /// Deleted users listed again with unchanged content: only `deleted_at` is cleared.
    revived: Vec<&'a str>,
    /// Unchanged users mirrored before their text was hashed: record the hash, once.
    backfill: Vec<&'a UserRecord>,
}

/// Classifies the page's users against their stored hashes and writes only what changed.
/// Scanned records whose text is what was mirrored are not even decoded.
pub(super) async fn write_users(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    run_id: i64,
    w: &PageWrite<'_>,
) -> Result<Written, StoreError> {
    let mut out = Written::default();
    if w.page.is_empty() {
        return Ok(out);
    }
    let existing = stored(tx, account, w).await?;
    // Scanned records: the same text as mirrored means the same user; the rest are decoded.
    let mut revived: Vec<&str> = Vec::new();
    let mut decoded: Vec<UserRecord> = Vec::new();
    for l in &w.page.listed {
        match existing.get(&l.id) {
            Some((_, Some(listed), deleted)) if listed.as_slice() == l.listed_hash => {
                if *deleted {
                    out.undeleted += 1;
                    revived.push(&l.id);
                } else {
                    out.unchanged += 1;
                }
            }
            _ => match l.decode() {
                Ok(u) => decoded.push(u),
                Err(r) => out.rejected.push(r),
            },
        }
    }
    let users: Vec<&UserRecord> = w.page.users.iter().chain(decoded.iter()).collect();
    let mut c = classify(&users, &existing, &mut out);
    c.revived.extend(revived);
    for u in &c.changed {
        out.unknown_enums
            .extend(u.unknown_enum_values().map(|(f, v)| (f, v.to_string())));
    }
    backfill_listed_hashes(tx, account, &c.backfill).await?;
    revive(tx, account, run_id, &c.revived, w.history).await?;
    if c.changed.is_empty() {
        return Ok(out);
    }
    let (old, new): (Vec<&UserRecord>, Vec<&UserRecord>) =
        c.changed.iter().partition(|u| existing.contains_key(&u.id));
    insert_new(tx, account, run_id, w, &new).await?;
    if w.hydrate {
        // Their full objects are fetched after the listing (see sync::hydrate).
        queue_hydration(tx, account, &c.changed).await?;
    }
    update_changed(tx, account, run_id, w, &old).await?;
    Ok(out)
}

/// What the mirror holds of the batch's users that may already be mirrored.
async fn stored(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    w: &PageWrite<'_>,
) -> Result<HashMap<String, Stored>, StoreError> {
    let ids: Vec<&str> = match w.lookup {
        Some(only) => only.iter().map(String::as_str).collect(),
        None => w.page.ids().collect(),
    };
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(
        sqlx::query_as::<_, (String, Vec<u8>, Option<Vec<u8>>, bool)>(
            "SELECT id, content_hash, listed_hash, deleted_at IS NOT NULL
           FROM users WHERE integrated_account_id = $1 AND id = ANY($2::text[])",
        )
        // IMPORTANT: unnamed statements are planned with their parameters each time. A named
        // (cached, generic) plan made while the table was small — a first sync starts empty —
        // keeps seq-scanning it as it grows, which made first syncs quadratic. (Setting
        // plan_cache_mode for the session instead also replans every foreign-key check.)
        .persistent(false)
        .bind(account)
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .map(|(id, h, l, d)| (id, (h, l, d)))
        .collect(),
    )
}

/// Sorts decoded users into new or changed, revived and unchanged (counted in `out`).
fn classify<'a>(
    users: &[&'a UserRecord],
    existing: &HashMap<String, Stored>,
    out: &mut Written,
) -> Classified<'a> {
    let mut c = Classified {
        changed: Vec::new(),
        revived: Vec::new(),
        backfill: Vec::new(),
    };
    for u in users {
        let Some((hash, listed, deleted)) = existing.get(&u.id) else {
            out.inserted += 1;
            c.changed.push(u);
            continue;
        };
        if *deleted {
            out.undeleted += 1;
        }
        if hash.as_slice() != u.content_hash {
            out.updated += 1;
            c.changed.push(u);
            continue;
        }
        if listed.is_none() {
            c.backfill.push(u);
        }
        if *deleted {
            c.revived.push(&u.id);
        } else {
            out.unchanged += 1;
        }
    }
    c
}

async fn backfill_listed_hashes(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    users: &[&UserRecord],
) -> Result<(), StoreError> {
    if users.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
    let hashes: Vec<&[u8]> = users.iter().map(|u| &u.listed_hash[..]).collect();
    sqlx::query(
        "UPDATE users u SET listed_hash = t.h
           FROM unnest($2::text[], $3::bytea[]) AS t(id, h)
          WHERE u.integrated_account_id = $1 AND u.id = t.id AND u.listed_hash IS NULL",
    )
    .persistent(false)
    .bind(account)
    .bind(&ids)
    .bind(&hashes)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Clears `deleted_at` of users listed again (and records it when `history`).
async fn revive(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    run_id: i64,
    ids: &[&str],
    history: bool,
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "WITH prev AS (
             SELECT id, deleted_at FROM users
              WHERE integrated_account_id = $1 AND id = ANY($2::text[]) FOR UPDATE),
         revived AS (
             UPDATE users u SET deleted_at = NULL, last_changed_at = now(), last_changed_run_id = $3
               FROM prev WHERE u.integrated_account_id = $1 AND u.id = prev.id)
         INSERT INTO user_changes (integrated_account_id, user_id, run_id, kind, changed_fields)
         SELECT $1, prev.id, $3, 'undelete',
                jsonb_build_object('deleted_at', jsonb_build_object('old', iso_utc(prev.deleted_at), 'new', NULL))
           FROM prev WHERE $4",
    )
    .persistent(false)
    .bind(account)
    .bind(ids)
    .bind(run_id)
    .bind(history)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes users the mirror does not have (we hold the account's lease, so nobody else adds
/// them): COPY them and their children straight in, with one history row each.
async fn insert_new(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    run_id: i64,
    w: &PageWrite<'_>,
    new: &[&UserRecord],
) -> Result<(), StoreError> {
    if new.is_empty() {
        return Ok(());
    }
    match w.all_new {
        // Encoded ahead by the caller for exactly these users.
        Some(sets) if w.page.listed.is_empty() && new.len() == w.page.users.len() => {
            copy_all(sets, tx).await?
        }
        _ => {
            let mut rows = CopyRows::default();
            rows.add(account, Some(run_id), new);
            rows.copy_in(tx).await?;
        }
    }
    if !w.history {
        return Ok(());
    }
    // One narrow row per new user, by COPY (a first sync inserts many).
    let (acct, run) = (account.to_string(), run_id.to_string());
    let mut lines = String::with_capacity(new.len() * 64);
    for u in new {
        copy_line(
            &mut lines,
            &[Some(&acct), Some(&u.id), Some(&run), Some("insert")],
        );
    }
    let mut copy = tx
        .copy_in_raw("COPY user_changes (integrated_account_id, user_id, run_id, kind) FROM STDIN")
        .await?;
    copy.send(lines.as_bytes()).await?;
    copy.finish().await?;
    Ok(())
}

async fn queue_hydration(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    users: &[&UserRecord],
) -> Result<(), StoreError> {
    let ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
    sqlx::query(
        "INSERT INTO hydration_queue (integrated_account_id, user_id)
         SELECT $1, t.id FROM unnest($2::text[]) AS t(id)
         ON CONFLICT (integrated_account_id, user_id) DO UPDATE
            SET queued_at = now(), attempts = 0, next_attempt_at = now(), last_error = NULL",
    )
    .persistent(false)
    .bind(account)
    .bind(&ids)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Changed users: update, and write only the child rows that differ (and the history).
async fn update_changed(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    run_id: i64,
    w: &PageWrite<'_>,
    old: &[&UserRecord],
) -> Result<(), StoreError> {
    if old.is_empty() {
        return Ok(());
    }
    let before = if w.history {
        Some(snapshots(tx, account, old).await?)
    } else {
        None
    };
    let mode = if w.hydrate {
        UpdateMode::ListedPartial
    } else {
        UpdateMode::Listed
    };
    update_users(tx, account, run_id, old, mode).await?;
    if let Some(before) = before {
        record_updates(tx, account, run_id, &before, &[]).await?;
    }
    Ok(())
}

/// How [`update_users`] writes a user it already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UpdateMode {
    /// From a listing: the record is the user. Fields the record lacks become NULL.
    Listed,
    /// From a partial listing of an account with hydration: only the fields the record has
    /// are written (the rest came from the full object and stay); `extra` keys are merged.
    ListedPartial,
    /// From the single-user GET: the full object. The content hash (of the listed record)
    /// stays, so the next unchanged listing still writes nothing.
    Hydrated,
}

/// The columns an UPDATE from a partial record writes only when the record carried their
/// field: (column, the field of `model::KNOWN_FIELDS` that carries it, SQL cast).
const FIELD_COLUMNS: &[(&str, &str, &str)] = &[
    ("name", "name", ""),
    ("first_name", "first_name", ""),
    ("last_name", "last_name", ""),
    ("username", "username", ""),
    ("job_title", "job_title", ""),
    ("locale", "locale", ""),
    ("timezone", "timezone", ""),
    ("role", "role", ""),
    ("status", "status", ""),
    ("organization_id", "organization", ""),
    ("organization_name", "organization", ""),
    ("custom_fields", "custom_fields", "::jsonb"),
    ("remote_data", "remote_data", "::jsonb"),
    ("created_at", "created_at", ""),
    ("updated_at", "updated_at", ""),
];

/// `col = CASE WHEN <the record carried its field> THEN <new> ELSE <stored> END` for each of
/// [`FIELD_COLUMNS`], with the field's bit taken from the model's table.
fn field_assignments() -> String {
    FIELD_COLUMNS
        .iter()
        .map(|(column, field, cast)| {
            let bit = crate::model::field_bit(field)
                .unwrap_or_else(|| panic!("{field} is not in model::KNOWN_FIELDS"));
            format!(
                "{column} = CASE WHEN t.p & {bit} <> 0 THEN t.{column}{cast} ELSE u.{column} END,\n"
            )
        })
        .collect()
}

/// The statement of [`update_users`]: $21 is the mode (`listed`, `partial`, `hydrated`), `p`
/// the bits of the fields each record carried.
static UPDATE_USERS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "UPDATE users AS u SET
                {}extra = CASE WHEN $21 = 'partial'
                             THEN nullif(coalesce(u.extra, '{{}}') || coalesce(t.extra::jsonb, '{{}}'), '{{}}')
                             ELSE t.extra::jsonb END,
                content_hash = CASE WHEN $21 = 'hydrated' THEN u.content_hash ELSE t.content_hash END,
                deleted_at = CASE WHEN $21 = 'hydrated' THEN u.deleted_at END,
                hydrated_at = CASE WHEN $21 = 'hydrated' THEN now() ELSE u.hydrated_at END,
                hydrated_hash = CASE WHEN $21 = 'hydrated' THEN t.content_hash ELSE u.hydrated_hash END,
                listed_hash = CASE WHEN $21 = 'hydrated' THEN u.listed_hash ELSE t.listed_hash END,
                last_changed_at = now(), last_changed_run_id = $2
           FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                       $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
                       $15::text[], $16::text[], $17::timestamptz[], $18::timestamptz[], $19::bytea[],
                       $20::text[], $22::int4[], $23::bytea[])
             AS t(id, name, first_name, last_name, username, job_title, locale, timezone, role,
                  status, organization_id, organization_name, custom_fields, remote_data,
                  created_at, updated_at, content_hash, extra, p, listed_hash)
          WHERE u.integrated_account_id = $1 AND u.id = t.id",
        field_assignments()
    )
});

/// Writes users the mirror already has (we hold the account's lease: none can vanish).
pub(super) async fn update_users(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    run_id: i64,
    users: &[&UserRecord],
    mode: UpdateMode,
) -> Result<(), StoreError> {
    fn col<'a>(
        users: &[&'a UserRecord],
        f: impl Fn(&'a UserRecord) -> Option<&'a str>,
    ) -> Vec<Option<&'a str>> {
        users.iter().map(|u| f(u)).collect()
    }
    let ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
    let hashes: Vec<&[u8]> = users.iter().map(|u| &u.content_hash[..]).collect();
    let listed: Vec<&[u8]> = users.iter().map(|u| &u.listed_hash[..]).collect();
    let created: Vec<_> = users.iter().map(|u| u.created_at).collect();
    let updated: Vec<_> = users.iter().map(|u| u.updated_at).collect();
    let present: Vec<i32> = users
        .iter()
        .map(|u| match mode {
            UpdateMode::Listed => crate::model::ALL_PRESENT as i32,
            _ => u.present as i32,
        })
        .collect();
    // The fields' bits in `present` come from the model's field table (see UPDATE_USERS).
    sqlx::query(UPDATE_USERS.as_str())
        .persistent(false)
        .bind(account)
        .bind(run_id)
        .bind(&ids)
        .bind(col(users, |u| u.name.as_deref()))
        .bind(col(users, |u| u.first_name.as_deref()))
        .bind(col(users, |u| u.last_name.as_deref()))
        .bind(col(users, |u| u.username.as_deref()))
        .bind(col(users, |u| u.job_title.as_deref()))
        .bind(col(users, |u| u.locale.as_deref()))
        .bind(col(users, |u| u.timezone.as_deref()))
        .bind(col(users, |u| u.role.as_deref()))
        .bind(col(users, |u| u.status.as_deref()))
        .bind(col(users, |u| u.organization_id.as_deref()))
        .bind(col(users, |u| u.organization_name.as_deref()))
        .bind(col(users, |u| u.custom_fields.as_deref()))
        .bind(col(users, |u| u.remote_data.as_deref()))
        .bind(&created)
        .bind(&updated)
        .bind(&hashes)
        .bind(col(users, |u| u.extra.as_deref()))
        .bind(match mode {
            UpdateMode::Listed => "listed",
            UpdateMode::ListedPartial => "partial",
            UpdateMode::Hydrated => "hydrated",
        })
        .bind(&present)
        .bind(&listed)
        .execute(&mut **tx)
        .await?;
    // The children a record carries replace the stored ones; absent ones stay (partial modes).
    let carrying = |field: &str| -> Vec<&UserRecord> {
        users
            .iter()
            .copied()
            .filter(|u| mode == UpdateMode::Listed || u.has(field))
            .collect()
    };
    sync_emails(tx, account, &carrying("emails")).await?;
    sync_phones(tx, account, &carrying("phones")).await?;
    sync_managers(tx, account, &carrying("manager")).await?;
    Ok(())
}

/// Rows of a child table for the changed users: (user id, position) plus three values.
struct ChildRows<'a, B> {
    user_ids: Vec<&'a str>,
    positions: Vec<i32>,
    a: Vec<Option<&'a str>>,
    b: Vec<B>,
    c: Vec<Option<&'a str>>,
}

impl<'a, B> ChildRows<'a, B> {
    /// One row per element of `items(user)`, numbered from 0 in the API's order.
    fn collect<T: 'a>(
        users: &[&'a UserRecord],
        items: impl Fn(&'a UserRecord) -> &'a [T],
        values: impl Fn(&'a T) -> (Option<&'a str>, B, Option<&'a str>),
    ) -> Self {
        let mut rows = Self {
            user_ids: Vec::new(),
            positions: Vec::new(),
            a: Vec::new(),
            b: Vec::new(),
            c: Vec::new(),
        };
        for u in users {
            for (i, item) in items(u).iter().enumerate() {
                let (a, b, c) = values(item);
                rows.user_ids.push(&u.id);
                rows.positions.push(i as i32);
                rows.a.push(a);
                rows.b.push(b);
                rows.c.push(c);
            }
        }
        rows
    }
}

/// The statements of one ordered child table (emails, phones).
struct ChildTable {
    /// Deletes the positions the users no longer have: $1 account, $2 owners, $3/$4 kept keys.
    delete_stale: &'static str,
    /// Inserts rows that are new or differ: $1 account, $2..$6 the columns.
    upsert_changed: &'static str,
}

const EMAILS: ChildTable = ChildTable {
    delete_stale: "DELETE FROM user_emails
              WHERE integrated_account_id = $1 AND user_id = ANY($2::text[])
                AND (user_id, position) NOT IN (SELECT * FROM unnest($3::text[], $4::int[]))",
    upsert_changed: "INSERT INTO user_emails (integrated_account_id, user_id, position, email, is_primary, type)
         SELECT $1, n.user_id, n.position, n.email, n.is_primary, n.type
           FROM unnest($2::text[], $3::int[], $4::text[], $5::bool[], $6::text[])
                AS n(user_id, position, email, is_primary, type)
           LEFT JOIN user_emails e
                  ON e.integrated_account_id = $1 AND e.user_id = n.user_id AND e.position = n.position
          WHERE e.user_id IS NULL
             OR (e.email, e.is_primary, e.type) IS DISTINCT FROM (n.email, n.is_primary, n.type)
         ON CONFLICT (integrated_account_id, user_id, position) DO UPDATE
            SET email = excluded.email, is_primary = excluded.is_primary, type = excluded.type",
};

const PHONES: ChildTable = ChildTable {
    delete_stale: "DELETE FROM user_phones
              WHERE integrated_account_id = $1 AND user_id = ANY($2::text[])
                AND (user_id, position) NOT IN (SELECT * FROM unnest($3::text[], $4::int[]))",
    upsert_changed: "INSERT INTO user_phones (integrated_account_id, user_id, position, number, extension, type)
         SELECT $1, n.user_id, n.position, n.number, n.extension, n.type
           FROM unnest($2::text[], $3::int[], $4::text[], $5::text[], $6::text[])
                AS n(user_id, position, number, extension, type)
           LEFT JOIN user_phones p
                  ON p.integrated_account_id = $1 AND p.user_id = n.user_id AND p.position = n.position
          WHERE p.user_id IS NULL
             OR (p.number, p.extension, p.type) IS DISTINCT FROM (n.number, n.extension, n.type)
         ON CONFLICT (integrated_account_id, user_id, position) DO UPDATE
            SET number = excluded.number, extension = excluded.extension, type = excluded.type",
};

/// Brings an ordered child table in line for changed `users`: their stale positions are
/// dropped and only differing rows written, so identical rows are untouched.
async fn sync_children<'a, B>(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    table: &ChildTable,
    users: &[&'a UserRecord],
    rows: ChildRows<'a, B>,
) -> Result<(), StoreError>
where
    Vec<B>: sqlx::Encode<'a, Postgres> + sqlx::Type<Postgres> + Send + 'a,
{
    if users.is_empty() {
        return Ok(());
    }
    let owners: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
    // Lookups by key: planned per execution (see write_users).
    sqlx::query(table.delete_stale)
        .persistent(false)
        .bind(account)
        .bind(&owners)
        .bind(&rows.user_ids)
        .bind(&rows.positions)
        .execute(&mut **tx)
        .await?;
    if rows.user_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(table.upsert_changed)
        .persistent(false)
        .bind(account)
        .bind(rows.user_ids)
        .bind(rows.positions)
        .bind(rows.a)
        .bind(rows.b)
        .bind(rows.c)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn sync_emails(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    users: &[&UserRecord],
) -> Result<(), StoreError> {
    let rows = ChildRows::collect(
        users,
        |u| &u.emails,
        |e| (e.email.as_deref(), e.is_primary, e.kind.as_deref()),
    );
    sync_children(tx, account, &EMAILS, users, rows).await
}

async fn sync_phones(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    users: &[&UserRecord],
) -> Result<(), StoreError> {
    let rows = ChildRows::collect(
        users,
        |u| &u.phones,
        |p| {
            (
                p.number.as_deref(),
                p.extension.as_deref(),
                p.kind.as_deref(),
            )
        },
    );
    sync_children(tx, account, &PHONES, users, rows).await
}

async fn sync_managers(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    users: &[&UserRecord],
) -> Result<(), StoreError> {
    let without: Vec<&str> = users
        .iter()
        .filter(|u| u.manager.is_none())
        .map(|u| u.id.as_str())
        .collect();
    if !without.is_empty() {
        sqlx::query(
            "DELETE FROM user_managers WHERE integrated_account_id = $1 AND user_id = ANY($2::text[])",
        )
        .persistent(false)
        .bind(account)
        .bind(&without)
        .execute(&mut **tx)
        .await?;
    }
    let with: Vec<(&str, &crate::model::Manager)> = users
        .iter()
        .filter_map(|u| u.manager.as_ref().map(|m| (u.id.as_str(), m)))
        .collect();
    if with.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = with.iter().map(|(id, _)| *id).collect();
    let mids: Vec<Option<&str>> = with.iter().map(|(_, m)| m.id.as_deref()).collect();
    let names: Vec<Option<&str>> = with.iter().map(|(_, m)| m.name.as_deref()).collect();
    let emails: Vec<Option<&str>> = with.iter().map(|(_, m)| m.emails.as_deref()).collect();
    let sql = "INSERT INTO user_managers (integrated_account_id, user_id, manager_id, manager_name, manager_emails)
         SELECT $1, n.user_id, n.manager_id, n.manager_name, n.manager_emails::jsonb
           FROM unnest($2::text[], $3::text[], $4::text[], $5::text[])
                AS n(user_id, manager_id, manager_name, manager_emails)
           LEFT JOIN user_managers m ON m.integrated_account_id = $1 AND m.user_id = n.user_id
          WHERE m.user_id IS NULL
             OR (m.manager_id, m.manager_name, m.manager_emails)
                IS DISTINCT FROM (n.manager_id, n.manager_name, n.manager_emails::jsonb)
         ON CONFLICT (integrated_account_id, user_id) DO UPDATE
            SET manager_id = excluded.manager_id, manager_name = excluded.manager_name,
                manager_emails = excluded.manager_emails";
    sqlx::query(sql)
        .bind(account)
        .bind(&ids)
        .bind(&mids)
        .bind(&names)
        .bind(&emails)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_updates_test_the_bits_the_model_gives_each_field() {
        let sql = UPDATE_USERS.as_str();
        for (column, field, _) in FIELD_COLUMNS {
            let bit = crate::model::field_bit(field).expect("a known field");
            assert!(
                sql.contains(&format!("{column} = CASE WHEN t.p & {bit} <> 0")),
                "{column}: {sql}"
            );
        }
        // The record says which fields it carried by the same bits.
        let u = crate::model::decode_user(r#"{"id":"1","organization":null,"job_title":"x"}"#)
            .expect("a user");
        let carried = |field: &str| u.present & crate::model::field_bit(field).unwrap() != 0;
        assert!(carried("organization") && carried("job_title") && !carried("name"));
    }
}
