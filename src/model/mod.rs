//! The unified user on the wire and the normalized rows it becomes. Pure: no I/O, no SQL.
//!
//! Decoding is tolerant of absent/null fields, unknown fields and unknown enum values, and strict
//! about what PostgreSQL cannot store or what would make the mirror wrong: such a record becomes a
//! [`Rejection`] that keeps its raw JSON and the reason.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

mod fields;

use fields::top_level_fields;
pub use fields::{field_bit, ALL_PRESENT, KNOWN_FIELDS};

/// Ids longer than this are refused: they could not be indexed (btree rows max out near 2.7 kB).
pub const MAX_ID_BYTES: usize = 1024;

#[derive(Debug, Deserialize)]
struct WireUser<'a> {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    job_title: Option<String>,
    #[serde(default)]
    locale: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    emails: Option<Vec<Option<WireEmail>>>,
    #[serde(default)]
    phones: Option<Vec<Option<WirePhone>>>,
    #[serde(default)]
    manager: Option<WireManager<'a>>,
    #[serde(default)]
    organization: Option<WireOrganization>,
    #[serde(default, borrow)]
    custom_fields: Option<&'a RawValue>,
    #[serde(default, borrow)]
    remote_data: Option<&'a RawValue>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireEmail {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    is_primary: Option<bool>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WirePhone {
    #[serde(default)]
    number: Option<String>,
    #[serde(default)]
    extension: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireManager<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, borrow)]
    emails: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct WireOrganization {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// One user as it is stored: the `users` row plus its children.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub id: String,
    pub name: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub username: Option<String>,
    pub job_title: Option<String>,
    pub locale: Option<String>,
    pub timezone: Option<String>,
    pub role: Option<String>,
    pub status: Option<String>,
    pub organization_id: Option<String>,
    pub organization_name: Option<String>,
    /// JSON text, stored as jsonb.
    pub custom_fields: Option<String>,
    /// JSON text, stored as jsonb.
    pub remote_data: Option<String>,
    /// Top-level fields the model does not know, as a JSON object text (stored as jsonb).
    pub extra: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub emails: Vec<Email>,
    pub phones: Vec<Phone>,
    pub manager: Option<Manager>,
    /// Hash of everything above: equal hashes mean nothing to write.
    pub content_hash: [u8; 16],
    /// Hash of the record's exact text as listed: equal to the stored one means the record is
    /// byte for byte what was mirrored, and need not even be decoded next time.
    pub listed_hash: [u8; 16],
    /// Which top-level fields the record had (null counts as present): bit `i` stands for
    /// `KNOWN_FIELDS[i]`. Lets a partial record update only what it carries.
    pub present: u32,
}

