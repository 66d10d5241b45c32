//! A simulated Truto endpoint for tests, the demo and benchmarks. It serves
//! `GET /unified/lms/users` (and `/unified/lms/users/{id}`) over HTTP/1.1 on loopback, with
//! Bearer auth, cursor pagination honouring `limit`, Truto's error body, a deterministic
//! TalentLMS-like dataset that can be changed between runs, and injectable faults down to the
//! byte level (resets, bodies cut short, stalls) — which is why it speaks HTTP by hand instead
//! of through a server framework that would refuse to misbehave.
//!
//! Users are generated on the fly from (seed, index), so a million-user account costs no memory.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::devkit::http1::{read_request, reason, response_head, Request};

/// The token the simulator accepts unless told otherwise. Not a secret: it opens nothing real.
pub const DEMO_TOKEN: &str = "simulated-truto-token";

/// A fault served instead of (or on top of) a normal answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// An error status with Truto's error body; `retry_after` is sent verbatim when given.
    Status {
        status: u16,
        retry_after: Option<String>,
        remote: bool,
    },
    /// Close the connection without answering.
    Reset,
    /// Send the headers (with the full Content-Length) and half the body, then close.
    Truncate,
    /// Send the headers and half the body, then hold the connection for this long.
    Stall(Duration),
    /// Answer normally after this delay.
    Delay(Duration),
    /// Answer normally but hand back the request's own cursor (or the first page's) as next.
    RepeatCursor,
    /// Answer normally with `is_partial_response: true`.
    Partial,
    /// `200` with an HTML page.
    Html200,
    /// `200` with this body.
    Body(String),
    /// Answer normally, with these headers added (a vendor's odd `ratelimit-*`, say).
    Headers(Vec<(String, String)>),
    /// `200` with a chunked body that never ends: the start of a page, then filler, until the
    /// client hangs up (or 1 GiB).
    Endless,
}

impl Fault {
    pub fn status(status: u16) -> Fault {
        Fault::Status {
            status,
            retry_after: None,
            remote: false,
        }
    }
}

/// One simulated integrated account.
#[derive(Debug, Clone)]
struct Account {
    seed: u64,
    /// Users are indices 0..count; ids are index + 1.
    count: usize,
    deleted: BTreeSet<usize>,
    patches: HashMap<usize, Map<String, Value>>,
    raw: HashMap<usize, String>,
    /// Fields served only by the single-user GET, as TalentLMS's partial list does.
    partial_list_fields: Vec<String>,
}

/// Counters of what the simulator served.
#[derive(Debug, Default, Clone)]
pub struct SimStats {
    pub requests: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub by_account: HashMap<Uuid, u64>,
    pub faults_served: u64,
    /// Requests answered 429 because a budget was exceeded.
    pub rate_limited: u64,
    /// The most requests one account made within any budget window.
    pub max_account_window: usize,
    /// The most requests the token made within any budget window.
    pub max_token_window: usize,
    /// Single-user GETs (`/unified/lms/users/{id}`), faults included.
    pub user_gets: u64,
    /// Requests for `/integrated-account` (listings and single accounts).
    pub account_listings: u64,
    /// Requests sent as to a forward proxy (absolute-form target), and those of them that
    /// carried the proxy's credentials (`Proxy-Authorization`).
    pub proxied: u64,
    pub proxy_authorized: u64,
}

/// An integrated account as Truto's `GET /integrated-account` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Integrated {
    pub tenant_id: String,
    /// `active`, `connecting`, `needs_reauth`, ...
    pub status: String,
    pub is_sandbox: bool,
    pub integration: String,
    /// The Truto environment it belongs to (one token's accounts all belong to one).
    pub environment_id: String,
}

/// The environment of the simulator's accounts unless a test says otherwise.
pub const ENVIRONMENT: &str = "env-1";

