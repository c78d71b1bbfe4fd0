//! Client-facing TLS for PostgreSQL clients, with certificates made by `openssl` for the test:
//! `psql` with `sslmode=verify-full`, plaintext refused when TLS is required, mutual TLS.

use std::path::{Path, PathBuf};
use std::process::Command;

use sqlswitch_tests::pg::{client_bin, Topology, APP, DATABASE};
use sqlswitch_tests::proxy;

struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The cluster's `tls` key with the server certificate and key, and `more` keys.
    fn tls_key(&self, more: &str) -> String {
        format!("tls = {{ cert = \"{}\", key = \"{}\"{more} }}", self.path("server.pem"), self.path("server.key"))
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for `localhost`/127.0.0.1 and a client certificate, all signed by it.
fn make_certs() -> Certs {
    let dir = std::env::temp_dir().join(format!("sqlswitch-tls-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let days = ["-days", "2"];
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=sqlswitch test CA",
            days[0],
            days[1],
        ],
    );
    std::fs::write(dir.join("server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-extfile",
            "server.ext",
            days[0],
            days[1],
        ],
    );
    openssl(
        &dir,
        &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=app"],
    );
    // Extensions make these X.509 v3 certificates, which webpki requires.
    std::fs::write(dir.join("client.ext"), "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n").unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.pem",
            "-extfile",
            "client.ext",
            days[0],
            days[1],
        ],
    );
    // libpq refuses a client key others can read.
    let _ = Command::new("chmod").arg("600").arg(dir.join("client.key")).status();
    Certs { dir }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
}

