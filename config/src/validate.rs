//! Reading a config file and validating it as a whole: every problem found, each naming the
//! file, the key and why, at once.

use super::*;

/// One thing wrong with a config: which key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key, as a path (`cluster[0].backend[1].role`), or empty for the file as a whole.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Every problem found in one config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// What is wrong with it.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.key.is_empty() {
                write!(f, "{}: {}", self.file.display(), p.message)?;
            } else {
                write!(f, "{}: {}: {}", self.file.display(), p.key, p.message)?;
            }
        }
        Ok(())
    }
}

impl Config {
    /// Reads, parses and validates `path`, resolving `password_env`.
    ///
    /// # Errors
    /// Every problem found, each naming the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let fail = |message: String| ConfigError {
            file: path.to_owned(),
            problems: vec![Problem { key: String::new(), message }],
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        Self::parse(&text, path, |name| std::env::var(name).ok())
    }

    /// Parses and validates config text; `env` looks up environment variables.
    ///
    /// # Errors
    /// Every problem found, each naming the key.
    pub fn parse(text: &str, path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: path.to_owned(),
            problems: vec![Problem {
                key: String::new(),
                message: format!("{}{}{}", without_value(e.message()), location(text, &e), hint(e.message())),
            }],
        })?;
        let problems = config.validate(env);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { file: path.to_owned(), problems })
        }
    }

    /// Checks the config as a whole and resolves `password_env`; returns every problem.
    pub fn validate(&mut self, env: impl Fn(&str) -> Option<String>) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.clusters.is_empty() {
            add(&mut out, "cluster".into(), "at least one [[cluster]] is required".into());
        }
        if self.admin.socket.as_os_str().is_empty() {
            add(&mut out, "admin.socket".into(), "must not be empty".into());
        }
        if let Some(f) = &mut self.fleet {
            validate_fleet(f, &env, &mut out);
        }
        let mut names = HashSet::new();
        let mut listeners = HashSet::new();
        for (ci, c) in self.clusters.iter_mut().enumerate() {
            let at = format!("cluster[{ci}]");
            if c.name.is_empty() {
                add(&mut out, format!("{at}.name"), "must not be empty".into());
            } else if !names.insert(c.name.clone()) {
                add(&mut out, format!("{at}.name"), format!("cluster name {:?} is used twice", c.name));
            }
            for (key, addr) in [("listen", Some(c.listen)), ("read_only_listen", c.read_only_listen)] {
                if let Some(addr) = addr {
                    if addr.port() != 0 && !listeners.insert(addr) {
                        add(
                            &mut out,
                            format!("{at}.{key}"),
                            format!("address {addr} is already used by another listener"),
                        );
                    }
                }
            }
            if c.auth_query.as_ref().is_some_and(|q| !q.contains("$1")) {
                add(&mut out, format!("{at}.auth_query"), "must contain $1, where the user name goes".into());
            }
            let creds = [
                ("monitor", c.monitor.as_mut()),
                ("replication", c.replication.as_mut()),
                ("auth_user", c.auth_user.as_mut()),
            ];
            for (name, creds) in creds {
                let Some(creds) = creds else { continue };
                let key = format!("{at}.{name}");
                let given = Some(std::mem::take(&mut creds.password)).filter(|p| !p.expose().is_empty());
                match resolve_secret(&key, given, creds.password_env.as_deref(), creds.password_file.as_deref(), &env) {
                    Ok(secret) => creds.password = secret.unwrap_or_default(),
                    Err((key, message)) => add(&mut out, key, message),
                }
            }
            if c.monitor_interval.is_zero() {
                add(&mut out, format!("{at}.monitor_interval"), "must be greater than zero".into());
            }
            if let Some(tls) = &c.tls {
                for (key, path) in
                    [("cert", Some(&tls.cert)), ("key", Some(&tls.key)), ("client_ca", tls.client_ca.as_ref())]
                {
                    if let Some(path) = path {
                        if let Err(e) = std::fs::metadata(path) {
                            add(&mut out, format!("{at}.tls.{key}"), format!("cannot read {}: {e}", path.display()));
                        }
                    }
                }
            }
            if let Some(b) = &c.backend_tls {
                let verifies = matches!(b.mode, TlsMode::VerifyCa | TlsMode::VerifyFull);
                match &b.ca {
                    None if verifies => {
                        add(&mut out, format!("{at}.backend_tls.ca"), "verify-ca and verify-full need a CA file".into())
                    }
                    Some(path) => {
                        if let Err(e) = std::fs::metadata(path) {
                            add(
                                &mut out,
                                format!("{at}.backend_tls.ca"),
                                format!("cannot read {}: {e}", path.display()),
                            );
                        }
                    }
                    None => {}
                }
            }
            if c.idle_timeout.is_some_and(|d| d.is_zero()) {
                add(&mut out, format!("{at}.idle_timeout"), "must be greater than zero (leave it out for none)".into());
            }
            if c.pool_shuffle && !c.pools_transactions() {
                add(
                    &mut out,
                    format!("{at}.pool_shuffle"),
                    "applies to pool_mode = \"transaction\" only (the cluster's or a user's)".into(),
                );
            }
            if c.min_pool_size > c.pool_max_idle {
                add(
                    &mut out,
                    format!("{at}.min_pool_size"),
                    format!("keeps more warm connections than pool_max_idle ({}) lets the pool hold", c.pool_max_idle),
                );
            }
            if c.pool_idle_timeout.is_zero() {
                add(&mut out, format!("{at}.pool_idle_timeout"), "must be greater than zero".into());
            }
            if c.max_replica_lag.is_zero() {
                add(&mut out, format!("{at}.max_replica_lag"), "must be greater than zero".into());
            }
            for (key, value) in [
                ("max_client_connections", c.max_client_connections),
                ("max_message_size", c.max_message_size),
                ("pool_max_idle", c.pool_max_idle.max(1)),
                ("max_held", c.max_held),
            ] {
                if value == 0 {
                    add(&mut out, format!("{at}.{key}"), "must be greater than zero".into());
                }
            }
            if c.max_message_size < 1024 {
                add(&mut out, format!("{at}.max_message_size"), "must be at least 1024 bytes".into());
            }
            validate_users(c, &at, &env, &mut out);
            for f in &mut c.read_only_functions {
                f.make_ascii_lowercase();
            }
            c.read_only_functions.sort();
            validate_backends(c, &at, &mut out);
        }
        out
    }
}

