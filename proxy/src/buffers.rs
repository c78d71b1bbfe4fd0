//! Client read buffers kept per session thread. An idle session (no transaction, nothing owed,
//! its client silent) holds none: it waits for its socket to become readable, then takes a
//! buffer from its thread's free list, and gives it back when it is idle again. 10,000 idle
//! clients cost no 80 MB of buffers, and a busy session takes and gives back without an
//! allocation (a pop and a push).

use std::cell::RefCell;

use bytes::BytesMut;

/// Size of a client read buffer.
pub const SIZE: usize = 8 * 1024;

/// Most buffers one thread keeps for reuse (the sessions it serves at the same moment).
const KEEP: usize = 64;

thread_local! {
    static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A read buffer with at least `SIZE / 2` bytes free.
pub fn take() -> BytesMut {
    FREE.with(|f| f.borrow_mut().pop()).unwrap_or_else(|| BytesMut::with_capacity(SIZE))
}

/// Gives back a buffer whose contents are consumed; one that is too small (most of it handed out
/// with a message) or large (a big message) is freed instead.
pub fn give(mut buf: BytesMut) {
    buf.clear();
    if buf.capacity() < SIZE / 2 || buf.capacity() > 8 * SIZE {
        return;
    }
    FREE.with(|f| {
        let mut free = f.borrow_mut();
        if free.len() < KEEP {
            free.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_buffer_given_back_is_taken_again_and_small_ones_are_not_kept() {
        let buf = super::take();
        assert!(buf.capacity() >= super::SIZE / 2);
        let ptr = buf.as_ptr();
        super::give(buf);
        assert_eq!(super::take().as_ptr(), ptr, "reused, not allocated");
        super::give(bytes::BytesMut::with_capacity(16));
        assert!(super::take().capacity() >= super::SIZE / 2, "a small buffer is not handed out");
    }
}
