//! A client session bound to one backend connection: bytes flow both ways without being
//! decoded. The proxy reads only message headers, plus the bodies of `Q` and `P` (to classify
//! the SQL) and of `Z` (transaction status) and `S` (parameter changes) from the backend.
//! Forwarding is zero-copy: complete messages at the front of a read buffer are written on in
//! one `write_all` straight from that buffer, and a message larger than what has arrived is
//! streamed through as it comes, so a huge row never has to fit in memory.
//!
//! In a read-only session a statement the classifier knows to write is refused with SQLSTATE
//! 25006 and never sent. The refusal keeps the protocol's ordering: when the backend still owes
//! answers to earlier messages, the refusal waits for them, or rides just before the
//! ReadyForQuery of the pipeline it belongs to.

use bytes::{Buf, BytesMut};
use sqlswitch_protocol::classify;
use sqlswitch_protocol::pg::backend::{self as msg, Severity, TxStatus};
use sqlswitch_protocol::pg::frame::{self, HEADER_LEN};
use sqlswitch_protocol::pg::frontend as fe;
use sqlswitch_protocol::pg::sqlstate;
use sqlswitch_protocol::ProtocolError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::backend::{BackendConn, MAX_BACKEND_MESSAGE};
use crate::metrics::{BackendMetrics, ClusterMetrics};

/// How a session ended.
#[derive(Debug)]
pub enum End {
    /// The client sent Terminate.
    Quit,
    /// The client's socket closed or failed.
    ClientGone,
    /// The backend's socket closed or failed; the client has been told.
    BackendGone,
    /// The client broke the protocol; it has been told.
    ClientError(ProtocolError),
    /// The daemon is shutting down and the session was idle; the client has been told.
    Shutdown,
}

/// After a locally refused extended-protocol message, client messages are discarded up to Sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// Nothing was forwarded in this pipeline: answer the Sync with our own ReadyForQuery.
    ReplyLocally,
    /// The backend holds earlier messages of this pipeline: forward the Sync, and put our
    /// error just before its ReadyForQuery unless the backend reports an error itself.
    ForwardSync,
}

/// Per-session settings that do not change while it runs.
pub struct Settings<'a> {
    /// Refuse writes with 25006.
    pub read_only: bool,
    /// Largest client message buffered.
    pub max_message: usize,
    /// Config's extra read-only functions.
    pub read_only_functions: &'a [String],
    /// Cluster handles.
    pub cluster_metrics: &'a ClusterMetrics,
    /// Handles of the backend in use.
    pub backend_metrics: &'a BackendMetrics,
}

/// A running session.
pub struct Session<'a> {
    client: TcpStream,
    cbuf: BytesMut,
    /// The backend connection; returned to the caller when the session ends.
    pub backend: BackendConn,
    settings: Settings<'a>,
    /// Sync/Query/FunctionCall messages forwarded whose ReadyForQuery has not come back.
    outstanding: u32,
    /// Extended-protocol messages forwarded since the last Sync.
    pipeline_open: bool,
    skip: Option<Skip>,
    inject: Option<BytesMut>,
    /// Client input waits until the backend has answered everything forwarded.
    hold: bool,
    /// Bytes of a backend message still to stream through unexamined.
    passthrough: usize,
}

impl<'a> Session<'a> {
    /// A session over an authenticated client and a logged-in backend; `cbuf` holds any client
    /// bytes already read past the startup.
    pub fn new(client: TcpStream, cbuf: BytesMut, backend: BackendConn, settings: Settings<'a>) -> Self {
        Self {
            client,
            cbuf,
            backend,
            settings,
            outstanding: 0,
            pipeline_open: false,
            skip: None,
            inject: None,
            hold: false,
            passthrough: 0,
        }
    }