/// Records one problem.
fn add(out: &mut Vec<Problem>, key: String, message: String) {
    out.push(Problem { key, message });
}

/// `[fleet]`: endpoints, prefix, lease, instance name, credentials and TLS files.
fn validate_fleet(f: &mut Fleet, env: &impl Fn(&str) -> Option<String>, out: &mut Vec<Problem>) {
    let mut problem = |key: String, message: String| out.push(Problem { key, message });
    let given = f.password.take();
    match resolve_secret("fleet", given, f.password_env.as_deref(), f.password_file.as_deref(), env) {
        Ok(secret) => f.password = secret,
        Err((key, message)) => problem(key, message),
    }
    if f.etcd.is_empty() {
        problem("fleet.etcd".into(), "at least one etcd endpoint is required".into());
    }
    for e in &f.etcd {
        let tls = f.tls_ca.is_some();
        let scheme_ok = e.starts_with("http://") || e.starts_with("https://");
        if !scheme_ok {
            problem("fleet.etcd".into(), format!("{e:?}: write it as http://host:port (or https:// with tls_ca)"));
        } else if e.starts_with("https://") != tls {
            problem("fleet.etcd".into(), format!("{e:?}: https:// endpoints need tls_ca, and tls_ca needs https://"));
        }
    }
    if !f.prefix.starts_with('/') || f.prefix.ends_with('/') {
        problem("fleet.prefix".into(), format!("{:?}: must start with / and not end with /", f.prefix));
    }
    if f.ttl < Duration::from_secs(2) {
        problem("fleet.ttl".into(), "must be at least 2s (etcd leases are whole seconds)".into());
    }
    if f.instance.as_ref().is_some_and(|i| i.is_empty() || i.contains('/')) {
        problem("fleet.instance".into(), "must not be empty or contain /".into());
    }
    if f.user.is_some() != f.password.is_some() {
        problem("fleet.user".into(), "user and password go together".into());
    }
    if f.tls_cert.is_some() != f.tls_key.is_some() {
        problem("fleet.tls_cert".into(), "tls_cert and tls_key go together".into());
    }
    for (key, path) in [("tls_ca", &f.tls_ca), ("tls_cert", &f.tls_cert), ("tls_key", &f.tls_key)] {
        if let Some(path) = path {
            if let Err(e) = std::fs::metadata(path) {
                problem(format!("fleet.{key}"), format!("cannot read {}: {e}", path.display()));
            }
        }
    }
}

