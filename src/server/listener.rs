//! What strata's listener does before HTTP: at most `--web.max-connections` connections at
//! once (further ones wait in the kernel's backlog), a read deadline per request
//! (`--web.read-timeout`: a request must arrive whole, body included, within it, and an idle
//! connection is closed after it — so slow clients cannot hold connections), and TLS when
//! `--web.config.file` names a certificate and key (`tls_server_config`, as Prometheus'
//! web configuration), re-read on SIGHUP.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use crate::yaml;

/// `--web.config.file`: `tls_server_config` (`cert_file`, `key_file`) in Prometheus' web
/// configuration format. Relative paths are taken from the file's directory.
#[derive(Debug, Clone)]
pub(crate) struct WebConfig {
    pub(crate) path: PathBuf,
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
}

impl WebConfig {
    pub(crate) fn load(path: &Path) -> Result<WebConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fail = |e: yaml::PosError| format!("{}: {e}", path.display());
        let root = yaml::parse(&text).map_err(fail)?;
        let mut cert = None;
        let mut key = None;
        for (k, v) in root
            .fields("web config", &["tls_server_config"])
            .map_err(fail)?
        {
            if k != "tls_server_config" {
                continue;
            }
            for (f, n) in v
                .fields("tls_server_config", &["cert_file", "key_file"])
                .map_err(fail)?
            {
                let p = base.join(n.str(f).map_err(fail)?);
                if f == "cert_file" {
                    cert = Some(p);
                } else {
                    key = Some(p);
                }
            }
        }
        match (cert, key) {
            (Some(cert_file), Some(key_file)) => {
                let c = WebConfig {
                    path: path.to_owned(),
                    cert_file,
                    key_file,
                };
                c.server_config()?;
                Ok(c)
            }
            _ => Err(format!(
                "{}: tls_server_config needs cert_file and key_file",
                path.display()
            )),
        }
    }

    /// A rustls server configuration from the certificate chain and key on disk.
    pub(crate) fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(&self.cert_file)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cert_file {}: {e}", self.cert_file.display()))?;
        if chain.is_empty() {
            return Err(format!(
                "cert_file {}: no certificate",
                self.cert_file.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key_file)
            .map_err(|e| format!("key_file {}: {e}", self.key_file.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| format!("{}: {e}", self.cert_file.display()))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// The TLS configuration in use, replaced on reload.
pub(crate) type TlsState = Arc<RwLock<Arc<rustls::ServerConfig>>>;

/// Re-reads the certificate and key; a failure keeps the ones in use.
pub(crate) fn reload_tls(web: &WebConfig, state: &TlsState) -> Result<(), String> {
    let cfg = web.server_config()?;
    *state.write().unwrap_or_else(|p| p.into_inner()) = cfg;
    Ok(())
}

/// A plain or TLS connection.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket under the stream.
    fn socket(&self) -> RawFd {
        match self {
            Stream::Plain(s) => s.as_raw_fd(),
            Stream::Tls(s) => s.get_ref().0.as_raw_fd(),
        }
    }
}

/// The socket of the connection a request came on: its handler watches it to notice the
/// client leaving while the handler keeps its thread ([`crate::server::watch_client`]).
/// Valid while the request is handled: HTTP/1 handles a connection's requests inside
/// the task that owns the connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnSocket(pub(crate) RawFd);

impl Connected<IncomingStream<'_, Listener>> for ConnSocket {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        ConnSocket(stream.io().stream.socket())
    }
}

/// A connection holding one of the listener's slots, with the read deadline.
pub(crate) struct Conn {
    stream: Stream,
    _slot: OwnedSemaphorePermit,
    read_timeout: Duration,
    /// Running from the first read of a request (or of idleness) until the answer starts.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if this.deadline.is_none() {
            this.deadline = Some(Box::pin(tokio::time::sleep(this.read_timeout)));
        }
        match polled {
            Poll::Pending => match this.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request not read within --web.read-timeout",
                ))),
                _ => Poll::Pending,
            },
            ready => ready,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // The answer has started: the next request gets a deadline of its own.
        self.deadline = None;
        match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// strata's listener for `axum::serve`.
pub(crate) struct Listener {
    rx: tokio::sync::mpsc::Receiver<(Conn, SocketAddr)>,
    local: SocketAddr,
}

impl Listener {
    /// Accepts on `tcp` in a task of its own: a connection is taken only with a free slot,
    /// and TLS handshakes run concurrently (each within the read timeout), so one slow
    /// handshake holds up no other connection.
    pub(crate) fn new(
        tcp: TcpListener,
        max_connections: usize,
        read_timeout: Duration,
        tls: Option<TlsState>,
    ) -> io::Result<Listener> {
        let local = tcp.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let slots = Arc::new(Semaphore::new(max_connections.max(1)));
        tokio::spawn(async move {
            loop {
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let (tcp_stream, addr) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = tcp_stream.set_nodelay(true);
                let tx = tx.clone();
                match &tls {
                    None => {
                        let conn = Conn {
                            stream: Stream::Plain(tcp_stream),
                            _slot: slot,
                            read_timeout,
                            deadline: None,
                        };
                        if tx.send((conn, addr)).await.is_err() {
                            return;
                        }
                    }
                    Some(state) => {
                        let cfg = Arc::clone(&state.read().unwrap_or_else(|p| p.into_inner()));
                        tokio::spawn(async move {
                            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                            match tokio::time::timeout(read_timeout, acceptor.accept(tcp_stream))
                                .await
                            {
                                Ok(Ok(s)) => {
                                    let conn = Conn {
                                        stream: Stream::Tls(Box::new(s)),
                                        _slot: slot,
                                        read_timeout,
                                        deadline: None,
                                    };
                                    let _ = tx.send((conn, addr)).await;
                                }
                                Ok(Err(e)) => {
                                    tracing::debug!(peer = %addr, error = %e, "TLS handshake failed")
                                }
                                Err(_) => {
                                    tracing::debug!(peer = %addr, "TLS handshake timed out")
                                }
                            }
                        });
                    }
                }
            }
        });
        Ok(Listener { rx, local })
    }
}

impl axum::serve::Listener for Listener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task ended (the runtime is shutting down): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}
