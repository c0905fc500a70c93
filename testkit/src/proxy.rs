//! A loopback TCP proxy that a test can freeze, thaw and cut: what a network
//! partition looks like to a client. Frozen, it keeps every connection open
//! and forwards nothing (as a switch that silently drops packets); cut, it
//! closes every connection and accepts none until thawed.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    Frozen,
    Cut,
}

/// A proxy to one target; stops when dropped.
pub struct TcpProxy {
    addr: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    stop: CancellationToken,
}

impl TcpProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Forward);
        let mode = Arc::new(mode);
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, target, mode.clone(), stop.clone()));
        Ok(Self { addr, mode, stop })
    }

    /// Where clients connect instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Forwards nothing more, in either direction; connections stay open.
    pub fn freeze(&self) {
        self.mode.send_replace(Mode::Frozen);
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Forwards again (and accepts again after a cut).
    pub fn thaw(&self) {
        self.mode.send_replace(Mode::Forward);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    stop: CancellationToken,
) {
    loop {
        let client = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => continue,
            },
            () = stop.cancelled() => return,
        };
        if *mode.borrow() == Mode::Cut {
            continue; // dropped: the client sees the connection closed
        }
        let Ok(server) = TcpStream::connect(target).await else {
            continue;
        };
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let connection = stop.child_token();
        for (from, to) in [
            (
                Box::new(client_read) as Box<_>,
                Box::new(server_write) as Box<_>,
            ),
            (
                Box::new(server_read) as Box<_>,
                Box::new(client_write) as Box<_>,
            ),
        ] {
            tokio::spawn(pipe(from, to, mode.subscribe(), connection.clone()));
        }
    }
}

type Reader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
type Writer = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// Copies `from` to `to` while the mode is `Forward`; holds while frozen; ends
/// (closing both halves of the connection) on a cut or at either end's close.
async fn pipe(
    mut from: Reader,
    mut to: Writer,
    mut mode: watch::Receiver<Mode>,
    connection: CancellationToken,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Not reading while frozen: nothing gets through, and the sender's
        // kernel buffers fill as behind a dead link.
        let forwarding = mode
            .wait_for(|m| *m != Mode::Frozen)
            .await
            .map(|m| *m == Mode::Forward);
        if !matches!(forwarding, Ok(true)) {
            break;
        }
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            _ = mode.changed() => continue,
            () = connection.cancelled() => break,
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Data read just before a freeze is held until the thaw.
        let resumed = mode.wait_for(|m| *m != Mode::Frozen).await.map(|m| *m);
        if !matches!(resumed, Ok(Mode::Forward)) {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    connection.cancel();
    let _ = to.shutdown().await;
}
