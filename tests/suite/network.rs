//! What an operator's network puts between lms-sync and the systems it talks to. PostgreSQL: a
//! server that accepts only TLS and a certificate from a private CA, as a managed PostgreSQL
//! has; a sync over verified TLS works, and each mistake an operator makes in `database.url`
//! (no TLS, the wrong CA, a name the certificate does not carry, a missing file, TLS off in the
//! server) fails saying what to do, without the password. Truto: an egress proxy named by the
//! environment, which requests go through with its credentials, and which is named when it
//! fails, so that it does not read as Truto failing.

use std::time::Duration;

use crate::helpers::daemon::store_for;
use crate::helpers::*;
use lms_sync::devkit::simulator::{Integrated, Simulator};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

const PASSWORD: &str = "tls-pw-hunter2";

/// A CA's certificate (PEM) and the issuer that signs with it.
fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// Reloads the server's configuration and waits until a new session sees `ssl` as `want`.
async fn reload_until_ssl(url: &str, want: &str) {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    sqlx::raw_sql("SELECT pg_reload_conf()")
        .execute(&mut conn)
        .await
        .unwrap();
    for tries in 0.. {
        let mut fresh = <sqlx::PgConnection as sqlx::Connection>::connect(url)
            .await
            .unwrap();
        let ssl: String = sqlx::query_scalar("SHOW ssl")
            .fetch_one(&mut fresh)
            .await
            .unwrap();
        if ssl == want {
            return;
        }
        assert!(tries < 500, "the server's ssl stayed {ssl}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_only_database_with_a_private_ca_syncs_verified_and_each_mistake_says_what_to_do() {
    let (pg, port) = tcp_cluster().await;
    // The test's own sessions go over the Unix socket (trusted); TCP accepts only TLS.
    let local = pg.url("postgres");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&local)
        .await
        .unwrap();
    let data_dir: String = sqlx::query_scalar("SELECT current_setting('data_directory')")
        .fetch_one(&mut conn)
        .await
        .unwrap();

    // A private CA signs the server's certificate, for the name `localhost` only.
    let (ca_pem, ca) = new_ca("lms-sync test CA");
    let (other_pem, _) = new_ca("some other CA");
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    write_as_server(&data_dir, "server.crt", &server_cert.pem());
    write_as_server(&data_dir, "server.key", &server_key.serialize_pem());
    write_as_server(
        &data_dir,
        "pg_hba.conf",
        "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256",
    );
    // One statement each: ALTER SYSTEM runs outside a transaction block.
    for sql in [
        format!("ALTER ROLE postgres PASSWORD '{PASSWORD}'"),
        "ALTER SYSTEM SET ssl = on".to_string(),
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'".to_string(),
        "ALTER SYSTEM SET ssl_key_file = 'server.key'".to_string(),
    ] {
        sqlx::raw_sql(&sql).execute(&mut conn).await.unwrap();
    }
    reload_until_ssl(&local, "on").await;

    let dir = TempDir::new("lms-sync-tls");
    let ca_file = dir.join("ca.pem");
    let other_file = dir.join("other-ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    std::fs::write(&other_file, &other_pem).unwrap();
    let (ca_file, other_file) = (
        ca_file.display().to_string(),
        other_file.display().to_string(),
    );

    let a = account_id(1);
    let sim = Simulator::start(0).await.unwrap();
    sim.set_token("tok-tls");
    sim.add_account(a, 150, 1);
    let cfg = TempFile::new(
        "lms-sync-tls",
        ".toml",
        format!(
            "[truto]\nbase_url = \"{}\"\n[database]\nconnect_timeout_secs = 3\n\
             [sync]\nprogress = \"off\"\n[[accounts]]\nintegrated_account_id = \"{a}\"\n",
            sim.base_url()
        ),
    );
    // `pg_env`: libpq's PGSSL* variables, which sqlx reads for what the URL does not say.
    let sync_with = |query: String, host: &'static str, pg_env: Vec<(&'static str, String)>| {
        let url = format!("postgres://postgres:{PASSWORD}@{host}:{port}/postgres?{query}");
        let cfg = cfg.to_str().unwrap().to_string();
        async move {
            let mut env = vec![("TRUTO_API_TOKEN", "tok-tls"), ("DATABASE_URL", &url)];
            env.extend(pg_env.iter().map(|(k, v)| (*k, v.as_str())));
            let out = run(&["--config", &cfg, "sync"], &env).await;
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                !stdout.contains(PASSWORD) && !stderr.contains(PASSWORD),
                "the password showed: {stdout}{stderr}"
            );
            (out.status.code(), stderr)
        }
    };
    let sync = |query: String, host: &'static str| sync_with(query, host, Vec::new());

    // Verified TLS: the CA's file, and the name its certificate carries.
    let (code, stderr) = sync(
        format!("sslmode=verify-full&sslrootcert={ca_file}"),
        "localhost",
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    // The log says how the sessions reached the server.
    assert!(
        stderr.contains("encrypted (TLSv1.3); the server's certificate and host name verified (sslmode=verify-full)"),
        "{stderr}"
    );
    let store = store_for(&local).await;
    assert_mirror(&store, &sim, a).await;

    // Each mistake: (what database.url says, the host it names, what the error must say).
    let not_trusted = "is not signed by a certificate authority lms-sync trusts: set sslrootcert";
    let cases = [
        (
            format!("sslmode=verify-full&sslrootcert={other_file}"),
            "localhost",
            not_trusted,
        ),
        // libpq's meaning: require with a CA file checks the certificate against it.
        (
            format!("sslmode=require&sslrootcert={other_file}"),
            "localhost",
            not_trusted,
        ),
        // No CA file: only the public web CAs are trusted, and a private CA is none of them.
        ("sslmode=verify-ca".to_string(), "localhost", not_trusted),
        (
            format!("sslmode=verify-full&sslrootcert={ca_file}"),
            "127.0.0.1",
            "does not name the host that database.url connects to",
        ),
        (
            "sslmode=disable".to_string(),
            "localhost",
            "accepts only encrypted connections from this host: set sslmode=verify-full",
        ),
    ];
    for (query, host, says) in cases {
        let (code, stderr) = sync(query.clone(), host).await;
        assert_eq!(code, Some(1), "{query} to {host}: {stderr}");
        assert!(stderr.contains(says), "{query} to {host}: {stderr}");
    }
    // A CA file that is not there is a configuration error, named before anything starts.
    let (code, stderr) = sync(
        format!("sslmode=verify-full&sslrootcert={ca_file}.missing"),
        "localhost",
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "database.url: sslrootcert names {ca_file}.missing, which cannot be read"
        )),
        "{stderr}"
    );
    // The same through the environment, for a URL that says nothing of TLS: honoured as sqlx
    // reads it, and checked at start as the URL's parameters are.
    let env = |mode: &str, root: &str| {
        vec![
            ("PGSSLMODE", mode.to_string()),
            ("PGSSLROOTCERT", root.to_string()),
        ]
    };
    let (code, stderr) = sync_with(String::new(), "localhost", env("verify-full", &ca_file)).await;
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) =
        sync_with(String::new(), "localhost", env("verify-full", &other_file)).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(not_trusted), "{stderr}");
    // sqlx would take a mode it does not know for `prefer`, checking nothing, without a word.
    let (code, stderr) = sync_with(String::new(), "localhost", env("verify_full", &ca_file)).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("PGSSLMODE=verify_full is not one of disable, allow, prefer, require, verify-ca, verify-full (from the environment")
            && stderr.contains("taken as prefer"),
        "{stderr}"
    );
    let (code, stderr) = sync_with(
        String::new(),
        "localhost",
        env("verify-full", &format!("{ca_file}.missing")),
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "PGSSLROOTCERT names {ca_file}.missing, which cannot be read"
        )),
        "{stderr}"
    );
    // The URL's own parameters win over the environment's, which is then not in the way.
    let (code, stderr) = sync_with(
        format!("sslmode=verify-full&sslrootcert={ca_file}"),
        "localhost",
        env("bogus", "/nonexistent/ca.pem"),
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    // Encryption without checking who answers still works where an operator asks for only that,
    // and the log says what it leaves open (from this host: nothing between them).
    let (code, stderr) = sync("sslmode=require".to_string(), "127.0.0.1").await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr
            .contains("encrypted (TLSv1.3), the server's certificate unchecked (sslmode=require)"),
        "{stderr}"
    );

    // TLS turned off in the server while database.url asks for it.
    write_as_server(
        &data_dir,
        "pg_hba.conf",
        "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256",
    );
    sqlx::raw_sql("ALTER SYSTEM SET ssl = off")
        .execute(&mut conn)
        .await
        .unwrap();
    reload_until_ssl(&local, "off").await;
    let (code, stderr) = sync(
        format!("sslmode=verify-full&sslrootcert={ca_file}"),
        "localhost",
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("the server has TLS turned off"), "{stderr}");
    // sqlx's default, prefer, then goes without TLS, and says so.
    let (code, stderr) = sync(String::new(), "localhost").await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "not encrypted: the server offers no TLS, and sslmode=prefer then goes without"
        ),
        "{stderr}"
    );
    // Nothing mirrored was lost on the way.
    assert_mirror(&store, &sim, a).await;
}