    /// Whether the backend connection is between transactions with nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.outstanding == 0 && !self.pipeline_open && self.backend.tx == TxStatus::Idle && self.passthrough == 0
    }

    /// The client socket, for the final words.
    pub fn client(&mut self) -> &mut TcpStream {
        &mut self.client
    }

    /// Relays until the client or the backend leaves, or `shutdown` fires while idle.
    ///
    /// # Cancellation safety
    /// Run it to completion: it is the session's only task.
    pub async fn run(&mut self, shutdown: &CancellationToken) -> End {
        if !self.cbuf.is_empty() {
            if let Err(end) = self.on_client().await {
                return end;
            }
        }
        loop {
            if self.cbuf.capacity() - self.cbuf.len() < 4096 {
                self.cbuf.reserve(8192);
            }
            if self.backend.buf.capacity() - self.backend.buf.len() < 4096 {
                self.backend.buf.reserve(16 * 1024);
            }
            let idle = self.is_idle() && self.cbuf.is_empty();
            let step = tokio::select! {
                biased;
                () = shutdown.cancelled(), if idle => return End::Shutdown,
                r = self.backend.stream.read_buf(&mut self.backend.buf) => match r {
                    Ok(0) | Err(_) => Err(End::BackendGone),
                    Ok(_) => Ok(true),
                },
                r = self.client.read_buf(&mut self.cbuf), if !self.hold => match r {
                    Ok(0) | Err(_) => Err(End::ClientGone),
                    Ok(_) => Ok(false),
                },
            };
            let result = match step {
                Ok(true) => self.on_backend().await,
                Ok(false) => self.on_client().await,
                Err(End::BackendGone) => {
                    self.tell_client_backend_gone().await;
                    return End::BackendGone;
                }
                Err(end) => return end,
            };
            if let Err(end) = result {
                return end;
            }
        }
    }

    async fn tell_client_backend_gone(&mut self) {
        let mut out = BytesMut::new();
        msg::error_response(
            &mut out,
            Severity::Fatal,
            sqlstate::CONNECTION_FAILURE,
            "the database server closed the connection unexpectedly",
        );
        let _ = self.client.write_all(&out).await;
    }

    /// Writes the first `n` bytes of the client buffer to the backend.
    async fn forward_client(&mut self, n: usize) -> Result<(), End> {
        if n > 0 {
            if self.backend.stream.write_all(&self.cbuf[..n]).await.is_err() {
                self.tell_client_backend_gone().await;
                return Err(End::BackendGone);
            }
            self.cbuf.advance(n);
        }
        Ok(())
    }

    async fn send_client(&mut self, bytes: &[u8]) -> Result<(), End> {
        self.client.write_all(bytes).await.map_err(|_| End::ClientGone)
    }

    /// Handles every complete client message in the buffer.
    async fn on_client(&mut self) -> Result<(), End> {
        let mut fwd = 0;
        while !self.hold {
            let header = match frame::peek_header(&self.cbuf[fwd..], self.settings.max_message) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => return Err(self.client_error(fwd, e).await),
            };
            if self.cbuf.len() - fwd < header.total_len {
                break;
            }
            let len = header.total_len;
            if let Some(skip) = self.skip {
                self.forward_client(fwd).await?;
                fwd = 0;
                self.cbuf.advance(len);
                if header.tag == fe::SYNC {
                    self.skip = None;
                    self.end_skip(skip).await?;
                }
                continue;
            }
            match header.tag {
                fe::QUERY | fe::PARSE => {
                    let body = &self.cbuf[fwd + HEADER_LEN..fwd + len];
                    let text =
                        if header.tag == fe::QUERY { fe::query_text(body) } else { fe::parse(body).map(|(_, q)| q) };
                    let text = match text {
                        Ok(t) => t,
                        Err(e) => return Err(self.client_error(fwd, e).await),
                    };
                    if self.settings.read_only
                        && classify::classify_pg_with(text, self.settings.read_only_functions).refused_read_only()
                    {
                        self.forward_client(fwd).await?;
                        fwd = 0;
                        self.refuse(header.tag, len).await?;
                        continue;
                    }
                    if header.tag == fe::QUERY {
                        self.settings.backend_metrics.statements.increment(1);
                        self.outstanding += 1;
                    } else {
                        self.pipeline_open = true;
                    }
                }
                fe::SYNC | fe::FUNCTION_CALL => {
                    self.outstanding += 1;
                    self.pipeline_open = false;
                }
                fe::EXECUTE => {
                    self.settings.backend_metrics.statements.increment(1);
                    self.pipeline_open = true;
                }
                fe::BIND | fe::DESCRIBE | fe::CLOSE | fe::FLUSH => self.pipeline_open = true,
                fe::TERMINATE => {
                    self.forward_client(fwd).await?;
                    return Err(End::Quit);
                }
                _ => {}
            }
            fwd += len;
        }
        self.forward_client(fwd).await
    }

    /// Refuses the write at the front of the client buffer (a `Q` or `P` of `len` bytes).
    async fn refuse(&mut self, tag: u8, len: usize) -> Result<(), End> {
        let must_wait = self.outstanding > 0 && (tag == fe::QUERY || !self.pipeline_open);
        if must_wait {
            // The backend still owes answers to earlier messages: refuse once it has given
            // them, so the client reads every answer in order.
            self.hold = true;
            return Ok(());
        }
        self.settings.cluster_metrics.refused.increment(1);
        self.cbuf.advance(len);
        let mut err = BytesMut::new();
        msg::error_response(
            &mut err,
            Severity::Error,
            sqlstate::READ_ONLY_SQL_TRANSACTION,
            "cannot execute a write in a read-only session (sqlswitch refused it before it reached any server)",
        );
        if tag == fe::QUERY {
            msg::ready_for_query(&mut err, self.backend.tx);
            return self.send_client(&err).await;
        }
        if self.pipeline_open {
            self.inject = Some(err);
            self.skip = Some(Skip::ForwardSync);
            Ok(())
        } else {
            self.skip = Some(Skip::ReplyLocally);
            self.send_client(&err).await
        }
    }

    async fn end_skip(&mut self, skip: Skip) -> Result<(), End> {
        match skip {
            Skip::ReplyLocally => {
                let mut out = BytesMut::new();
                msg::ready_for_query(&mut out, self.backend.tx);
                self.send_client(&out).await
            }
            Skip::ForwardSync => {
                let mut sync = BytesMut::with_capacity(HEADER_LEN);
                sync.extend_from_slice(&[fe::SYNC, 0, 0, 0, 4]);
                if self.backend.stream.write_all(&sync).await.is_err() {
                    self.tell_client_backend_gone().await;
                    return Err(End::BackendGone);
                }
                self.outstanding += 1;
                self.pipeline_open = false;
                // Hold client input until the backend's ReadyForQuery carries our error out.
                self.hold = true;
                Ok(())
            }
        }
    }

    async fn client_error(&mut self, fwd: usize, e: ProtocolError) -> End {
        let _ = self.forward_client(fwd).await;
        let code = match e {
            ProtocolError::TooLarge { .. } => sqlstate::PROGRAM_LIMIT_EXCEEDED,
            _ => sqlstate::PROTOCOL_VIOLATION,
        };
        let mut out = BytesMut::new();
        msg::error_response(&mut out, Severity::Fatal, code, &e.to_string());
        let _ = self.client.write_all(&out).await;
        End::ClientError(e)
    }

    /// Forwards every backend message in the buffer, watching `Z`, `E` and `S`.
    async fn on_backend(&mut self) -> Result<(), End> {
        let mut fwd = 0;
        loop {
            let buf_len = self.backend.buf.len();
            if self.passthrough > 0 {
                let n = self.passthrough.min(buf_len - fwd);
                fwd += n;
                self.passthrough -= n;
                if self.passthrough > 0 {
                    break;
                }
            }
            let header = match frame::peek_header(&self.backend.buf[fwd..], MAX_BACKEND_MESSAGE) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(_) => {
                    self.tell_client_backend_gone().await;
                    return Err(End::BackendGone);
                }
            };
            let avail = buf_len - fwd;
            match header.tag {
                msg::READY_FOR_QUERY | msg::ERROR_RESPONSE | msg::PARAMETER_STATUS => {
                    if avail < header.total_len {
                        break;
                    }
                    let body = &self.backend.buf[fwd + HEADER_LEN..fwd + header.total_len];
                    match header.tag {
                        msg::READY_FOR_QUERY => {
                            self.backend.tx = TxStatus::from_byte(body.first().copied().unwrap_or(b'T'));
                            self.outstanding = self.outstanding.saturating_sub(1);
                            if self.outstanding == 0 {
                                if let Some(err) = self.inject.take() {
                                    self.flush_backend(fwd).await?;
                                    fwd = 0;
                                    self.send_client(&err).await?;
                                }
                                self.hold = false;
                            }
                        }
                        msg::ERROR_RESPONSE => self.inject = None,
                        _ => {
                            let body = body.to_vec();
                            self.backend.note_parameter(&body);
                        }
                    }
                    fwd += header.total_len;
                }
                _ if avail >= header.total_len => fwd += header.total_len,
                _ => {
                    fwd += avail;
                    self.passthrough = header.total_len - avail;
                    break;
                }
            }
        }
        self.flush_backend(fwd).await?;
        if !self.hold && !self.cbuf.is_empty() {
            // Client messages held back while the backend caught up.
            return Box::pin(self.on_client()).await;
        }
        Ok(())
    }

    async fn flush_backend(&mut self, n: usize) -> Result<(), End> {
        if n > 0 {
            self.client.write_all(&self.backend.buf[..n]).await.map_err(|_| End::ClientGone)?;
            self.backend.buf.advance(n);
        }
        Ok(())
    }
}