impl UserRecord {
    /// True when the record carried the top-level field `name` (one of [`KNOWN_FIELDS`]).
    pub fn has(&self, name: &str) -> bool {
        KNOWN_FIELDS
            .iter()
            .position(|f| *f == name)
            .is_some_and(|i| self.present & (1 << i) != 0)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Email {
    pub email: Option<String>,
    pub is_primary: Option<bool>,
    pub kind: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Phone {
    pub number: Option<String>,
    pub extension: Option<String>,
    pub kind: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Manager {
    pub id: Option<String>,
    pub name: Option<String>,
    /// The manager's emails as given (JSON text), stored as jsonb.
    pub emails: Option<String>,
}

/// A record that could not be stored, with what we know of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The record's id when it had a usable one: such a user still counts as seen, so a bad
    /// record never makes its mirrored row look deleted.
    pub user_id: Option<String>,
    pub reason: String,
    pub raw: String,
}

/// A listed record not decoded (yet): its id and the hash of its text. A record whose hash
/// equals the mirrored one is unchanged, so decoding it is skipped altogether; the writer
/// decodes the others.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedRecord {
    pub id: String,
    pub listed_hash: [u8; 16],
    pub raw: String,
}

impl ListedRecord {
    pub fn decode(&self) -> Result<UserRecord, Rejection> {
        decode_user(&self.raw)
    }
}

/// The hash of a record's exact text.
pub fn listed_hash(raw: &str) -> [u8; 16] {
    xxhash_rust::xxh3::xxh3_128(raw.as_bytes()).to_le_bytes()
}

/// A page's records, split into what is stored and what is refused.
#[derive(Debug, Default)]
pub struct DecodedPage {
    /// Records decoded in full.
    pub users: Vec<UserRecord>,
    /// Records only scanned for their id (see [`scan_records`]).
    pub listed: Vec<ListedRecord>,
    pub rejected: Vec<Rejection>,
    /// Records whose id already appeared earlier in the same page (the last one wins).
    pub duplicates: u64,
}

impl DecodedPage {
    /// The ids of the page's users, decoded or not.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.users
            .iter()
            .map(|u| u.id.as_str())
            .chain(self.listed.iter().map(|l| l.id.as_str()))
    }

    /// Users on the page, decoded or not.
    pub fn len(&self) -> usize {
        self.users.len() + self.listed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a later page: a user already present is replaced by the later record (as the
    /// same id twice within one page is), and counted as a duplicate.
    pub fn append(&mut self, mut later: DecodedPage) {
        if !self.is_empty() && !later.is_empty() {
            let later_ids: std::collections::HashSet<&str> = later.ids().collect();
            let before = self.len();
            // Earlier records of ids the later page has go; the later ones are kept below.
            self.users.retain(|u| !later_ids.contains(u.id.as_str()));
            self.listed.retain(|l| !later_ids.contains(l.id.as_str()));
            self.duplicates += (before - self.len()) as u64;
        }
        self.listed.append(&mut later.listed);
        self.users.append(&mut later.users);
        self.rejected.extend(later.rejected);
        self.duplicates += later.duplicates;
    }
}

/// Reads only each record's id and hashes its text, for pages whose users are expected to be
/// mostly unchanged: decoding waits until the writer knows which ones changed. A record whose
/// id cannot be read this way (no object, no string id, an id the mirror refuses, a duplicate
/// `id` key, bad JSON) is decoded in full at once, which refuses it with the reason.
pub fn scan_records(records: &[&str]) -> DecodedPage {
    let mut page = DecodedPage::default();
    let mut index = LastWins::default();
    for raw in records {
        let Some(id) = id_of(raw) else {
            match decode_user(raw) {
                Err(rejection) => page.rejected.push(rejection),
                // Not expected (what the scan refuses, decoding refuses too); kept if so.
                Ok(user) => page.users.push(user),
            }
            continue;
        };
        let record = ListedRecord {
            id,
            listed_hash: listed_hash(raw),
            raw: raw.to_string(),
        };
        page.duplicates += index.put(&mut page.listed, record.id.clone(), record);
    }
    page
}

/// Decodes each record of a page on its own: one bad record never fails the page.
pub fn decode_records(records: &[&str]) -> DecodedPage {
    let mut page = DecodedPage::default();
    let mut index = LastWins::default();
    for raw in records {
        match decode_user(raw) {
            Ok(user) => page.duplicates += index.put(&mut page.users, user.id.clone(), user),
            Err(rejection) => page.rejected.push(rejection),
        }
    }
    page
}

/// Where each id sits in a page's list, so that a later record of the same id replaces the
/// earlier one in place.
#[derive(Default)]
struct LastWins(std::collections::HashMap<String, usize>);

impl LastWins {
    /// Puts `item` (of `id`) into `list`; returns 1 when it replaced an earlier one, else 0.
    fn put<T>(&mut self, list: &mut Vec<T>, id: String, item: T) -> u64 {
        match self.0.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => {
                list[*e.get()] = item;
                1
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(list.len());
                list.push(item);
                0
            }
        }
    }
}

/// Decodes and normalizes one record.
// Longer than our usual step: it maps the wire user field by field, in one pass over the
// record, and each field's check sits next to its mapping. Split up, the fields' rules would
// be scattered across functions that each take the whole half-built record.
pub fn decode_user(raw: &str) -> Result<UserRecord, Rejection> {
    let reject = |reason: String, user_id: Option<String>| Rejection {
        user_id,
        reason,
        raw: raw.to_string(),
    };
    let wire: WireUser = match serde_json::from_str(raw) {
        Ok(w) => w,
        Err(e) => {
            let id = id_of(raw);
            let reason = match serde_json::from_str::<serde_json::Value>(raw) {
                Ok(serde_json::Value::Object(m)) => match m.get("id") {
                    None | Some(serde_json::Value::Null) => "record has no id".to_string(),
                    Some(serde_json::Value::String(_)) => {
                        format!("record does not fit the unified user model: {e}")
                    }
                    Some(other) => format!("id is not a string (got {})", json_kind(other)),
                },
                Ok(other) => format!("record is not a JSON object (got {})", json_kind(&other)),
                Err(_) => format!("record is not valid JSON: {e}"),
            };
            return Err(reject(reason, id));
        }
    };
    let id = wire.id;
    let bad = |reason: String| reject(reason, Some(id.clone()));
    if id.is_empty() {
        return Err(reject("id is empty".into(), None));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(reject(
            format!("id is {} bytes long (at most {MAX_ID_BYTES})", id.len()),
            None,
        ));
    }
    if id.contains('\0') {
        return Err(reject("id contains a NUL character".into(), None));
    }
    let created_at =
        parse_time(wire.created_at.as_deref()).map_err(|e| bad(format!("created_at: {e}")))?;
    let updated_at =
        parse_time(wire.updated_at.as_deref()).map_err(|e| bad(format!("updated_at: {e}")))?;
    let custom_fields =
        json_text(wire.custom_fields).map_err(|e| bad(format!("custom_fields: {e}")))?;
    let remote_data = json_text(wire.remote_data).map_err(|e| bad(format!("remote_data: {e}")))?;
    let emails = wire
        .emails
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .map(|e| Email {
            email: e.email,
            is_primary: e.is_primary,
            kind: e.kind,
        })
        .collect();
    let phones = wire
        .phones
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .map(|p| Phone {
            number: p.number,
            extension: p.extension,
            kind: p.kind,
        })
        .collect();
    let manager = match wire.manager {
        None => None,
        Some(m) => {
            let emails = json_text(m.emails).map_err(|e| bad(format!("manager.emails: {e}")))?;
            if m.id.is_none() && m.name.is_none() && emails.is_none() {
                None
            } else {
                Some(Manager {
                    id: m.id,
                    name: m.name,
                    emails,
                })
            }
        }
    };
    let (organization_id, organization_name) = match wire.organization {
        Some(o) => (o.id, o.name),
        None => (None, None),
    };
    let (present, extra) =
        top_level_fields(raw).map_err(|e| bad(format!("unknown fields: {e}")))?;
    let mut user = UserRecord {
        id: id.clone(),
        name: wire.name,
        first_name: wire.first_name,
        last_name: wire.last_name,
        username: wire.username,
        job_title: wire.job_title,
        locale: wire.locale,
        timezone: wire.timezone,
        role: wire.role,
        status: wire.status,
        organization_id,
        organization_name,
        custom_fields,
        remote_data,
        extra,
        created_at,
        updated_at,
        emails,
        phones,
        manager,
        content_hash: [0; 16],
        listed_hash: listed_hash(raw),
        present,
    };
    if let Some(field) = first_nul_field(&user) {
        return Err(bad(format!(
            "{field} contains a NUL character, which PostgreSQL text cannot store"
        )));
    }
    user.content_hash = content_hash(&user);
    Ok(user)
}

/// The documented values of `role` and `status`; others are kept, and counted.
pub const KNOWN_ROLES: &[&str] = &["learner", "instructor", "admin", "manager", "other"];
pub const KNOWN_STATUSES: &[&str] = &[
    "active",
    "inactive",
    "invited",
    "suspended",
    "deleted",
    "unknown",
];

impl UserRecord {
    /// (field, value) of each enum value outside the documented lists.
    pub fn unknown_enum_values(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let role = self
            .role
            .as_deref()
            .filter(|r| !KNOWN_ROLES.contains(r))
            .map(|r| ("role", r));
        let status = self
            .status
            .as_deref()
            .filter(|s| !KNOWN_STATUSES.contains(s))
            .map(|s| ("status", s));
        role.into_iter().chain(status)
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The id of a record that failed to decode, when it has a usable string id.
fn id_of(raw: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: String,
    }
    serde_json::from_str::<IdOnly>(raw)
        .ok()
        .map(|r| r.id)
        .filter(|id| !id.is_empty() && id.len() <= MAX_ID_BYTES && !id.contains('\0'))
}

/// JSON text for a jsonb column. PostgreSQL's jsonb refuses `\u0000` and unpaired surrogates,
/// which JSON allows, so texts with escapes are checked before they can fail a whole page.
pub(crate) fn json_text(raw: Option<&RawValue>) -> Result<Option<String>, String> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    let shape = json_shape(text);
    if shape.depth > MAX_JSON_DEPTH {
        return Err(format!(
            "nested {} levels deep (at most {MAX_JSON_DEPTH}: PostgreSQL's jsonb parser would run out of stack)",
            shape.depth
        ));
    }
    if shape.widest_number > MAX_JSON_NUMBER {
        return Err(format!(
            "holds a number of magnitude 1e{} or {} digits, beyond what PostgreSQL's jsonb (numeric) can store",
            shape.widest_number, shape.widest_number
        ));
    }
    if text.contains("\\u") {
        // serde_json refuses unpaired surrogates while building a Value.
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("invalid JSON text ({e})"))?;
        if has_nul(&value) {
            return Err(
                "contains a NUL character (\\u0000), which PostgreSQL jsonb cannot store".into(),
            );
        }
    }
    Ok(Some(text.to_string()))
}

/// Deeper JSON is refused: PostgreSQL parses jsonb recursively within a limited stack.
pub const MAX_JSON_DEPTH: usize = 512;
/// Numbers wider than this (digits, or the size of an exponent) are refused: jsonb stores
/// numbers as `numeric`, which overflows at 131,072 digits before the point and 16,383 after.
pub const MAX_JSON_NUMBER: u64 = 16_000;

/// What of a JSON text's shape PostgreSQL cares about, measured without recursion.
#[derive(Debug, Default, PartialEq)]
struct JsonShape {
    /// The deepest nesting of arrays and objects.
    depth: usize,
    /// The largest digit count or absolute exponent of any number.
    widest_number: u64,
}

fn json_shape(text: &str) -> JsonShape {
    let mut shape = JsonShape::default();
    let b = text.as_bytes();
    let mut depth = 0usize;
    // Inside a number: digits so far, and the exponent so far once past `e`.
    let (mut digits, mut exponent, mut in_exponent) = (0u64, 0u64, false);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        i += 1;
        match c {
            b'0'..=b'9' if in_exponent => {
                exponent = exponent
                    .saturating_mul(10)
                    .saturating_add(u64::from(c - b'0'));
            }
            b'0'..=b'9' => digits += 1,
            b'e' | b'E' if digits > 0 => in_exponent = true,
            b'.' | b'-' | b'+' => {}
            _ => {
                shape.widest_number = shape.widest_number.max(digits).max(exponent);
                (digits, exponent, in_exponent) = (0, 0, false);
                match c {
                    b'"' => i = string_end(b, i).unwrap_or(b.len()),
                    b'[' | b'{' => {
                        depth += 1;
                        shape.depth = shape.depth.max(depth);
                    }
                    b']' | b'}' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            }
        }
    }
    shape.widest_number = shape.widest_number.max(digits).max(exponent);
    shape
}

/// Where the JSON string whose body starts at `b[from]` ends: the index after its closing
/// quote (`None` when the text ends first). Jumps from quote to quote, escapes skipped: most
/// of a record is long strings, so this is the scans' hot loop.
fn string_end(b: &[u8], mut from: usize) -> Option<usize> {
    while from < b.len() {
        from += memchr::memchr2(b'\\', b'"', &b[from..])?;
        match b[from] {
            b'\\' => from += 2,
            _ => return Some(from + 1),
        }
    }
    None
}

fn has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(has_nul),
        serde_json::Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn first_nul_field(u: &UserRecord) -> Option<&'static str> {
    let fields: [(&'static str, &Option<String>); 11] = [
        ("name", &u.name),
        ("first_name", &u.first_name),
        ("last_name", &u.last_name),
        ("username", &u.username),
        ("job_title", &u.job_title),
        ("locale", &u.locale),
        ("timezone", &u.timezone),
        ("role", &u.role),
        ("status", &u.status),
        ("organization.id", &u.organization_id),
        ("organization.name", &u.organization_name),
    ];
    let nul = |s: &Option<String>| s.as_deref().is_some_and(|s| s.contains('\0'));
    if let Some((name, _)) = fields.iter().find(|(_, v)| nul(v)) {
        return Some(name);
    }
    if u.emails.iter().any(|e| nul(&e.email) || nul(&e.kind)) {
        return Some("emails");
    }
    if u.phones
        .iter()
        .any(|p| nul(&p.number) || nul(&p.extension) || nul(&p.kind))
    {
        return Some("phones");
    }
    if let Some(m) = &u.manager {
        if nul(&m.id) || nul(&m.name) {
            return Some("manager");
        }
    }
    None
}

/// Parses the timestamps vendors send: RFC 3339, and the common variants without a zone (taken
/// as UTC) or without a time. Empty or absent is `None`; anything else is an error.
pub fn parse_time(s: Option<&str>) -> Result<Option<DateTime<Utc>>, String> {
    let Some(s) = s.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(Some(t.and_utc()));
        }
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f %#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Ok(Some(t.with_timezone(&Utc)));
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).map(|t| t.and_utc()));
    }
    let shown: String = s.chars().take(64).collect();
    Err(format!("`{shown}` is not a timestamp (expected RFC 3339)"))
}