const PROXY_PASSWORD: &str = "proxy-pw-hunter2";

/// Truto behind the egress proxy the environment names (`HTTP_PROXY` here, for the
/// simulator's plain HTTP; `HTTPS_PROXY` for Truto's own URL): every request goes through it
/// with its credentials; a proxy that refuses connections is named as the proxy, not as Truto;
/// `NO_PROXY` is honoured; the proxy's password shows nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truto_behind_the_environments_proxy_is_reached_through_it_and_a_dead_proxy_is_named() {
    let a = account_id(2);
    // The simulator stands in for the proxy and for Truto behind it: it answers requests sent
    // to a proxy (absolute-form targets) and counts them.
    let sim = Simulator::start(0).await.unwrap();
    sim.set_token("tok-proxy");
    sim.add_account(a, 150, 2);
    sim.set_integrated(a, Integrated::active("tenant-proxy"));
    let proxy_port = reqwest::Url::parse(&sim.base_url())
        .unwrap()
        .port()
        .unwrap();
    let dead_port = free_port();
    let db = fresh_database_url().await;
    // A host no resolver knows: only the proxy can reach it.
    let cfg = TempFile::new(
        "lms-sync-proxy",
        ".toml",
        format!(
            "[truto]\nbase_url = \"http://truto.invalid/\"\nbackoff_initial_ms = 5\n\
             [sync]\nprogress = \"off\"\n[[accounts]]\nintegrated_account_id = \"{a}\"\n"
        ),
    );
    let cfg = cfg.to_str().unwrap().to_string();
    let lms_sync = |command: &'static str, proxy_port: u16, no_proxy: &'static str| {
        let proxy = format!("http://proxyuser:{PROXY_PASSWORD}@127.0.0.1:{proxy_port}");
        let (cfg, db) = (cfg.clone(), db.clone());
        async move {
            let mut env = vec![
                ("TRUTO_API_TOKEN", "tok-proxy"),
                ("DATABASE_URL", db.as_str()),
                ("HTTP_PROXY", proxy.as_str()),
            ];
            if !no_proxy.is_empty() {
                env.push(("NO_PROXY", no_proxy));
            }
            let out = run(&["--config", &cfg, command], &env).await;
            let output = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!output.contains(PROXY_PASSWORD), "{output}");
            (out.status.code(), output)
        }
    };

    let (code, output) = lms_sync("sync", proxy_port, "").await;
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains(&format!(
            "requests to Truto go through the proxy http://127.0.0.1:{proxy_port}"
        )),
        "{output}"
    );
    let stats = sim.stats();
    assert!(stats.requests >= 2, "{stats:?}");
    assert_eq!(
        stats.proxied, stats.requests,
        "every request went through the proxy"
    );
    assert_eq!(
        stats.proxy_authorized, stats.proxied,
        "with its credentials"
    );
    assert_mirror(&store_for(&db).await, &sim, a).await;

    let (code, output) = lms_sync("check", proxy_port, "").await;
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains(&format!(
            "Truto accepts the API token (through the proxy http://127.0.0.1:{proxy_port})"
        )),
        "{output}"
    );

    // The proxy refuses connections: the proxy is named, not Truto.
    let (code, output) = lms_sync("check", dead_port, "").await;
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains(&format!(
            "cannot connect to Truto: through the proxy http://127.0.0.1:{dead_port} (from the environment's"
        )),
        "{output}"
    );
    // NO_PROXY sends Truto's requests straight to it: no proxy is named (and this host has
    // no name a resolver knows).
    let before = sim.stats().requests;
    let (code, output) = lms_sync("check", proxy_port, "truto.invalid").await;
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("cannot connect to Truto") && !output.contains("proxy"),
        "{output}"
    );
    assert_eq!(
        sim.stats().requests,
        before,
        "nothing went through the proxy"
    );
}

