//! TLS (rustls): the acceptor built from a cluster's `[cluster.tls]` files, the connector for
//! `[cluster.backend_tls]`, and the connection type that is plain TCP until TLS starts.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The ALPN protocol name of PostgreSQL (libpq 17 sends it; direct TLS requires it).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Builds the acceptor for `tls`: its certificate chain and key, and with `client_ca`, a
/// verifier that requires client certificates it signed. For PostgreSQL clusters it offers the
/// `postgresql` ALPN protocol: a client that offers ALPN without it is refused, as PostgreSQL
/// does.
///
/// # Errors
/// A file that cannot be read or parsed, naming it.
pub fn acceptor(tls: &sqlswitch_config::Tls, protocol: sqlswitch_config::Protocol) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| format!("tls.cert {}: {e}", tls.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("tls.cert {}: no certificate in it", tls.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| format!("tls.key {}: {e}", tls.key.display()))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &tls.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in
                CertificateDer::pem_file_iter(path).map_err(|e| format!("tls.client_ca {}: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| format!("tls.client_ca {}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("tls.client_ca {}: {e}", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("tls.client_ca {}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config =
        builder.with_single_cert(certs, key).map_err(|e| format!("tls.cert/tls.key {}: {e}", tls.cert.display()))?;
    if protocol == sqlswitch_config::Protocol::Postgres {
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    }
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A connection that is plain TCP, or TLS once negotiated; or, to a backend on this host, a
/// Unix socket (never encrypted, as libpq does not encrypt those either).
pub enum Stream<T> {
    /// Plain TCP.
    Plain(TcpStream),
    /// A Unix socket (backends only).
    Unix(UnixStream),
    /// TLS over TCP.
    Tls(Box<T>),
    /// Between the two, while the TLS handshake runs (never read or written).
    Upgrading,
}

/// A client connection.
pub type ClientStream = Stream<tokio_rustls::server::TlsStream<Prefixed>>;

/// A socket with bytes already read from it in front: a MySQL client sends its TLS ClientHello
/// right behind its SSLRequest, without waiting, so one read may hold the start of both.
pub struct Prefixed {
    prefix: bytes::BytesMut,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A connection to a backend.
pub type BackendStream = Stream<tokio_rustls::client::TlsStream<TcpStream>>;

impl<T: AsyncRead + AsyncWrite + Unpin> Stream<T> {
    /// Writes all of `bytes` and flushes them: TLS buffers records that must be pushed out
    /// before the proxy waits for the peer's answer. Plain TCP flushes nothing.
    ///
    /// # Errors
    /// The socket failed.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes).await?;
        if matches!(self, Self::Tls(_)) {
            self.flush().await?;
        }
        Ok(())
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// Whether [`Stream::readable`] can wait for input with no buffer held: plain sockets
    /// (TLS keeps decrypted bytes of its own, which only a read hands out).
    pub fn parks_unbuffered(&self) -> bool {
        matches!(self, Self::Plain(_) | Self::Unix(_))
    }

    /// Ready when a read may find input (plain sockets; others are ready at once). It keeps
    /// no state of its own: the socket's registration holds the waker.
    ///
    /// # Errors
    /// The socket failed.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Plain(s) => s.poll_read_ready(cx),
            Self::Unix(s) => s.poll_read_ready(cx),
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl ClientStream {
    /// Runs the server side of the TLS handshake on a plain connection.
    ///
    /// # Errors
    /// The handshake failed (the connection is unusable then).
    /// `early` holds bytes already read that belong to the TLS handshake (they are taken).
    pub async fn upgrade(&mut self, acceptor: &TlsAcceptor, early: &mut bytes::BytesMut) -> io::Result<()> {
        let Self::Plain(tcp) = std::mem::replace(self, Self::Upgrading) else {
            return Err(io::Error::other("TLS requested twice"));
        };
        let tls = acceptor.accept(Prefixed { prefix: std::mem::take(early), inner: tcp }).await?;
        *self = Self::Tls(Box::new(tls));
        Ok(())
    }

    /// The ALPN protocol the TLS handshake agreed on, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Self::Tls(t) => t.get_ref().1.alpn_protocol(),
            _ => None,
        }
    }
}

impl BackendStream {
    /// Connects to a backend at `address`: `host:port`, or the path of a Unix socket.
    ///
    /// # Errors
    /// The connection failed.
    pub async fn connect(address: &str) -> io::Result<Self> {
        if sqlswitch_config::is_unix_socket(address) {
            return Ok(Self::Unix(UnixStream::connect(address).await?));
        }
        let tcp = TcpStream::connect(address).await?;
        tcp.set_nodelay(true)?;
        Ok(Self::Plain(tcp))
    }

    /// Whether this is a Unix socket (where TLS is not used).
    pub fn is_unix(&self) -> bool {
        matches!(self, Self::Unix(_))
    }

    /// Where a CancelRequest for this connection goes: the address it reached (a host name may
    /// name several servers), or the configured `address` for a Unix socket.
    pub fn cancel_address(&self, address: &str) -> std::sync::Arc<str> {
        let peer = match self {
            Self::Plain(s) => s.peer_addr().ok(),
            Self::Tls(t) => t.get_ref().0.peer_addr().ok(),
            Self::Unix(_) | Self::Upgrading => None,
        };
        peer.map_or_else(|| address.into(), |p| p.to_string().into())
    }

    /// Runs the client side of the TLS handshake on a plain connection.
    ///
    /// # Errors
    /// The handshake failed, or the certificate did not verify.
    pub async fn start_tls(&mut self, connector: &TlsConnector, name: ServerName<'static>) -> io::Result<()> {
        let Self::Plain(tcp) = std::mem::replace(self, Self::Upgrading) else {
            return Err(io::Error::other("TLS started twice"));
        };
        let tls = connector.connect(name, tcp).await?;
        *self = Self::Tls(Box::new(tls));
        Ok(())
    }

    /// Moves the socket's registration to the current session thread (see
    /// [`crate::workers::rehome`]), under TLS too: the TLS state does not depend on it.
    ///
    /// # Errors
    /// The socket could not be re-registered.
    pub fn rehome(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(tcp) => crate::workers::rehome(tcp),
            Self::Unix(unix) => crate::workers::rehome_unix(unix),
            Self::Tls(t) => crate::workers::rehome(t.get_mut().0),
            Self::Upgrading => Err(upgrading()),
        }
    }

    /// Whether the socket is open with nothing to read: what an idle connection must be. Any
    /// byte (under TLS too) means it is not idle as it should be.
    pub fn is_quiet(&self) -> bool {
        let mut probe = [0u8; 1];
        let r = match self {
            Self::Plain(s) => s.try_read(&mut probe),
            Self::Unix(s) => s.try_read(&mut probe),
            Self::Tls(t) => t.get_ref().0.try_read(&mut probe),
            Self::Upgrading => return false,
        };
        matches!(r, Err(ref e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

fn upgrading() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the TLS handshake did not finish")
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Upgrading => Poll::Ready(Ok(())),
        }
    }
}

/// How the proxy checks a backend's certificate (libpq's `sslmode` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt, check nothing.
    Nothing,
    /// The chain must lead to the configured CA; any name.
    Ca,
    /// The chain must lead to the CA and name the backend's host.
    Full,
}

/// A connector for backends: `verify` against the roots in `ca` (PEM; the system has none
/// built in, so verify-ca/verify-full need it).
///
/// # Errors
/// The CA file cannot be read or parsed.
pub fn connector(verify: Verify, ca: Option<&std::path::Path>) -> Result<TlsConnector, String> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    if let Some(path) = ca {
        for cert in
            CertificateDer::pem_file_iter(path).map_err(|e| format!("backend_tls.ca {}: {e}", path.display()))?
        {
            let cert = cert.map_err(|e| format!("backend_tls.ca {}: {e}", path.display()))?;
            roots.add(cert).map_err(|e| format!("backend_tls.ca {}: {e}", path.display()))?;
        }
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider)).build();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match (verify, webpki) {
        (Verify::Full, Ok(v)) => builder.with_webpki_verifier(v).with_no_client_auth(),
        (Verify::Ca, Ok(v)) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Lenient { chain: Some(v), provider }))
            .with_no_client_auth(),
        (Verify::Nothing, _) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Lenient { chain: None, provider }))
            .with_no_client_auth(),
        (_, Err(e)) => return Err(format!("backend_tls.ca: {e}")),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// verify-ca (`chain`: the chain is checked, the name is not) and require/prefer (no `chain`:
/// nothing is checked, as libpq does for those modes). The handshake's signatures always are.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A cluster's TLS to its backends: the connector and whether a backend without TLS is refused.
pub struct BackendTls {
    /// The connector, with the mode's verification.
    pub connector: TlsConnector,
    /// `require`, `verify-ca`, `verify-full`: no TLS, no connection.
    pub required: bool,
}

impl BackendTls {
    /// From `[cluster.backend_tls]`; `None` for `disable`.
    ///
    /// # Errors
    /// The CA file cannot be read or parsed.
    pub fn new(config: &sqlswitch_config::BackendTls) -> Result<Option<Self>, String> {
        use sqlswitch_config::TlsMode;
        let verify = match config.mode {
            TlsMode::Disable => return Ok(None),
            TlsMode::Prefer | TlsMode::Require => Verify::Nothing,
            TlsMode::VerifyCa => Verify::Ca,
            TlsMode::VerifyFull => Verify::Full,
        };
        let connector = connector(verify, config.ca.as_deref())?;
        Ok(Some(Self { connector, required: config.mode != TlsMode::Prefer }))
    }

    /// The name a backend at `addr` (`host:port`) is verified against.
    pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?} is not a host name for TLS: {e}"))
    }
}