/// A stable 128-bit hash of everything stored for a user. Each field is written with a tag and
/// a length so that no two different users encode the same bytes.
pub fn content_hash(u: &UserRecord) -> [u8; 16] {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    // Bump when the mapping changes, so that every row is rewritten once with the new mapping.
    h.update(b"lms-sync/user/v1");
    let mut put = |tag: u8, v: Option<&str>| {
        h.update(&[tag]);
        match v {
            None => h.update(&[0]),
            Some(s) => {
                h.update(&[1]);
                h.update(&(s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
        }
    };
    put(1, Some(&u.id));
    put(2, u.name.as_deref());
    put(3, u.first_name.as_deref());
    put(4, u.last_name.as_deref());
    put(5, u.username.as_deref());
    put(6, u.job_title.as_deref());
    put(7, u.locale.as_deref());
    put(8, u.timezone.as_deref());
    put(9, u.role.as_deref());
    put(10, u.status.as_deref());
    put(11, u.organization_id.as_deref());
    put(12, u.organization_name.as_deref());
    put(13, u.custom_fields.as_deref());
    put(14, u.remote_data.as_deref());
    put(17, u.extra.as_deref());
    let created = u.created_at.map(|t| t.to_rfc3339());
    let updated = u.updated_at.map(|t| t.to_rfc3339());
    put(15, created.as_deref());
    put(16, updated.as_deref());
    for e in &u.emails {
        put(20, e.email.as_deref());
        put(21, e.is_primary.map(|b| if b { "t" } else { "f" }));
        put(22, e.kind.as_deref());
    }
    for p in &u.phones {
        put(30, p.number.as_deref());
        put(31, p.extension.as_deref());
        put(32, p.kind.as_deref());
    }
    if let Some(m) = &u.manager {
        put(40, m.id.as_deref());
        put(41, m.name.as_deref());
        put(42, m.emails.as_deref());
    }
    h.digest128().to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::fields::only_known_keys;
    use super::*;

    fn full() -> &'static str {
        r#"{"id":"42","name":"Zoë Ölafsdóttir","first_name":"Zoë","last_name":"Ölafsdóttir",
            "username":"zoe","job_title":"Trainer","locale":"is-IS","timezone":"Atlantic/Reykjavik",
            "role":"instructor","status":"active",
            "emails":[{"email":"zoe@example.com","is_primary":true,"type":"work"},null,{"email":"z@home.is","is_primary":false}],
            "phones":[{"number":"+354 555 1234","extension":"12","type":"mobile"}],
            "manager":{"id":"7","name":"Boss","emails":[{"email":"boss@example.com"}]},
            "organization":{"id":"o1","name":"Org"},
            "custom_fields":{"team":{"name":"A"}},"remote_data":{"login":"zoe"},
            "created_at":"2024-01-02T03:04:05Z","updated_at":"2024-02-03T04:05:06.789+01:00",
            "unexpected":"fine"}"#
    }

    #[test]
    fn a_full_record_maps_every_field() {
        let u = decode_user(full()).unwrap();
        assert_eq!(u.id, "42");
        assert_eq!(u.name.as_deref(), Some("Zoë Ölafsdóttir"));
        assert_eq!(u.role.as_deref(), Some("instructor"));
        assert_eq!(u.emails.len(), 2, "null elements are skipped");
        assert_eq!(u.emails[1].email.as_deref(), Some("z@home.is"));
        assert_eq!(u.phones[0].extension.as_deref(), Some("12"));
        let m = u.manager.as_ref().unwrap();
        assert_eq!(m.id.as_deref(), Some("7"));
        assert_eq!(
            m.emails.as_deref(),
            Some(r#"[{"email":"boss@example.com"}]"#)
        );
        assert_eq!(u.organization_name.as_deref(), Some("Org"));
        assert_eq!(u.custom_fields.as_deref(), Some(r#"{"team":{"name":"A"}}"#));
        assert_eq!(
            u.updated_at.unwrap().to_rfc3339(),
            "2024-02-03T03:05:06.789+00:00"
        );
    }

    #[test]
    fn a_minimal_record_is_fine() {
        let u =
            decode_user(r#"{"id":"1","emails":null,"manager":null,"custom_fields":null}"#).unwrap();
        assert!(u.name.is_none() && u.emails.is_empty() && u.manager.is_none());
        assert!(u.custom_fields.is_none());
    }

    #[test]
    fn unknown_enum_values_are_kept_as_text_and_told() {
        let u = decode_user(r#"{"id":"1","role":"superhero","status":"on_leave"}"#).unwrap();
        assert_eq!(u.role.as_deref(), Some("superhero"));
        assert_eq!(u.status.as_deref(), Some("on_leave"));
        let unknown: Vec<_> = u.unknown_enum_values().collect();
        assert_eq!(unknown, vec![("role", "superhero"), ("status", "on_leave")]);
        let known = decode_user(r#"{"id":"1","role":"admin","status":"active"}"#).unwrap();
        assert_eq!(known.unknown_enum_values().count(), 0);
    }

    #[test]
    fn the_known_keys_scan_agrees_with_a_parser() {
        let bits = |names: &[&str]| names.iter().map(|n| field_bit(n).unwrap()).sum::<u32>();
        assert_eq!(
            only_known_keys(r#"{"id":"1","name":"a,}\"x","emails":[{"e":"}"}],"manager":null}"#),
            Some(bits(&["id", "name", "emails", "manager"]))
        );
        assert_eq!(
            only_known_keys(r#" { "id" : "1" , "custom_fields" : {"zzz": [1, {"q": "]"}]} } "#),
            Some(bits(&["id", "custom_fields"]))
        );
        assert_eq!(only_known_keys(r#"{"id":"1","hire_date":"x"}"#), None);
        assert_eq!(
            only_known_keys(r#"{"id":"1","na\u006de":"x"}"#),
            None,
            "escaped keys take the careful path"
        );
        assert_eq!(only_known_keys(r#"[1]"#), None);
        assert_eq!(only_known_keys("{}"), Some(0));
    }

    #[test]
    fn a_record_says_which_fields_it_carried() {
        let u = decode_user(r#"{"id":"1","name":null,"emails":[],"hire_date":"x"}"#).unwrap();
        assert!(u.has("id") && u.has("name") && u.has("emails"));
        assert!(!u.has("job_title") && !u.has("manager") && !u.has("phones"));
        let full = decode_user(full()).unwrap();
        assert_eq!(full.present, ALL_PRESENT);
    }

    #[test]
    fn unknown_top_level_fields_are_kept_in_extra() {
        let u = decode_user(
            r#"{"id":"1","name":"x","hire_date":"2020-01-01","badges":[1,{"a":null}]}"#,
        )
        .unwrap();
        assert_eq!(
            u.extra.as_deref(),
            Some(r#"{"badges":[1,{"a":null}],"hire_date":"2020-01-01"}"#)
        );
        assert!(decode_user(r#"{"id":"1","name":"x"}"#)
            .unwrap()
            .extra
            .is_none());
        let mut other = u.clone();
        other.extra = None;
        assert_ne!(content_hash(&u), content_hash(&other));
    }

    #[test]
    fn records_without_a_usable_id_are_rejected_with_a_reason() {
        let r = decode_user(r#"{"name":"x"}"#).unwrap_err();
        assert_eq!(r.reason, "record has no id");
        assert!(r.user_id.is_none());
        let r = decode_user(r#"{"id":5}"#).unwrap_err();
        assert!(r.reason.contains("id is not a string"), "{}", r.reason);
        let r = decode_user(r#"[1]"#).unwrap_err();
        assert!(r.reason.contains("not a JSON object"), "{}", r.reason);
        let r = decode_user(r#"{"id":""}"#).unwrap_err();
        assert_eq!(r.reason, "id is empty");
    }

    #[test]
    fn wrong_types_reject_the_record_but_keep_its_id() {
        let r = decode_user(r#"{"id":"9","emails":"nope"}"#).unwrap_err();
        assert_eq!(r.user_id.as_deref(), Some("9"));
        assert!(r.raw.contains("nope"));
    }

    #[test]
    fn text_postgres_cannot_store_is_rejected() {
        let r = decode_user(r#"{"id":"9","name":"a\u0000b"}"#).unwrap_err();
        assert!(r.reason.contains("name contains a NUL"), "{}", r.reason);
        let r = decode_user(r#"{"id":"9","custom_fields":{"k":"\u0000"}}"#).unwrap_err();
        assert!(r.reason.contains("custom_fields"), "{}", r.reason);
        let ok = decode_user(r#"{"id":"9","custom_fields":{"k":"\u00e9\ud83d\ude00"}}"#);
        assert!(ok.is_ok());
    }

    #[test]
    fn json_nested_deeper_than_postgres_can_parse_is_refused() {
        let deep = |n: usize| {
            format!(
                r#"{{"id":"1","custom_fields":{{"a":{}1{}}}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(decode_user(&deep(300)).is_ok());
        let r = decode_user(&deep(600)).unwrap_err();
        assert!(
            r.reason.starts_with("custom_fields: nested 601 levels"),
            "{}",
            r.reason
        );
        assert_eq!(r.user_id.as_deref(), Some("1"));
        assert_eq!(json_shape(r#"{"a":"[[[[","b":[{}]}"#).depth, 3);
        // Escaped quotes and backslashes stay inside their string; a text cut off inside one
        // (after an escape) ends the scan without reading past it.
        assert_eq!(json_shape(r#"{"a":"x\"[[\\","b":[[1]]}"#).depth, 3);
        assert_eq!(json_shape(r#"["\\"]"#).depth, 1);
        assert_eq!(json_shape(r#"[["ab\"#).depth, 2);
        assert_eq!(json_shape(r#"["\"#).depth, 1);
    }

    #[test]
    fn numbers_jsonb_cannot_store_are_refused() {
        let with = |n: &str| format!(r#"{{"id":"1","custom_fields":{{"x":{n},"s":"1e999999"}}}}"#);
        assert!(decode_user(&with("1.5e300")).is_ok());
        assert!(decode_user(&with("-12345678901234567890")).is_ok());
        let r = decode_user(&with("1e999999")).unwrap_err();
        assert!(r.reason.contains("numeric"), "{}", r.reason);
        assert!(decode_user(&with("1E-20000")).is_err());
        assert!(decode_user(&with(&"9".repeat(20_000))).is_err());
        assert_eq!(json_shape(r#"[1e5, 22, "1e999"]"#).widest_number, 5);
    }

    #[test]
    fn timestamps_in_common_variants_parse_and_garbage_is_refused() {
        let t = |s| parse_time(Some(s)).unwrap().unwrap().to_rfc3339();
        assert_eq!(t("2024-01-02T03:04:05Z"), "2024-01-02T03:04:05+00:00");
        assert_eq!(t("2024-01-02 03:04:05"), "2024-01-02T03:04:05+00:00");
        assert_eq!(t("2024-01-02"), "2024-01-02T00:00:00+00:00");
        assert_eq!(parse_time(Some("")).unwrap(), None);
        assert!(parse_time(Some("yesterday")).is_err());
        let r = decode_user(r#"{"id":"3","created_at":"31/12/2024"}"#).unwrap_err();
        assert!(r.reason.starts_with("created_at:"), "{}", r.reason);
    }

    #[test]
    fn the_same_id_twice_in_a_page_keeps_the_last() {
        let a = RawValue::from_string(r#"{"id":"1","name":"first"}"#.into()).unwrap();
        let b = RawValue::from_string(r#"{"id":"1","name":"second"}"#.into()).unwrap();
        let c = RawValue::from_string(r#"{"id":"2"}"#.into()).unwrap();
        let page = decode_records(&[a.get(), c.get(), b.get()]);
        assert_eq!(page.users.len(), 2);
        assert_eq!(page.duplicates, 1);
        assert_eq!(page.users[0].name.as_deref(), Some("second"));
    }

    #[test]
    fn scanning_reads_ids_and_hashes_and_refuses_what_decoding_refuses() {
        let good = r#"{"id":"1","name":"a"}"#;
        let esc = r#"{"name":"b","id":"\u0032"}"#;
        let page = scan_records(&[
            good,
            esc,
            r#"{"id":5}"#,
            r#"{"id":"3","id":"4"}"#,
            "nope",
            r#"{"id":"1","name":"later"}"#,
        ]);
        let ids: Vec<&str> = page.ids().collect();
        assert_eq!(ids, ["1", "2"]);
        assert_eq!(page.duplicates, 1);
        assert_eq!(page.listed[0].raw, r#"{"id":"1","name":"later"}"#);
        assert_eq!(page.rejected.len(), 3);
        assert!(page.users.is_empty());
        // The hash is the decoded record's listed hash: a later full decode agrees.
        let u = page.listed[1].decode().unwrap();
        assert_eq!(u.id, "2");
        assert_eq!(u.listed_hash, page.listed[1].listed_hash);
        assert_ne!(listed_hash(good), listed_hash(r#"{"id":"1","name":"a" }"#));
    }

    #[test]
    fn appending_mixes_decoded_and_scanned_pages_keeping_the_later_record() {
        let mut first = decode_records(&[r#"{"id":"1"}"#, r#"{"id":"2"}"#]);
        first.append(scan_records(&[r#"{"id":"2","name":"x"}"#, r#"{"id":"3"}"#]));
        first.append(decode_records(&[r#"{"id":"3","name":"y"}"#]));
        let mut ids: Vec<&str> = first.ids().collect();
        ids.sort();
        assert_eq!(ids, ["1", "2", "3"]);
        assert_eq!(first.duplicates, 2);
        assert_eq!(first.listed.len(), 1);
        assert_eq!(first.listed[0].raw, r#"{"id":"2","name":"x"}"#);
        assert_eq!(
            first
                .users
                .iter()
                .find(|u| u.id == "3")
                .unwrap()
                .name
                .as_deref(),
            Some("y")
        );
    }

    #[test]
    fn appending_pages_keeps_the_later_record_of_an_id() {
        let raw = |s: &str| RawValue::from_string(s.into()).unwrap();
        let (a, b, c) = (
            raw(r#"{"id":"1","name":"old"}"#),
            raw(r#"{"id":"2"}"#),
            raw(r#"{"id":"1","name":"new"}"#),
        );
        let mut first = decode_records(&[a.get(), b.get()]);
        first.append(decode_records(&[c.get()]));
        assert_eq!(first.users.len(), 2);
        assert_eq!(first.duplicates, 1);
        let one = first.users.iter().find(|u| u.id == "1").unwrap();
        assert_eq!(one.name.as_deref(), Some("new"));
    }

    #[test]
    fn content_hash_changes_with_any_field_and_only_then() {
        let a = decode_user(full()).unwrap();
        let b = decode_user(full()).unwrap();
        assert_eq!(a.content_hash, b.content_hash);
        let mut c = a.clone();
        c.emails[0].is_primary = Some(false);
        assert_ne!(content_hash(&a), content_hash(&c));
        let mut d = a.clone();
        d.name = None;
        d.first_name = a.name.clone();
        assert_ne!(
            content_hash(&a),
            content_hash(&d),
            "fields do not run into each other"
        );
    }
}