impl Integrated {
    /// An active TalentLMS account of `tenant_id`, in [`ENVIRONMENT`].
    pub fn active(tenant_id: &str) -> Integrated {
        Integrated {
            tenant_id: tenant_id.into(),
            status: "active".into(),
            is_sandbox: false,
            integration: "talentlms".into(),
            environment_id: ENVIRONMENT.into(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_account: usize,
    pub per_token: usize,
    pub window: Duration,
}

struct State {
    token: String,
    /// What `GET /integrated-account` lists.
    integrated: BTreeMap<Uuid, Integrated>,
    /// Faults served to the next account listings, in order.
    listing_faults: VecDeque<Fault>,
    /// Shared with the pages being rendered (outside the lock); changed copy-on-write.
    accounts: BTreeMap<Uuid, Arc<Account>>,
    blocked: HashMap<Uuid, Fault>,
    /// Served to every request, of every route, until cleared: Truto itself down.
    outage: Option<Fault>,
    /// Faults served to the single-user GET of one user, until cleared.
    user_faults: HashMap<(Uuid, String), Fault>,
    /// Faults to serve, each to the next request for its account (any with `None`) once the
    /// count beside it of such requests has gone through.
    script: VecDeque<(Option<Uuid>, u32, Fault)>,
    random_fault_rate: f64,
    /// When set, random faults also include stalls mid-body and delays of this long.
    random_slow: Option<Duration>,
    rng: fastrand::Rng,
    latency: Duration,
    cursor_generation: u64,
    rate_limit: Option<RateLimit>,
    /// Send `ratelimit-limit`, `-remaining` and `-reset` of the account's window on answers.
    ratelimit_headers: bool,
    windows: HashMap<Uuid, VecDeque<Instant>>,
    token_window: VecDeque<Instant>,
    stats: SimStats,
}

impl State {
    /// The account to change (copied first if a page being rendered still reads it).
    fn account_mut(&mut self, account: Uuid) -> &mut Account {
        Arc::make_mut(self.accounts.get_mut(&account).expect("account"))
    }
}

/// A running simulator. Dropping it stops the server.
pub struct Simulator {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The deterministic id of the demo's n-th account.
pub fn demo_account_id(n: u32) -> Uuid {
    Uuid::from_u128(0x5157_0000_0000_4000_8000_0000_0000_0000 | n as u128)
}

impl Simulator {
    /// Binds `127.0.0.1:port` (0 = any free port) and serves until dropped.
    pub async fn start(port: u16) -> std::io::Result<Simulator> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], port))).await
    }

    /// Binds `addr` and serves until dropped.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Simulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            token: DEMO_TOKEN.into(),
            integrated: BTreeMap::new(),
            listing_faults: VecDeque::new(),
            accounts: BTreeMap::new(),
            blocked: HashMap::new(),
            outage: None,
            user_faults: HashMap::new(),
            script: VecDeque::new(),
            random_fault_rate: 0.0,
            random_slow: None,
            rng: fastrand::Rng::with_seed(7),
            latency: Duration::ZERO,
            cursor_generation: 1,
            rate_limit: None,
            ratelimit_headers: false,
            windows: HashMap::new(),
            token_window: VecDeque::new(),
            stats: SimStats::default(),
        }));
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, state.clone(), stop.clone()));
        Ok(Simulator { addr, state, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to configure as `truto.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("simulator state"))
    }

    /// Lists `id` in `GET /integrated-account` (or changes how it is listed).
    pub fn set_integrated(&self, id: Uuid, account: Integrated) {
        self.with(|s| s.integrated.insert(id, account));
    }

    /// Deletes the integrated account in "Truto": it vanishes from the listing, and its unified
    /// calls answer 404 from now on.
    pub fn remove_integrated(&self, id: Uuid) {
        self.with(|s| {
            s.integrated.remove(&id);
            s.blocked.insert(id, Fault::status(404));
        });
    }

    /// Serves `fault` to the next request of the admin API (a page of the account listing, or
    /// one account's GET): Partial marks the page partial, Delay answers it that much later.
    pub fn push_listing_fault(&self, fault: Fault) {
        self.with(|s| s.listing_faults.push_back(fault));
    }

    /// Reports each account's window on its answers, as a vendor with a 50-per-10-s limit
    /// does: `ratelimit-limit: 50;w=10`, `ratelimit-remaining`, `ratelimit-reset` (seconds
    /// until the oldest counted request leaves the window). Needs a rate limit.
    pub fn set_ratelimit_headers(&self, on: bool) {
        self.with(|s| s.ratelimit_headers = on);
    }

    pub fn set_token(&self, token: &str) {
        self.with(|s| s.token = token.into());
    }

    /// Adds (or replaces) an account of `count` generated users.
    pub fn add_account(&self, id: Uuid, count: usize, seed: u64) {
        self.with(|s| {
            s.accounts.insert(
                id,
                Arc::new(Account {
                    seed,
                    count,
                    deleted: BTreeSet::new(),
                    patches: HashMap::new(),
                    raw: HashMap::new(),
                    partial_list_fields: Vec::new(),
                }),
            )
        });
    }

    /// Merges `patch`'s top-level keys into the user (a null value sets the field to null).
    pub fn update_user(&self, account: Uuid, id: &str, patch: Value) {
        let idx = index_of(id);
        let Value::Object(patch) = patch else {
            panic!("patch must be an object")
        };
        self.with(|s| {
            let a = s.account_mut(account);
            a.patches.entry(idx).or_default().extend(patch);
        });
    }

    /// Removes a key from the user altogether (absent, not null).
    pub fn remove_field(&self, account: Uuid, id: &str, field: &str) {
        let idx = index_of(id);
        self.with(|s| {
            let a = s.account_mut(account);
            a.patches
                .entry(idx)
                .or_default()
                .insert(format!("\u{1}remove:{field}"), Value::Null);
        });
    }

    pub fn delete_user(&self, account: Uuid, id: &str) {
        self.with(|s| {
            s.account_mut(account).deleted.insert(index_of(id));
        });
    }

    pub fn restore_user(&self, account: Uuid, id: &str) {
        self.with(|s| {
            s.account_mut(account).deleted.remove(&index_of(id));
        });
    }

    /// Appends `n` new users; returns their ids.
    pub fn add_users(&self, account: Uuid, n: usize) -> Vec<String> {
        self.with(|s| {
            let a = s.account_mut(account);
            let start = a.count;
            a.count += n;
            (start..a.count).map(|i| (i + 1).to_string()).collect()
        })
    }

    /// Serves `raw` (any text) in place of the user with this id.
    pub fn set_raw_record(&self, account: Uuid, id: &str, raw: &str) {
        self.with(|s| {
            s.account_mut(account).raw.insert(index_of(id), raw.into());
        });
    }

    /// Leaves these fields out of list responses; the single-user GET still has them.
    pub fn set_partial_list_fields(&self, account: Uuid, fields: &[&str]) {
        self.with(|s| {
            s.account_mut(account).partial_list_fields =
                fields.iter().map(|f| f.to_string()).collect();
        });
    }

    /// Every request for this account gets `fault` until `unblock`.
    pub fn block(&self, account: Uuid, fault: Fault) {
        self.with(|s| s.blocked.insert(account, fault));
    }

    pub fn unblock(&self, account: Uuid) {
        self.with(|s| s.blocked.remove(&account));
    }

    /// Every request, of any account and of the account listing, gets `fault` (a status, or
    /// `Fault::Reset`) until `None`: Truto itself down, not one account.
    pub fn set_outage(&self, fault: Option<Fault>) {
        self.with(|s| s.outage = fault);
    }

    /// Every single-user GET of this user gets `fault` (`None` clears it); lists are unaffected.
    pub fn set_user_get_fault(&self, account: Uuid, id: &str, fault: Option<Fault>) {
        self.with(|s| match fault {
            Some(f) => s.user_faults.insert((account, id.to_string()), f),
            None => s.user_faults.remove(&(account, id.to_string())),
        });
    }

    /// Queues a fault for the next request (of `account`, or of any account when `None`).
    pub fn push_fault(&self, account: Option<Uuid>, fault: Fault) {
        self.push_fault_after(account, 0, fault);
    }

    /// Like [`Simulator::push_fault`], once `after` requests of `account` have been answered
    /// (a fault on a later page of a listing).
    pub fn push_fault_after(&self, account: Option<Uuid>, after: u32, fault: Fault) {
        self.with(|s| s.script.push_back((account, after, fault)));
    }

    /// Serves a random retryable fault on this share of requests (0 turns it off).
    pub fn set_random_faults(&self, rate: f64, seed: u64) {
        self.with(|s| {
            s.random_fault_rate = rate;
            s.rng = fastrand::Rng::with_seed(seed);
        });
    }

    /// Adds stalls mid-body and whole-answer delays of `hold` to the random faults (a hold
    /// beyond the client's request timeout makes them timeouts).
    pub fn set_random_slow_faults(&self, hold: Option<Duration>) {
        self.with(|s| s.random_slow = hold);
    }

    /// Every answer takes this long from its request, rendering included.
    pub fn set_latency(&self, latency: Duration) {
        self.with(|s| s.latency = latency);
    }

    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        self.with(|s| s.rate_limit = limit);
    }

    /// Makes every cursor handed out so far invalid (answered with 400), as an expired cursor.
    pub fn expire_cursors(&self) {
        self.with(|s| s.cursor_generation += 1);
    }

    pub fn stats(&self) -> SimStats {
        self.with(|s| s.stats.clone())
    }

    /// The account's users as the API would list them now (raw overrides excluded), in order.
    pub fn expected_users(&self, account: Uuid) -> Vec<Value> {
        self.with(|s| {
            let a = s.accounts.get(&account).expect("account");
            (0..a.count)
                .filter(|i| !a.deleted.contains(i) && !a.raw.contains_key(i))
                .map(|i| full_user(a, i))
                .collect()
        })
    }

    /// Ids of the users served as raw records (see [`Simulator::set_raw_record`]).
    pub fn raw_ids(&self, account: Uuid) -> Vec<String> {
        self.with(|s| {
            s.accounts
                .get(&account)
                .map(|a| a.raw.keys().map(|i| (i + 1).to_string()).collect())
                .unwrap_or_default()
        })
    }

    /// One user as the single-user GET returns it.
    pub fn expected_user(&self, account: Uuid, id: &str) -> Option<Value> {
        self.with(|s| {
            let a = s.accounts.get(&account)?;
            let i = index_of(id);
            (i < a.count && !a.deleted.contains(&i)).then(|| full_user(a, i))
        })
    }
}

fn index_of(id: &str) -> usize {
    id.parse::<usize>().expect("simulator ids are numbers") - 1
}

fn full_user(a: &Account, i: usize) -> Value {
    let mut u = generate_user(a.seed, i, a.count);
    if let Some(p) = a.patches.get(&i) {
        let obj = u.as_object_mut().expect("object");
        for (k, v) in p {
            if let Some(field) = k.strip_prefix("\u{1}remove:") {
                obj.remove(field);
            } else {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
    u
}

fn list_user(a: &Account, i: usize) -> String {
    if let Some(raw) = a.raw.get(&i) {
        return raw.clone();
    }
    let mut u = full_user(a, i);
    if !a.partial_list_fields.is_empty() {
        let obj = u.as_object_mut().expect("object");
        for f in &a.partial_list_fields {
            obj.remove(f);
        }
    }
    compact_json(&u)
}

/// `v` as compact JSON. `Value`'s `Display` gives the same text through `fmt`'s writer, which
/// cost about a sixth of the simulator's CPU per page; its CPU is the bench's, not lms-sync's.
fn compact_json(v: &Value) -> String {
    serde_json::to_string(v).expect("a Value always serializes")
}

/// splitmix64: a tiny, good-enough deterministic generator.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const FIRST: &[&str] = &[
    "Zoë",
    "José",
    "Łukasz",
    "Søren",
    "Ólafur",
    "Amélie",
    "Jürgen",
    "Siobhán",
    "Chloé",
    "Mateo",
    "Aiyana",
    "Nguyễn",
    "Dmitri",
    "Ngozi",
    "Ravi",
    "Yuki",
    "Fatima",
    "Björn",
    "Inés",
    "Oğuz",
    "李",
    "Анна",
    "Σοφία",
    "Noa",
    "Kwame",
    "Emma",
    "Liam",
    "Olivia",
    "Noah",
    "Ava",
];
const LAST: &[&str] = &[
    "Müller",
    "O'Brien",
    "García",
    "Nowak",
    "Østergaard",
    "Þórsson",
    "Dubois",
    "Kowalczyk",
    "Smith",
    "Johnson",
    "Tanaka",
    "Okafor",
    "Ivanova",
    "Papadopoulos",
    "Hernández",
    "Van der Berg",
    "雷",
    "Петрова",
    "Çelik",
    "Al-Fayed",
    "Brown",
    "Jones",
    "Miller",
    "Davis",
    "Wilson",
];
const TITLES: &[&str] = &[
    "Learning Specialist",
    "Sales Rep",
    "Engineer",
    "Support Agent",
    "Team Lead",
    "Nurse",
    "Warehouse Associate",
    "Compliance Officer",
    "Designer",
    "Analyst",
];
const LOCALES: &[&str] = &[
    "en-US", "en-GB", "de-DE", "fr-FR", "es-ES", "pl-PL", "ja-JP", "el-GR",
];
const ZONES: &[&str] = &[
    "America/New_York",
    "Europe/Berlin",
    "Europe/Athens",
    "Asia/Tokyo",
    "Europe/London",
    "America/Los_Angeles",
    "Australia/Sydney",
    "Asia/Kolkata",
];
const DEPARTMENTS: &[&str] = &[
    "Sales",
    "Engineering",
    "Support",
    "Operations",
    "HR",
    "Finance",
];

fn pick<'a>(list: &[&'a str], r: u64) -> &'a str {
    list[(r % list.len() as u64) as usize]
}

fn user_name(seed: u64, i: usize) -> (String, String) {
    let r = mix(seed ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    (pick(FIRST, r).to_string(), pick(LAST, r >> 16).to_string())
}

fn ascii_slug(s: &str) -> String {
    let slug: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if slug.is_empty() {
        "user".into()
    } else {
        slug
    }
}

fn timestamp(secs: u64) -> String {
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .expect("valid time")
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The generated user `i` of an account of `count` users: every field of the unified model, in
/// the variety a real TalentLMS account shows (absent and null fields, unicode, several emails,
/// managers on later pages and outside the account, unknown enum values).
pub fn generate_user(seed: u64, i: usize, count: usize) -> Value {
    let r = mix(seed.wrapping_mul(31) ^ (i as u64).wrapping_add(1).wrapping_mul(0x9E37_79B9));
    let r2 = mix(r);
    let id = (i + 1).to_string();
    let (first, last) = user_name(seed, i);
    let login = format!("{}.{}{}", ascii_slug(&first), ascii_slug(&last), i + 1);
    let mut u = Map::new();
    u.insert("id".into(), json!(id));
    u.insert("name".into(), json!(format!("{first} {last}")));
    u.insert("first_name".into(), json!(first));
    u.insert("last_name".into(), json!(last));
    u.insert("username".into(), json!(login));
    match r % 10 {
        0 => {} // absent
        1 => {
            u.insert("job_title".into(), Value::Null);
        }
        _ => {
            u.insert("job_title".into(), json!(pick(TITLES, r >> 8)));
        }
    }
    u.insert("locale".into(), json!(pick(LOCALES, r >> 12)));
    u.insert("timezone".into(), json!(pick(ZONES, r >> 20)));
    let role = match r2 % 40 {
        0..=29 => "learner",
        30..=34 => "instructor",
        35..=36 => "admin",
        37..=38 => "manager",
        _ => "superadmin", // not in the documented enum: must be kept as-is
    };
    u.insert("role".into(), json!(role));
    let status = match (r2 >> 8) % 50 {
        0..=39 => "active",
        40..=44 => "inactive",
        45..=46 => "invited",
        47 => "suspended",
        48 => "unknown",
        _ => "archived", // not in the documented enum
    };
    u.insert("status".into(), json!(status));
    let mut emails =
        vec![json!({"email": format!("{login}@acme.example"), "is_primary": true, "type": "work"})];
    if r.is_multiple_of(3) {
        emails.push(json!({"email": format!("{}{}@mail.example", ascii_slug(&first), i + 1), "is_primary": false, "type": "personal"}));
    }
    if r.is_multiple_of(11) {
        emails.push(json!({"email": format!("{login}+alt@acme.example"), "is_primary": false, "type": null}));
    }
    if r.is_multiple_of(17) {
        u.insert("emails".into(), json!([]));
    } else {
        u.insert("emails".into(), Value::Array(emails));
    }
    let phones = match (r >> 4) % 4 {
        0 => json!([]),
        1 => {
            json!([{"number": format!("+1 555 {:04}", i % 10_000), "extension": null, "type": "mobile"}])
        }
        2 => json!([
            {"number": format!("+49 30 {:06}", i % 1_000_000), "extension": format!("{}", i % 100), "type": "work"},
            {"number": format!("+49 170 {:06}", (i * 7) % 1_000_000), "type": "mobile"}
        ]),
        _ => Value::Null,
    };
    if !phones.is_null() || r.is_multiple_of(2) {
        u.insert("phones".into(), phones);
    }
    // Managers: mostly a user some 150 places later (a later page), sometimes someone outside
    // the account, sometimes a manager without an id, sometimes none.
    let manager = match (r2 >> 16) % 10 {
        0..=5 if i + 150 < count => {
            let m = i + 150;
            let (mf, ml) = user_name(seed, m);
            let mlogin = format!("{}.{}{}", ascii_slug(&mf), ascii_slug(&ml), m + 1);
            json!({"id": (m + 1).to_string(), "name": format!("{mf} {ml}"), "emails": [{"email": format!("{mlogin}@acme.example"), "is_primary": true}]})
        }
        6 => {
            json!({"id": format!("ext-{}", (r >> 32) % 50), "name": "External Supervisor", "emails": []})
        }
        7 => json!({"name": "Unnamed Line Manager"}),
        _ => Value::Null,
    };
    u.insert("manager".into(), manager);
    if !r.is_multiple_of(5) {
        let d = pick(DEPARTMENTS, r >> 24);
        u.insert(
            "organization".into(),
            json!({"id": format!("org-{}", ascii_slug(d)), "name": format!("ACME {d}")}),
        );
    }
    u.insert(
        "custom_fields".into(),
        json!({
            "department": pick(DEPARTMENTS, r >> 28),
            "level": (r >> 36) % 10,
            "certified": r.is_multiple_of(2),
            "tags": [pick(&["onboarding", "safety", "sales-2025", "ökonomie"], r >> 40)],
            "profile": {"bio": format!("Bio of {first} — «learner» #{}", i + 1), "skills": {"primary": pick(TITLES, r >> 44)}}
        }),
    );
    let created = 1_600_000_000 + (r % 100_000_000);
    let updated = created + (r2 % 10_000_000);
    u.insert(
        "remote_data".into(),
        json!({
            "id": id,
            "login": login,
            "first_name": first,
            "last_name": last,
            "email": format!("{login}@acme.example"),
            "user_type": pick(&["Learner-Type", "Trainer-Type", "SuperAdmin"], r >> 48),
            "timezone": "(GMT +02:00) Athens",
            "status": status,
            "level": ((r >> 52) % 5 + 1).to_string(),
            "points": ((r >> 8) % 5000).to_string(),
            "last_updated": format!("{:02}/{:02}/2025, 10:{:02}:00", (r % 28) + 1, (r >> 5) % 12 + 1, r % 60),
            "avatar": format!("https://acme.example/avatars/{}.png", i + 1),
        }),
    );
    if r.is_multiple_of(13) {
        // A field the unified model does not have (yet): schema drift, kept in `extra`.
        u.insert(
            "hire_date".into(),
            json!(format!("20{:02}-0{}-15", 10 + r % 15, 1 + r % 9)),
        );
    }
    u.insert("created_at".into(), json!(timestamp(created)));
    u.insert("updated_at".into(), json!(timestamp(updated)));
    Value::Object(u)
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = serve_conn(stream, state) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// What to send back.
enum Reply {
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Body,
        delay: Duration,
    },
    Reset,
    Truncate(Body),
    Stall(Body, Duration),
    Endless,
}

/// A reply's body: ready, or a page rendered after the state's lock is released, so that
/// requests are served in parallel as a real server would.
enum Body {
    Ready(Vec<u8>),
    Page(Box<PageJob>),
}

impl Body {
    fn into_bytes(self) -> Vec<u8> {
        match self {
            Body::Ready(b) => b,
            Body::Page(job) => job.render(),
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(b: Vec<u8>) -> Body {
        Body::Ready(b)
    }
}

async fn serve_conn(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let Some(req) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        let reply = {
            let mut s = state.lock().expect("simulator state");
            route(&mut s, &req)
        };
        match reply {
            Reply::Full {
                status,
                headers,
                body,
                delay,
            } => {
                // The latency is the server's whole answer time, its own work included (as a
                // real server's is): rendering runs inside it, not before it.
                let answer_at = tokio::time::Instant::now() + delay;
                let body = body.into_bytes();
                if !delay.is_zero() {
                    tokio::time::sleep_until(answer_at).await;
                }
                let head = response_head(status, &headers, body.len());
                if stream.write_all(head.as_bytes()).await.is_err()
                    || stream.write_all(&body).await.is_err()
                {
                    return;
                }
            }
            Reply::Reset => return,
            Reply::Truncate(body) => {
                let body = body.into_bytes();
                let head = response_head(200, &[], body.len());
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body[..body.len() / 2]).await;
                let _ = stream.flush().await;
                return;
            }
            Reply::Stall(body, hold) => {
                let body = body.into_bytes();
                let head = response_head(200, &[], body.len());
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body[..body.len() / 2]).await;
                let _ = stream.flush().await;
                // The fault being simulated: a server that stops sending mid-body.
                tokio::time::sleep(hold).await;
                return;
            }
            Reply::Endless => {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                            transfer-encoding: chunked\r\n\r\n";
                let filler = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
                let start = "{\"result\":[{\"id\":\"1\",\"name\":\"";
                if stream.write_all(head.as_bytes()).await.is_err()
                    || stream
                        .write_all(format!("{:x}\r\n{start}\r\n", start.len()).as_bytes())
                        .await
                        .is_err()
                {
                    return;
                }
                for _ in 0..(1 << 14) {
                    if stream.write_all(filler.as_bytes()).await.is_err() {
                        return;
                    }
                }
                return;
            }
        }
    }
}

fn error_reply(status: u16, message: &str, remote: bool, retry_after: Option<String>) -> Reply {
    let mut body = json!({"statusCode": status, "error": reason(status), "message": message});
    if remote {
        body["truto_is_remote_error"] = json!(true);
        body["raw_response"] = json!({"error": message});
        body["truto_error_insight"] = json!({"summary": "The vendor rejected the request"});
    }
    let headers = retry_after
        .map(|v| vec![("retry-after".to_string(), v)])
        .unwrap_or_default();
    Reply::Full {
        status,
        headers,
        body: compact_json(&body).into_bytes().into(),
        delay: Duration::ZERO,
    }
}

/// `GET /integrated-account` (every page, filtered by `integration.name`) and
/// `GET /integrated-account/{id}`, as Truto's admin API answers them.
fn integrated_reply(s: &mut State, req: &Request) -> Reply {
    s.stats.account_listings += 1;
    if let Some(refused) = unauthorized(s, req) {
        return refused;
    }
    if let Some(refused) = admit(s, None) {
        return refused;
    }
    let mut partial = false;
    let mut delay = Duration::ZERO;
    match s.listing_faults.pop_front() {
        None => {}
        Some(Fault::Partial) => partial = true,
        Some(Fault::Delay(d)) => delay = d,
        Some(Fault::Status {
            status,
            retry_after,
            remote,
        }) => return error_reply(status, &format!("simulated {status}"), remote, retry_after),
        Some(Fault::Body(b)) => {
            return Reply::Full {
                status: 200,
                headers: vec![],
                body: b.into_bytes().into(),
                delay: Duration::ZERO,
            }
        }
        Some(_) => return Reply::Reset,
    }
    let render = |id: &Uuid, a: &Integrated| {
        json!({
            "id": id.to_string(), "tenant_id": a.tenant_id, "status": a.status,
            "is_sandbox": a.is_sandbox, "environment_id": a.environment_id,
            "integration": {"id": "int-1", "name": a.integration, "category": "lms"},
            "context": {}, "created_at": "2024-09-01 10:00:00", "updated_at": "2024-09-02 11:00:00"
        })
    };
    if let Some(id) = req.path.strip_prefix("/integrated-account/") {
        return match Uuid::parse_str(id)
            .ok()
            .and_then(|id| s.integrated.get(&id).map(|a| render(&id, a)))
        {
            Some(body) => delayed(json_reply(body), delay),
            None => error_reply(404, "no such integrated account", false, None),
        };
    }
    let q = |k: &str| {
        req.query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let integration = q("integration.name");
    let limit: usize = q("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(100)
        .max(1);
    let offset: usize = q("next_cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    let all: Vec<Value> = s
        .integrated
        .iter()
        .filter(|(_, a)| integration.as_ref().is_none_or(|i| *i == a.integration))
        .map(|(id, a)| render(id, a))
        .collect();
    let page: Vec<Value> = all.iter().skip(offset).take(limit).cloned().collect();
    let next = (offset + limit < all.len()).then(|| (offset + limit).to_string());
    let mut body = json!({"result": page, "next_cursor": next, "limit": limit});
    if partial {
        body["is_partial_response"] = json!(true);
    }
    delayed(json_reply(body), delay)
}

/// `reply`, answered `delay` later.
fn delayed(reply: Reply, delay: Duration) -> Reply {
    match reply {
        Reply::Full {
            status,
            headers,
            body,
            ..
        } => Reply::Full {
            status,
            headers,
            body,
            delay,
        },
        other => other,
    }
}

fn json_reply(body: Value) -> Reply {
    Reply::Full {
        status: 200,
        headers: vec![],
        body: compact_json(&body).into_bytes().into(),
        delay: Duration::ZERO,
    }
}

fn encode_cursor(generation: u64, next: usize) -> String {
    // Opaque enough that a client cannot do arithmetic on it.
    format!("{:x}.{:x}", generation, (next as u64) ^ 0x5eed_c0de)
}

fn decode_cursor(c: &str) -> Option<(u64, usize)> {
    let (g, n) = c.split_once('.')?;
    let g = u64::from_str_radix(g, 16).ok()?;
    let n = u64::from_str_radix(n, 16).ok()? ^ 0x5eed_c0de;
    Some((g, n as usize))
}

/// Truto's 401 for a request without the token.
fn unauthorized(s: &State, req: &Request) -> Option<Reply> {
    let expected = format!("Bearer {}", s.token);
    (req.authorization.as_deref() != Some(expected.as_str()))
        .then(|| error_reply(401, "Invalid API token", false, None))
}

/// Where the simulator's counters are served (as JSON, to the token), for a bench that runs it
/// as a child process. Not counted as a request.
pub const STATS_PATH: &str = "/__simulator/stats";

fn stats_reply(s: &State, req: &Request) -> Reply {
    if let Some(refused) = unauthorized(s, req) {
        return refused;
    }
    let st = &s.stats;
    json_reply(json!({
        "requests": st.requests,
        "rate_limited": st.rate_limited,
        "max_account_window": st.max_account_window,
        "max_token_window": st.max_token_window,
        "account_listings": st.account_listings,
        "proxied": st.proxied,
        "proxy_authorized": st.proxy_authorized,
    }))
}

/// The longest request target (path and query) answered; a longer one gets 414.
pub const MAX_TARGET_LEN: usize = 8 * 1024;

fn route(s: &mut State, req: &Request) -> Reply {
    if req.path == STATS_PATH {
        return stats_reply(s, req);
    }
    s.stats.requests += 1;
    if req.absolute_form {
        s.stats.proxied += 1;
        if req.proxy_authorization.is_some() {
            s.stats.proxy_authorized += 1;
        }
    }
    let mut reply = route_inner(s, req);
    if let (
        true,
        Some(limit),
        Reply::Full {
            status: 200,
            headers,
            ..
        },
    ) = (s.ratelimit_headers, s.rate_limit, &mut reply)
    {
        let account = req
            .query
            .iter()
            .find(|(k, _)| k == "integrated_account_id")
            .and_then(|(_, v)| Uuid::parse_str(v).ok());
        if let Some(w) = account.and_then(|a| s.windows.get(&a)) {
            let now = Instant::now();
            let reset = w
                .front()
                .map(|t| limit.window.saturating_sub(now.duration_since(*t)))
                .unwrap_or(limit.window);
            headers.push((
                "ratelimit-limit".into(),
                format!("{};w={}", limit.per_account, limit.window.as_secs()),
            ));
            headers.push((
                "ratelimit-remaining".into(),
                limit.per_account.saturating_sub(w.len()).to_string(),
            ));
            headers.push((
                "ratelimit-reset".into(),
                reset.as_secs_f64().ceil().to_string(),
            ));
        }
    }
    let status = match &reply {
        Reply::Full { status, .. } => *status,
        _ => 0,
    };
    *s.stats.by_status.entry(status).or_default() += 1;
    reply
}

/// Counts a request against the token's window and, for a listing of users, its account's
/// (sliding windows, as Truto's budgets are); beyond either, refuses it with 429 and a
/// `Retry-After` of when the oldest counted request leaves the full window.
fn admit(s: &mut State, account: Option<Uuid>) -> Option<Reply> {
    let limit = s.rate_limit?;
    let now = Instant::now();
    let expire = |w: &mut VecDeque<Instant>| {
        while w
            .front()
            .is_some_and(|t| now.duration_since(*t) >= limit.window)
        {
            w.pop_front();
        }
    };
    expire(&mut s.token_window);
    let mut account_window = account.map(|a| s.windows.entry(a).or_default());
    if let Some(w) = account_window.as_deref_mut() {
        expire(w);
    }
    // The account's window first: its oldest request says when this account may go on.
    let full = match account_window.as_deref() {
        Some(w) if w.len() >= limit.per_account => w.front().copied(),
        _ if s.token_window.len() >= limit.per_token => s.token_window.front().copied(),
        _ => None,
    };
    if let Some(oldest) = full {
        s.stats.rate_limited += 1;
        let wait = limit.window.saturating_sub(now.duration_since(oldest));
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        return Some(error_reply(
            429,
            "Rate limit exceeded",
            false,
            Some(secs.to_string()),
        ));
    }
    s.token_window.push_back(now);
    s.stats.max_token_window = s.stats.max_token_window.max(s.token_window.len());
    if let Some(w) = account_window {
        w.push_back(now);
        s.stats.max_account_window = s.stats.max_account_window.max(w.len());
    }
    None
}

fn route_inner(s: &mut State, req: &Request) -> Reply {
    if req.method != "GET" {
        return error_reply(405, "only GET is supported", false, None);
    }
    if let Some(f) = &s.outage {
        s.stats.faults_served += 1;
        return match f {
            Fault::Status {
                status,
                retry_after,
                remote,
            } => error_reply(
                *status,
                &format!("simulated {status}"),
                *remote,
                retry_after.clone(),
            ),
            _ => Reply::Reset,
        };
    }
    // As a web server in front of the API does (nginx's default buffer for a request line).
    if req.target_len > MAX_TARGET_LEN {
        return error_reply(414, "request URI too long", false, None);
    }
    if req.path.starts_with("/integrated-account") {
        return integrated_reply(s, req);
    }
    let Some(rest) = req.path.split("/unified/lms/users").nth(1) else {
        return error_reply(404, "no such route", false, None);
    };
    if let Some(refused) = unauthorized(s, req) {
        return refused;
    }
    let q = |k: &str| {
        req.query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let Some(account) = q("integrated_account_id").and_then(|v| Uuid::parse_str(v).ok()) else {
        return error_reply(400, "integrated_account_id is required", false, None);
    };
    *s.stats.by_account.entry(account).or_default() += 1;
    if let Some(refused) = admit(s, Some(account)) {
        return refused;
    }
    if let Some(f) = s.blocked.get(&account).cloned() {
        s.stats.faults_served += 1;
        return fault_reply(s, f, account, req);
    }
    if let Some(id) = rest.strip_prefix('/').filter(|r| !r.is_empty()) {
        s.stats.user_gets += 1;
        if let Some(f) = s.user_faults.get(&(account, id.to_string())).cloned() {
            s.stats.faults_served += 1;
            return fault_reply(s, f, account, req);
        }
    }
    let scripted = match s
        .script
        .iter_mut()
        .position(|(a, _, _)| a.is_none() || *a == Some(account))
    {
        Some(i) if s.script[i].1 > 0 => {
            s.script[i].1 -= 1;
            None
        }
        Some(i) => s.script.remove(i).map(|(_, _, f)| f),
        None => None,
    };
    let random =
        if scripted.is_none() && s.random_fault_rate > 0.0 && s.rng.f64() < s.random_fault_rate {
            let pool = [
                Fault::Status {
                    status: 429,
                    retry_after: Some("1".into()),
                    remote: false,
                },
                Fault::Status {
                    status: 429,
                    retry_after: None,
                    remote: false,
                },
                Fault::status(500),
                Fault::status(502),
                Fault::status(504),
                Fault::Reset,
                Fault::Truncate,
            ];
            let slow = s.random_slow.map(|d| [Fault::Stall(d), Fault::Delay(d)]);
            let n = pool.len() + slow.as_ref().map_or(0, |x| x.len());
            let pick = s.rng.usize(..n);
            Some(match (pick.checked_sub(pool.len()), &slow) {
                (Some(j), Some(x)) => x[j].clone(),
                _ => pool[pick].clone(),
            })
        } else {
            None
        };
    if let Some(f) = scripted.or(random) {
        s.stats.faults_served += 1;
        return fault_reply(s, f, account, req);
    }
    normal_reply(s, account, req, rest, false, false)
}

fn fault_reply(s: &mut State, f: Fault, account: Uuid, req: &Request) -> Reply {
    let rest = req.path.split("/unified/lms/users").nth(1).unwrap_or("");
    match f {
        Fault::Status {
            status,
            retry_after,
            remote,
        } => error_reply(status, &format!("simulated {status}"), remote, retry_after),
        Fault::Reset => Reply::Reset,
        Fault::Truncate => match normal_reply(s, account, req, rest, false, false) {
            Reply::Full { body, .. } => Reply::Truncate(body),
            other => other,
        },
        Fault::Stall(hold) => match normal_reply(s, account, req, rest, false, false) {
            Reply::Full { body, .. } => Reply::Stall(body, hold),
            other => other,
        },
        Fault::Delay(d) => delayed(normal_reply(s, account, req, rest, false, false), d),
        Fault::RepeatCursor => normal_reply(s, account, req, rest, true, false),
        Fault::Partial => normal_reply(s, account, req, rest, false, true),
        Fault::Html200 => Reply::Full {
            status: 200,
            headers: vec![("content-type".into(), "text/html".into())],
            body: b"<html><body><h1>502 Bad Gateway</h1></body></html>"
                .to_vec()
                .into(),
            delay: Duration::ZERO,
        },
        Fault::Body(b) => Reply::Full {
            status: 200,
            headers: vec![],
            body: b.into_bytes().into(),
            delay: Duration::ZERO,
        },
        Fault::Endless => Reply::Endless,
        Fault::Headers(extra) => match normal_reply(s, account, req, rest, false, false) {
            Reply::Full {
                status,
                mut headers,
                body,
                delay,
            } => {
                headers.extend(extra);
                Reply::Full {
                    status,
                    headers,
                    body,
                    delay,
                }
            }
            other => other,
        },
    }
}

fn normal_reply(
    s: &mut State,
    account: Uuid,
    req: &Request,
    rest: &str,
    repeat_cursor: bool,
    partial: bool,
) -> Reply {
    let delay = s.latency;
    let generation = s.cursor_generation;
    let Some(a) = s.accounts.get(&account) else {
        return error_reply(404, "Integrated account not found", false, None);
    };
    let q = |k: &str| {
        req.query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    // Single-user GET: /unified/lms/users/{id}
    if let Some(id) = rest.strip_prefix('/').filter(|r| !r.is_empty()) {
        let found = id
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1 && *n <= a.count && !a.deleted.contains(&(n - 1)));
        return match found {
            Some(n) => Reply::Full {
                status: 200,
                headers: vec![],
                body: compact_json(&full_user(a, n - 1)).into_bytes().into(),
                delay,
            },
            None => error_reply(404, "User not found", false, None),
        };
    }
    let limit = match q("limit").map(str::parse::<usize>) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return error_reply(400, "limit must be between 1 and 1000", false, None),
    };
    let start = match q("next_cursor") {
        None => 0,
        Some(c) => match decode_cursor(c) {
            Some((g, n)) if g == generation => n,
            _ => return error_reply(400, "Invalid or expired cursor", false, None),
        },
    };
    let job = PageJob {
        account: Arc::clone(a),
        start,
        limit,
        generation,
        ignore_remote: q("truto_ignore_remote_data") == Some("true"),
        excluded: req
            .query
            .iter()
            .filter(|(k, _)| k == "truto_exclude_fields[]")
            .map(|(_, v)| v.clone())
            .collect(),
        // A repeated cursor is the one asked with (or the first page's).
        repeat: repeat_cursor.then(|| {
            q("next_cursor")
                .map(str::to_string)
                .unwrap_or_else(|| encode_cursor(generation, 0))
        }),
        partial,
    };
    Reply::Full {
        status: 200,
        headers: vec![],
        body: Body::Page(Box::new(job)),
        delay,
    }
}

/// A list page to render: everything it needs, taken while the state was locked.
struct PageJob {
    account: Arc<Account>,
    start: usize,
    limit: usize,
    generation: u64,
    ignore_remote: bool,
    excluded: Vec<String>,
    /// Send this cursor again instead of the next one (a fault).
    repeat: Option<String>,
    partial: bool,
}

impl PageJob {
    fn render(self) -> Vec<u8> {
        let a = &*self.account;
        let mut records: Vec<String> = Vec::with_capacity(self.limit);
        let mut i = self.start;
        while records.len() < self.limit && i < a.count {
            if !a.deleted.contains(&i) {
                let rec = list_user(a, i);
                if (self.ignore_remote || !self.excluded.is_empty()) && !a.raw.contains_key(&i) {
                    let mut v: Value = serde_json::from_str(&rec).expect("generated json");
                    if let Some(o) = v.as_object_mut() {
                        if self.ignore_remote {
                            o.remove("remote_data");
                        }
                        for f in &self.excluded {
                            o.remove(f);
                        }
                    }
                    records.push(compact_json(&v));
                } else {
                    records.push(rec);
                }
            }
            i += 1;
        }
        let more = (i..a.count).any(|j| !a.deleted.contains(&j));
        let next = match self.repeat {
            Some(c) => Some(c),
            None => more.then(|| encode_cursor(self.generation, i)),
        };
        let mut body =
            String::with_capacity(records.iter().map(|r| r.len() + 1).sum::<usize>() + 128);
        body.push_str("{\"result\":[");
        for (n, r) in records.iter().enumerate() {
            if n > 0 {
                body.push(',');
            }
            body.push_str(r);
        }
        body.push_str("],\"next_cursor\":");
        body.push_str(&serde_json::to_string(&next).expect("cursor json"));
        body.push_str(&format!(",\"result_count\":{}", records.len()));
        if self.partial {
            body.push_str(",\"is_partial_response\":true");
        }
        body.push('}');
        body.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_users_are_deterministic_and_varied() {
        let a = generate_user(1, 5, 1000);
        assert_eq!(a, generate_user(1, 5, 1000));
        assert_ne!(a, generate_user(2, 5, 1000));
        assert_eq!(a["id"], "6");
        let users: Vec<Value> = (0..500).map(|i| generate_user(3, i, 500)).collect();
        let with_manager = users.iter().filter(|u| u["manager"].is_object()).count();
        let without_id = users
            .iter()
            .filter(|u| u["manager"].is_object() && u["manager"].get("id").is_none())
            .count();
        let unknown_role = users.iter().filter(|u| u["role"] == "superadmin").count();
        let no_job_key = users
            .iter()
            .filter(|u| u.get("job_title").is_none())
            .count();
        assert!(with_manager > 100 && without_id > 10 && unknown_role > 0 && no_job_key > 10);
    }

    #[tokio::test]
    async fn a_full_window_refuses_with_the_wait_until_its_oldest_request_leaves() {
        let sim = Simulator::start_on("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        sim.set_rate_limit(Some(RateLimit {
            per_account: 2,
            per_token: 3,
            window: Duration::from_secs(10),
        }));
        let (a, b) = (demo_account_id(1), demo_account_id(2));
        let retry_after = |r: Option<Reply>| match r {
            None => None,
            Some(Reply::Full {
                status: 429,
                headers,
                ..
            }) => headers
                .into_iter()
                .find(|(k, _)| k == "retry-after")
                .map(|(_, v)| v),
            Some(_) => Some("not a 429".into()),
        };
        sim.with(|s| {
            assert_eq!(retry_after(admit(s, Some(a))), None);
            assert_eq!(retry_after(admit(s, Some(a))), None);
            // The account's window is full; the token's is not.
            assert_eq!(retry_after(admit(s, Some(a))).as_deref(), Some("10"));
            assert_eq!(retry_after(admit(s, Some(b))), None);
            // The token's window is full: the admin API's listing is refused too.
            assert_eq!(retry_after(admit(s, None)).as_deref(), Some("10"));
            assert_eq!(retry_after(admit(s, Some(b))).as_deref(), Some("10"));
            let st = &s.stats;
            assert_eq!(
                (st.rate_limited, st.max_account_window, st.max_token_window),
                (3, 2, 3)
            );
        });
    }

    #[test]
    fn cursors_round_trip_and_are_tied_to_their_generation() {
        let c = encode_cursor(3, 4200);
        assert_eq!(decode_cursor(&c), Some((3, 4200)));
        assert_eq!(decode_cursor("garbage"), None);
    }
}