/// Runs `cmd` off the async threads; returns (ok, stdout trimmed, stderr).
async fn run(mut cmd: Command) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// Runs `psql -c sql` with a libpq connection string.
async fn psql(conn: String, sql: &'static str) -> (bool, String, String) {
    let mut cmd = Command::new(client_bin(Topology::shared(), "psql"));
    cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", &conn, "-c", sql])
        .env("PGPASSWORD", APP.1)
        .env("PGCONNECT_TIMEOUT", "10");
    run(cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_verify_full_through_sqlswitch_and_plaintext_refused() {
    let topo = Topology::shared();
    let certs = make_certs();
    let extra = certs.tls_key(", required = true");
    let daemon = proxy::start(topo, &extra).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let base = format!("host=localhost port={port} user={} dbname={DATABASE}", APP.0);

    let (ok, out, err) =
        psql(format!("{base} sslmode=verify-full sslrootcert={}", certs.path("ca.pem")), "SELECT 'over tls'").await;
    assert!(ok, "verify-full: {err}");
    assert_eq!(out, "over tls");

    let (ok, _, err) = psql(format!("{base} sslmode=disable"), "SELECT 1").await;
    assert!(!ok, "plaintext is refused when TLS is required");
    assert!(err.contains("TLS"), "{err}");

    // A client that trusts another CA refuses the proxy's certificate.
    let other = make_certs();
    let (ok, _, _) = psql(format!("{base} sslmode=verify-full sslrootcert={}", other.path("ca.pem")), "SELECT 1").await;
    assert!(!ok, "a certificate from an unknown CA is not accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate() {
    let topo = Topology::shared();
    let certs = make_certs();
    let extra = certs.tls_key(&format!(", client_ca = \"{}\", required = true", certs.path("ca.pem")));
    let daemon = proxy::start(topo, &extra).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let base = format!(
        "host=localhost port={port} user={} dbname={DATABASE} sslmode=verify-full sslrootcert={}",
        APP.0,
        certs.path("ca.pem")
    );
    let (ok, _, _) = psql(base.clone(), "SELECT 1").await;
    assert!(!ok, "no client certificate: refused");
    let (ok, out, err) = psql(
        format!("{base} sslcert={} sslkey={}", certs.path("client.pem"), certs.path("client.key")),
        "SELECT 'mutual'",
    )
    .await;
    assert!(ok, "with a client certificate: {err}");
    assert_eq!(out, "mutual");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_optional_unless_required() {
    let topo = Topology::shared();
    let certs = make_certs();
    let extra = certs.tls_key("");
    let daemon = proxy::start(topo, &extra).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let base = format!("host=localhost port={port} user={} dbname={DATABASE}", APP.0);
    let (ok, out, err) = psql(format!("{base} sslmode=require"), "SELECT 'tls'").await;
    assert!(ok && out == "tls", "{err}");
    let (ok, out, err) = psql(format!("{base} sslmode=disable"), "SELECT 'plain'").await;
    assert!(ok && out == "plain", "{err}");
}

/// Runs the `mariadb` client with `args` and `-e sql`.
async fn mariadb(port: u16, args: Vec<String>, sql: &'static str) -> (bool, String, String) {
    let mut cmd = Command::new("mariadb");
    cmd.args(["-h", "127.0.0.1", "-P", &port.to_string(), "-u", APP.0, &format!("-p{}", APP.1), "-N", "-B"])
        .args(&args)
        .args([DATABASE, "-e", sql]);
    run(cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_client_verifies_the_server_certificate() {
    let topo = sqlswitch_tests::mysql::Topology::shared();
    let certs = make_certs();
    let extra = certs.tls_key(", required = true");
    let daemon = proxy::start_mysql(topo, &extra).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let verify =
        vec!["--ssl".to_owned(), format!("--ssl-ca={}", certs.path("ca.pem")), "--ssl-verify-server-cert".to_owned()];
    let (ok, out, err) = mariadb(port, verify, "SELECT 'over tls'").await;
    assert!(ok, "--ssl-verify-server-cert: {err}");
    assert_eq!(out, "over tls");
    let (ok, _, err) = mariadb(port, vec!["--skip-ssl".to_owned()], "SELECT 1").await;
    assert!(!ok, "plaintext is refused when TLS is required");
    assert!(err.contains("3159") || err.contains("insecure transport"), "{err}");
    let other = make_certs();
    let wrong_ca =
        vec!["--ssl".to_owned(), format!("--ssl-ca={}", other.path("ca.pem")), "--ssl-verify-server-cert".to_owned()];
    let (ok, _, _) = mariadb(port, wrong_ca, "SELECT 1").await;
    assert!(!ok, "a certificate from an unknown CA is not accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_modes() {
    let topo = Topology::start(0).unwrap();
    let certs = make_certs();
    topo.enable_ssl(topo.primary(), Path::new(&certs.path("server.pem")), Path::new(&certs.path("server.key")))
        .unwrap();
    let uses_tls = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    for (mode, ca, expect) in [
        ("verify-full", certs.path("ca.pem"), Some("t")),
        ("verify-ca", certs.path("ca.pem"), Some("t")),
        ("require", String::new(), Some("t")),
        ("disable", String::new(), Some("f")),
    ] {
        let ca = if ca.is_empty() { String::new() } else { format!(", ca = \"{ca}\"") };
        let daemon = proxy::start(&topo, &format!("backend_tls = {{ mode = \"{mode}\"{ca} }}")).await.unwrap();
        let port = daemon.addr("app", false).unwrap().port();
        let client = sqlswitch_tests::client::connect(port, APP).await.unwrap();
        let row = client.query_one(uses_tls, &[]).await.unwrap();
        let ssl: bool = row.get(0);
        assert_eq!(Some(if ssl { "t" } else { "f" }), expect, "backend_tls mode {mode}");
    }
    // A pooled TLS connection moves to the session thread of the next session that takes it.
    let daemon = proxy::start_threads(&topo, "backend_tls = { mode = \"require\" }", 2).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let idle = || daemon.status().iter().flat_map(|c| c.backends.iter()).map(|b| b.idle_connections).sum::<usize>();
    let mut pids = Vec::new();
    for _ in 0..4 {
        // Accepted sessions alternate between the two threads.
        let client = sqlswitch_tests::client::connect(port, APP).await.unwrap();
        let row = client.query_one("SELECT pg_backend_pid(), ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]);
        let row = row.await.unwrap();
        assert!(row.get::<_, bool>(1), "encrypted");
        pids.push(row.get::<_, i32>(0));
        drop(client);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while idle() == 0 {
            assert!(std::time::Instant::now() < deadline, "the connection never went back to the pool");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    assert!(pids.iter().all(|p| *p == pids[0]), "one TLS connection served every session: {pids:?}");
    drop(daemon);

    // A backend certificate from another CA fails verify-full: no session, a clear error.
    let other = make_certs();
    let extra = format!("backend_tls = {{ mode = \"verify-full\", ca = \"{}\" }}", other.path("ca.pem"));
    let daemon = proxy::start(&topo, &extra).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let err = sqlswitch_tests::client::connect(port, APP).await.expect_err("an unverifiable backend");
    assert_eq!(sqlswitch_tests::client::code(&err).map(|c| c.code()), Some("08006"), "{err:?}");
    drop(daemon);
    topo.stop();
}

/// `SELECT` of the session's TLS cipher on the backend, through the proxy at `port`.
async fn backend_cipher(port: u16) -> (bool, String, String) {
    let sql = "SELECT CONCAT('cipher=', VARIABLE_VALUE) FROM information_schema.SESSION_STATUS \
               WHERE VARIABLE_NAME = 'Ssl_cipher'";
    mariadb(port, vec!["--skip-ssl".to_owned()], sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_backend_tls_modes() {
    let certs = make_certs();
    let (cert, key) = (certs.path("server.pem"), certs.path("server.key"));
    let topo = sqlswitch_tests::mysql::Topology::start_with(0, Some((Path::new(&cert), Path::new(&key)))).unwrap();
    for (mode, ca, encrypted) in [
        ("verify-full", certs.path("ca.pem"), true),
        ("verify-ca", certs.path("ca.pem"), true),
        ("require", String::new(), true),
        ("prefer", String::new(), true),
        ("disable", String::new(), false),
    ] {
        let ca = if ca.is_empty() { String::new() } else { format!(", ca = \"{ca}\"") };
        let daemon = proxy::start_mysql(&topo, &format!("backend_tls = {{ mode = \"{mode}\"{ca} }}")).await.unwrap();
        let port = daemon.addr("app", false).unwrap().port();
        let (ok, out, err) = backend_cipher(port).await;
        assert!(ok, "backend_tls mode {mode}: {err}");
        assert_eq!(out != "cipher=", encrypted, "backend_tls mode {mode}: {out}");
    }
    // A backend certificate from another CA fails verify-full: the login is refused, clearly.
    let other = make_certs();
    let extra = format!("backend_tls = {{ mode = \"verify-full\", ca = \"{}\" }}", other.path("ca.pem"));
    let daemon = proxy::start_mysql(&topo, &extra).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let (ok, _, err) = backend_cipher(port).await;
    assert!(!ok, "an unverifiable backend is not used");
    assert!(err.contains("certificate"), "{err}");
    drop(daemon);

    // A backend without TLS: `require` refuses it, `prefer` goes on in plaintext.
    let plain = sqlswitch_tests::mysql::Topology::shared();
    let daemon = proxy::start_mysql(plain, "backend_tls = { mode = \"require\" }").await.unwrap();
    let (ok, _, err) = backend_cipher(daemon.addr("app", false).unwrap().port()).await;
    assert!(!ok && err.contains("TLS"), "require against a plaintext backend: {err}");
    let daemon = proxy::start_mysql(plain, "backend_tls = { mode = \"prefer\" }").await.unwrap();
    let (ok, out, err) = backend_cipher(daemon.addr("app", false).unwrap().port()).await;
    assert!(ok && out == "cipher=", "prefer against a plaintext backend: {out} {err}");
}

/// A TLS connection straight to `port`, as `sslnegotiation=direct` makes it, offering `alpn`.
async fn direct_tls(
    port: u16,
    ca: &str,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from_pem_file(ca).unwrap()).unwrap();
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !alpn.is_empty() {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await
}

/// Logs in over `stream` (already encrypted) and runs `SELECT 'direct'`.
async fn query_over<S>(stream: S) -> Result<String, tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut config = tokio_postgres::Config::new();
    config.user(APP.0).password(APP.1).dbname(DATABASE).ssl_mode(tokio_postgres::config::SslMode::Disable);
    let (client, connection) = config.connect_raw(stream, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client.query_one("SELECT 'direct'", &[]).await.map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_of_protocol_3_2_clients() {
    let topo = Topology::shared();
    let certs = make_certs();
    let daemon = proxy::start(topo, &certs.tls_key(", required = true")).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let ca = certs.path("ca.pem");

    // ClientHello first, with ALPN `postgresql`: a session, encrypted, that counts as TLS
    // (`required` lets it in).
    let tls = direct_tls(port, &ca, b"postgresql").await.expect("direct TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    assert_eq!(query_over(tls).await.expect("a session over direct TLS"), "direct");

    // Without ALPN the handshake completes, then the proxy refuses the session, as PostgreSQL 17.
    let tls = direct_tls(port, &ca, b"").await.expect("the TLS handshake itself");
    let err = query_over(tls).await.expect_err("direct TLS without ALPN");
    let db = err.as_db_error().expect("an ErrorResponse over TLS");
    assert_eq!(db.code().code(), "08P01");
    assert!(db.message().contains("ALPN"), "{db:?}");

    // Another ALPN protocol: the TLS handshake itself fails.
    assert!(direct_tls(port, &ca, b"mysql").await.is_err(), "ALPN other than postgresql");

    // A cluster without TLS closes the connection: nothing else can answer a ClientHello.
    let plain = proxy::start(topo, "").await.unwrap();
    let port = plain.addr("app", false).unwrap().port();
    assert!(direct_tls(port, &ca, b"postgresql").await.is_err(), "no TLS configured");
    // And keeps serving.
    let client = sqlswitch_tests::client::connect(port, APP).await.unwrap();
    assert_eq!(client.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}