/// Serves TLS on a loopback port with `cert` and `key` (PEM) and passes each connection's bytes
/// to the simulator: Truto's HTTPS, as a TLS-inspecting proxy with a private CA presents it.
async fn tls_front(cert_pem: &str, key_pem: &str, sim: &Simulator) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    lms_sync::install_crypto_provider();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = sim.base_url().trim_start_matches("http://").to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to pass.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut sim = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut sim).await;
            });
        }
    });
    port
}

/// Truto over HTTPS with a certificate from a CA the operating system's store does not hold
/// (a TLS-inspecting egress proxy's): refused, saying what to do, until `SSL_CERT_FILE` names a
/// bundle with that CA; then the sync goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truto_behind_a_tls_inspecting_proxy_needs_its_ca_and_says_so() {
    let a = account_id(3);
    let sim = Simulator::start(0).await.unwrap();
    sim.set_token("tok-https");
    sim.add_account(a, 150, 3);
    let (ca_pem, ca) = new_ca("inspecting proxy CA");
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let port = tls_front(&cert.pem(), &key.serialize_pem(), &sim).await;
    let dir = TempDir::new("lms-sync-https");
    let bundle = dir.join("bundle.pem");
    std::fs::write(&bundle, &ca_pem).unwrap();
    let db = fresh_database_url().await;
    let cfg = TempFile::new(
        "lms-sync-https",
        ".toml",
        format!(
            "[truto]\nbase_url = \"https://localhost:{port}/\"\nbackoff_initial_ms = 5\n\
             max_attempts = 2\n[sync]\nprogress = \"off\"\n\
             [[accounts]]\nintegrated_account_id = \"{a}\"\n"
        ),
    );
    let args = ["--config", cfg.to_str().unwrap(), "sync"];
    let env = [
        ("TRUTO_API_TOKEN", "tok-https"),
        ("DATABASE_URL", db.as_str()),
    ];

    let out = run(&args, &env).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("invalid peer certificate: UnknownIssuer (the certificate that answered is not signed by a CA in this host's store")
            && stderr.contains("point SSL_CERT_FILE at a bundle that holds it"),
        "{stderr}"
    );
    assert_eq!(sim.stats().requests, 0, "nothing got past the handshake");

    let bundle = bundle.display().to_string();
    let with_ca = [env[0], env[1], ("SSL_CERT_FILE", bundle.as_str())];
    let out = run(&args, &with_ca).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_mirror(&store_for(&db).await, &sim, a).await;
}
