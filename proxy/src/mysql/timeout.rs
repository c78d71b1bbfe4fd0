//! The session's own `wait_timeout`. A MySQL server closes a connection idle for longer than
//! its session's `wait_timeout` (`SET wait_timeout = 1`, as PyMySQL's suite does), and the
//! client's next statement finds the server gone. Through sqlswitch the server closes the
//! backend connection, which the session would replace unseen: so the session keeps the value
//! it set and ends its client connection after that long idle, as the server would have.

use std::time::Duration;

/// The `wait_timeout` a successful `SET` statement gives the session: `Some(Some(d))` for a
/// number of seconds, `Some(None)` for `DEFAULT` (the server's own again), `None` when the
/// statement does not set it.
pub fn set_by(sql: &str) -> Option<Option<Duration>> {
    let lower = sql.trim().trim_end_matches(';').to_ascii_lowercase();
    let rest = lower.strip_prefix("set")?;
    if !rest.starts_with(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    let mut found = None;
    for assignment in rest.split(',') {
        let (name, value) = assignment.split_once('=')?;
        let name = name.trim().trim_end_matches(':').trim();
        let name = ["session ", "local ", "@@session.", "@@local.", "@@"]
            .iter()
            .find_map(|p| name.strip_prefix(p))
            .unwrap_or(name)
            .trim();
        if name == "wait_timeout" {
            let value = value.trim();
            found = Some(if value == "default" { None } else { Some(Duration::from_secs(value.parse().ok()?)) });
        }
    }
    found
}

/// Sleeps for `d`, or forever when there is none.
pub async fn sleep_or_never(d: Option<std::time::Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_timeout_is_read_from_the_forms_clients_use() {
        let secs = |n| Some(Some(Duration::from_secs(n)));
        assert_eq!(set_by("SET wait_timeout = 1"), secs(1));
        assert_eq!(set_by("set @@session.wait_timeout=30;"), secs(30));
        assert_eq!(set_by("SET SESSION wait_timeout = 5, autocommit = 1"), secs(5));
        assert_eq!(set_by("SET autocommit = 1, @@wait_timeout := 7"), secs(7));
        assert_eq!(set_by("SET LOCAL wait_timeout = DEFAULT"), Some(None));
        assert_eq!(set_by("SET autocommit = 1"), None);
        assert_eq!(set_by("SET @wait_timeout = 3"), None, "a user variable");
        assert_eq!(set_by("SET GLOBAL wait_timeout = 3"), None, "not the session's");
        assert_eq!(set_by("SET wait_timeout = @x"), None, "not a number: left to the server");
        assert_eq!(set_by("SELECT 1"), None);
        assert_eq!(set_by("SETTLE wait_timeout = 1"), None);
    }
}
