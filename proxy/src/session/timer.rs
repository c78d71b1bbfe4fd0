//! A session's one-shot timer.

/// A session's timer (the idle timeout, the look for a moved primary): made, boxed, the first
/// time it is armed and re-armed in place after. A session that never arms one holds none, and
/// its future holds a pointer, not a timer entry.
#[derive(Default)]
pub struct Timer(Option<std::pin::Pin<Box<tokio::time::Sleep>>>);

impl Timer {
    /// Fires `after` from now (re-armed if it was armed).
    pub fn arm(&mut self, after: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + after;
        match self.0.as_mut() {
            Some(t) => t.as_mut().reset(deadline),
            None => self.0 = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Waits until it fires; never, when it was never armed.
    pub async fn fired(&mut self) {
        match self.0.as_mut() {
            Some(t) => t.as_mut().await,
            None => std::future::pending().await,
        }
    }
}