/// A cluster's users (named once, each with one password, resolved here) and its
/// `read_only_users`.
fn validate_users(c: &mut Cluster, at: &str, env: &impl Fn(&str) -> Option<String>, out: &mut Vec<Problem>) {
    let mut problem = |key: String, message: String| out.push(Problem { key, message });
    if c.users.is_empty() {
        problem(format!("{at}.user"), "at least one [[cluster.user]] is required".into());
    }
    let mut users = HashSet::new();
    for (ui, u) in c.users.iter_mut().enumerate() {
        let key = format!("{at}.user[{ui}]");
        if u.name.is_empty() {
            problem(format!("{key}.name"), "must not be empty".into());
        } else if !users.insert(u.name.clone()) {
            problem(format!("{key}.name"), format!("user {:?} is configured twice", u.name));
        }
        let given = u.password.take();
        match resolve_secret(&key, given, u.password_env.as_deref(), u.password_file.as_deref(), env) {
            Ok(Some(secret)) if secret.expose().starts_with(SCRAM_PREFIX) => {
                if c.protocol != Protocol::Postgres {
                    problem(key, "a SCRAM-SHA-256 verifier is a PostgreSQL secret: give this user's password".into());
                } else if !looks_like_scram_verifier(secret.expose()) {
                    problem(
                        key,
                        "starts like a SCRAM-SHA-256 verifier but is not one: copy pg_authid.rolpassword whole \
                         (SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)"
                            .into(),
                    );
                }
                u.password = Some(secret);
            }
            Ok(Some(secret))
                if c.protocol == Protocol::Mysql
                    && secret.expose().starts_with('*')
                    && secret.expose().len() == 41
                    && !secret.expose()[1..].bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                problem(key, "starts like a mysql_native_password hash but is not one: `*` and 40 hex digits".into());
            }
            Ok(Some(secret)) => u.password = Some(secret),
            Ok(None) => problem(key, "password, password_env or password_file is required".into()),
            Err((key, message)) => problem(key, message),
        }
    }
    for (ri, name) in c.read_only_users.iter().enumerate() {
        if !users.contains(name) {
            problem(format!("{at}.read_only_users[{ri}]"), format!("{name:?} is not a configured [[cluster.user]]"));
        }
    }
}

/// What a server's own SCRAM secret begins with (`pg_authid.rolpassword`).
const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

/// Whether `secret` has the shape of `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
/// (iterations a number, the rest base64 of keys of 32 bytes: 44 characters).
fn looks_like_scram_verifier(secret: &str) -> bool {
    let base64 = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    let Some((params, keys)) = secret.strip_prefix(SCRAM_PREFIX).and_then(|r| r.split_once('$')) else { return false };
    let (Some((iterations, salt)), Some((stored, server))) = (params.split_once(':'), keys.split_once(':')) else {
        return false;
    };
    iterations.parse::<u32>().is_ok_and(|i| i > 0)
        && base64(salt)
        && [stored, server].iter().all(|k| k.len() == 44 && base64(k))
}

