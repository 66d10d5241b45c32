//! The field table: the top-level fields of the unified user that the model maps, in a fixed
//! order. A field's position gives its bit in [`super::UserRecord::present`]; every other part
//! that needs a field's bit (the store's partial UPDATE) derives it from here, so reordering
//! the table cannot silently break a write.

use serde_json::value::RawValue;

use super::json_text;

/// The top-level fields of the unified user that the model maps.
pub const KNOWN_FIELDS: &[&str] = &[
    "id",
    "name",
    "first_name",
    "last_name",
    "username",
    "job_title",
    "locale",
    "timezone",
    "role",
    "status",
    "emails",
    "phones",
    "manager",
    "organization",
    "custom_fields",
    "remote_data",
    "created_at",
    "updated_at",
];

/// The bit of a known field in [`super::UserRecord::present`].
pub fn field_bit(key: &str) -> Option<u32> {
    KNOWN_FIELDS.iter().position(|f| *f == key).map(|i| 1 << i)
}

/// When every top-level key of the object `raw` is a known field, which ones it has: a byte
/// scan with no allocation, so that the common case costs next to nothing. Anything unusual
/// (unknown or escaped keys, odd structure) answers `None` and takes the careful path.
pub(super) fn only_known_keys(raw: &str) -> Option<u32> {
    let b = raw.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    // From an opening quote at `i` to the index after its closing one.
    let string_end = |i: usize| super::string_end(b, i + 1);
    let mut mask = 0u32;
    skip_ws(&mut i);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        skip_ws(&mut i);
        match b.get(i) {
            Some(b'}') => return Some(mask),
            Some(b',') => {
                i += 1;
                continue;
            }
            Some(b'"') => {}
            _ => return None,
        }
        let end = string_end(i)?;
        let key = &raw[i + 1..end - 1];
        if key.contains('\\') {
            return None;
        }
        mask |= field_bit(key)?;
        i = end;
        skip_ws(&mut i);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i += 1;
        skip_ws(&mut i);
        // Skip the value: strings, and brackets counted (strings inside them skipped too).
        let mut depth = 0usize;
        loop {
            match b.get(i) {
                None => return None,
                Some(b'"') => match string_end(i) {
                    Some(e) => i = e,
                    None => return None,
                },
                Some(b'{' | b'[') => {
                    depth += 1;
                    i += 1;
                }
                Some(b'}' | b']') if depth > 0 => {
                    depth -= 1;
                    i += 1;
                }
                Some(b',' | b'}') if depth == 0 => break,
                Some(_) => i += 1,
            }
            if depth == 0 && matches!(b.get(i), Some(b',' | b'}')) {
                break;
            }
        }
    }
}

/// Which known fields the record has, and its unknown top-level fields as one JSON object
/// text (`None` when it has none).
pub(super) fn top_level_fields(raw: &str) -> Result<(u32, Option<String>), String> {
    if let Some(mask) = only_known_keys(raw) {
        return Ok((mask, None));
    }
    // Keys are read as given (escaped keys included) without building the values.
    let all = serde_json::from_str::<std::collections::BTreeMap<String, &RawValue>>(raw)
        .map_err(|e| e.to_string())?;
    let mask = all
        .keys()
        .filter_map(|k| field_bit(k))
        .fold(0, |m, b| m | b);
    let fields: Vec<(String, &RawValue)> = all
        .into_iter()
        .filter(|(k, _)| field_bit(k).is_none())
        .collect();
    if fields.is_empty() {
        return Ok((mask, None));
    }
    let mut out = String::from("{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(k).map_err(|e| e.to_string())?);
        out.push(':');
        out.push_str(v.get());
    }
    out.push('}');
    let raw = RawValue::from_string(out).map_err(|e| e.to_string())?;
    Ok((mask, json_text(Some(&raw))?))
}

/// Every known field present.
pub const ALL_PRESENT: u32 = (1 << KNOWN_FIELDS.len() as u32) - 1;
