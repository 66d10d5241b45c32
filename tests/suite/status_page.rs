//! The status page as a person sees it: a real headless Chromium loads `GET /` from a running
//! service, every account's label and the request budget's holder are on the rendered page, and
//! the screenshot the README shows (`docs/status-page.png`) is taken from it; a search narrows
//! the page to the accounts it names, and a query the page does not understand is refused;
//! each account's label leads to its own page, with its runs.

use std::time::Duration;

use crate::helpers::service::*;
use crate::helpers::*;
use lms_sync::config::AccountSettings;
use lms_sync::devkit::simulator::Fault;

/// Runs headless Chromium with `args` and `url`, bounded in time.
async fn chromium(args: &[String], url: &str) -> std::process::Output {
    ensure_tool("chromium", "chromium");
    let run = tokio::process::Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
        ])
        .args(args)
        .arg(url)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("chromium answers within 90 s")
        .expect("chromium is installed (Debian package `chromium`)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_every_account_in_a_real_browser_and_searches_them() {
    let ids: Vec<_> = (1..=4).map(account_id).collect();
    let env = Env::new(&[(ids[0], 300), (ids[1], 120), (ids[2], 80), (ids[3], 40)]).await;
    env.sim.block(
        ids[2],
        Fault::Status {
            status: 401,
            retry_after: None,
            remote: true,
        },
    );
    let mut s = daemon_settings(&env, "6h");
    let labels = [
        "Acme Academy",
        "Beta Learning & Co",
        "Gamma <Institute>",
        "Delta Training",
    ];
    s.accounts = ids
        .iter()
        .zip(labels)
        .map(|(id, label)| {
            let mut a = AccountSettings::new(*id);
            a.label = Some(label.to_string());
            a
        })
        .collect();
    let (daemon, stop, mut rx, base) = serve_daemon(s).await;
    let url = format!("{base}/");
    let mut finished = 0;
    while finished < 4 {
        if let Event::Finished(..) = next(&mut rx).await {
            finished += 1;
        }
    }

    let dom = chromium(&["--dump-dom".to_string()], &url).await;
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png");
    let _ = std::fs::remove_file(&shot);
    let taken = chromium(
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,720".to_string(),
        ],
        &url,
    )
    .await;
    // A search, as the page's form sends it: the tenant-less label, in another case.
    let found = chromium(&["--dump-dom".to_string()], &format!("{url}?q=+gamma+")).await;
    let found = String::from_utf8_lossy(&found.stdout).into_owned();
    let bad = reqwest::get(format!("{url}?all=banana")).await.unwrap();
    let bad = (bad.status().as_u16(), bad.text().await.unwrap());
    // A pill's link: the accounts of that reason alone; an unknown reason is refused.
    let only = reqwest::get(format!("{url}?why=unsyncable")).await.unwrap();
    let only = (only.status().as_u16(), only.text().await.unwrap());
    let asleep = reqwest::get(format!("{url}?why=asleep")).await.unwrap();
    let asleep = (asleep.status().as_u16(), asleep.text().await.unwrap());
    // The failing account's own page, through its link on the status page.
    let link = format!("href=\"accounts/{}\"", ids[2]);
    let account = chromium(
        &["--dump-dom".to_string()],
        &format!("{url}accounts/{}", ids[2]),
    )
    .await;
    let account = String::from_utf8_lossy(&account.stdout).into_owned();
    let mut refused = Vec::new();
    for path in [
        "accounts/not-a-uuid".to_string(),
        format!("accounts/{}", account_id(99)),
    ] {
        let r = reqwest::get(format!("{url}{path}")).await.unwrap();
        refused.push((r.status().as_u16(), r.text().await.unwrap()));
    }
    stop.cancel();
    daemon.await.unwrap().unwrap();

    assert!(found.contains("Gamma &lt;Institute&gt;"), "{found}");
    for other in ["Acme", "Beta", "Delta"] {
        assert!(!found.contains(other), "{other} does not match:\n{found}");
    }
    assert!(found.contains("1 of 4 accounts match “gamma”."), "{found}");
    assert!(
        found.contains("4 accounts ·"),
        "the header speaks of the fleet"
    );
    assert!(dom.contains(&link), "{dom}");
    assert!(
        account.contains("<h1>Gamma &lt;Institute&gt;</h1>"),
        "{account}"
    );
    assert!(account.contains("needs_reauth"), "{account}");
    assert!(
        account.contains("<td data-k=\"Outcome\" class=\"bad\">failed</td>"),
        "{account}"
    );
    assert!(
        account.contains("re-authorize the integration in Truto"),
        "{account}"
    );
    assert!(account.contains("← all accounts"), "{account}");
    assert_eq!(refused[0].0, 400, "{}", refused[0].1);
    assert!(
        refused[0].1.contains("not an integrated account id"),
        "{}",
        refused[0].1
    );
    assert_eq!(refused[1].0, 404, "{}", refused[1].1);
    assert!(refused[1].1.contains("no account"), "{}", refused[1].1);
    assert_eq!(only.0, 200, "{}", only.1);
    assert!(
        only.1.contains("Gamma &lt;Institute&gt;") && !only.1.contains("Acme Academy"),
        "{}",
        only.1
    );
    assert_eq!(asleep.0, 400, "{}", asleep.1);
    assert!(
        asleep
            .1
            .contains("why=asleep: not one of unsyncable, failed"),
        "{}",
        asleep.1
    );
    assert_eq!(bad.0, 400, "{}", bad.1);
    assert!(
        bad.1.contains("all") && bad.1.contains("all=true|false"),
        "{}",
        bad.1
    );

    for label in [
        "Acme Academy",
        "Beta Learning &amp; Co",
        "Gamma &lt;Institute&gt;",
        "Delta Training",
    ] {
        assert!(dom.contains(label), "{label} is not on the page:\n{dom}");
    }
    // The account that needs re-authorization comes first, marked.
    let gamma = dom.find("Gamma").unwrap();
    for other in ["Acme", "Beta", "Delta"] {
        assert!(gamma < dom.find(other).unwrap(), "{dom}");
    }
    assert!(dom.contains("cannot be synced: needs_reauth"), "{dom}");
    assert!(dom.contains("1 need attention"), "{dom}");
    assert!(dom.contains("1 cannot be synced"), "{dom}");
    // The service paces its requests under the token's budget, shared through the database:
    // the page shows who holds it (this service alone).
    assert!(dom.contains("Request budget"), "{dom}");
    assert!(dom.contains("held by 1 process,"), "{dom}");
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&taken.stderr)
        )
    });
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        png.len()
    );
}