/// A cluster's backends: how many, one primary per group, names, groups and addresses.
fn validate_backends(c: &Cluster, at: &str, out: &mut Vec<Problem>) {
    let mut problem = |key: String, message: String| out.push(Problem { key, message });
    if c.backends.is_empty() {
        problem(format!("{at}.backend"), "at least one [[cluster.backend]] is required".into());
    }
    if c.backends.len() > MAX_BACKENDS {
        problem(
            format!("{at}.backend"),
            format!("at most {MAX_BACKENDS} backends per cluster (found {})", c.backends.len()),
        );
    }
    let groups = c.groups();
    for group in &groups {
        let primaries = c.backends.iter().filter(|b| b.role == Role::Primary && b.group == *group).count();
        if primaries != 1 {
            let which = if groups.len() == 1 { String::new() } else { format!(" of group {group:?}") };
            problem(
                format!("{at}.backend"),
                format!("exactly one backend{which} must have role = \"primary\" (found {primaries})"),
            );
        }
    }
    let mut backends = HashSet::new();
    for (bi, b) in c.backends.iter().enumerate() {
        let key = format!("{at}.backend[{bi}]");
        if b.group.is_empty() {
            problem(format!("{key}.group"), "must not be empty (leave it out for \"main\")".into());
        }
        if b.name.is_empty() {
            problem(format!("{key}.name"), "must not be empty".into());
        } else if !backends.insert(b.name.clone()) {
            problem(format!("{key}.name"), format!("backend {:?} is configured twice", b.name));
        }
        let port_ok = b
            .address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok && !is_unix_socket(&b.address) {
            problem(
                format!("{key}.address"),
                format!("{:?} is not host:port nor the absolute path of a Unix socket", b.address),
            );
        }
    }
}

/// A type error's message without the value it quotes ("invalid type: integer `123456`,
/// expected a string" becomes "invalid type: integer, expected a string"): the value may be a
/// password, and config errors reach logs and terminals.
/// What to write instead, for the errors whose fix is not obvious from serde's message.
fn hint(message: &str) -> &'static str {
    if message.contains("invalid socket address syntax") {
        "; write an IP address and a port (\"127.0.0.1:6432\", \"0.0.0.0:6432\", \"[::1]:6432\"): host \
         names are not accepted here"
    } else {
        ""
    }
}

pub(crate) fn without_value(message: &str) -> String {
    let prefixes = ["invalid type: ", "invalid value: ", "invalid length "];
    if !prefixes.iter().any(|p| message.starts_with(p)) {
        return message.to_owned();
    }
    let Some((found, expected)) = message.split_once(", expected") else {
        return message.split(['`', '"']).next().unwrap_or_default().trim_end().to_owned();
    };
    let kind = found.split(['`', '"']).next().unwrap_or_default().trim_end();
    format!("{kind}, expected{expected}")
}

/// " (line L, column C, key `table.key`)" for a TOML error, when it has a position: the key is
/// the one on that line, under the nearest table header above it.
fn location(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else { return String::new() };
    let before = text.get(..span.start).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let this_line = text.lines().nth(line - 1).unwrap_or("");
    let key = this_line.split_once('=').map(|(k, _)| k.trim()).filter(|k| !k.is_empty() && !k.starts_with('#'));
    let table = text
        .lines()
        .take(line - 1)
        .filter_map(|l| l.trim().strip_prefix('[').map(|t| t.trim_matches(|c| c == '[' || c == ']').trim()))
        .last();
    match (table, key) {
        (Some(t), Some(k)) => format!(" (line {line}, column {col}, key `{t}.{k}`)"),
        (None, Some(k)) => format!(" (line {line}, column {col}, key `{k}`)"),
        _ => format!(" (line {line}, column {col})"),
    }
}

/// A password given inline (`given`), by an environment variable (`var`) or in a file (`file`):
/// at most one of them. Returns the password (`None` when none was given), or the key and the
/// problem. A file's trailing newline is not part of the password.
fn resolve_secret(
    key: &str,
    given: Option<Secret>,
    var: Option<&str>,
    file: Option<&Path>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, (String, String)> {
    match (given, var, file) {
        (given, None, None) => Ok(given),
        (None, Some(var), None) => match env(var) {
            Some(value) => Ok(Some(Secret::new(value))),
            None => Err((format!("{key}.password_env"), format!("environment variable {var} is not set"))),
        },
        (None, None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(Secret::new(text.trim_end_matches(['\n', '\r'])))),
            Err(e) => Err((format!("{key}.password_file"), format!("cannot read {}: {e}", path.display()))),
        },
        _ => Err((key.to_owned(), "set one of password, password_env and password_file, not several".into())),
    }
}
