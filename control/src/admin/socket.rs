//! The admin's socket: TCP, or a Unix socket at a path (Envoy `admin.address.pipe`).
//!
//! Guarantees: a Unix socket path left behind by a process that is gone is replaced; one a
//! live process still serves is not (binding fails with `AddrInUse`), and a path that is not
//! a socket is never removed.

use crate::rib::AdminAddress;
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A bound admin listener.
#[derive(Debug)]
pub enum AdminListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl AdminListener {
    /// Binds `address`.
    pub fn bind(address: &AdminAddress) -> io::Result<AdminListener> {
        match address {
            AdminAddress::Tcp(a) => TcpListener::bind(a).map(AdminListener::Tcp),
            AdminAddress::Pipe { path, mode } => bind_unix(path, *mode).map(AdminListener::Unix),
        }
    }
}

fn bind_unix(path: &Path, mode: u32) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Ok(_) if UnixStream::connect(path).is_ok() => {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{}: another process serves this socket", path.display()),
            ))
        }
        // A socket nobody answers on: left by a process that is gone.
        Ok(_) => std::fs::remove_file(path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    if mode != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(listener)
}

/// One admin connection, on the admin's runtime.
#[derive(Debug)]
pub(super) enum AdminStream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl AdminStream {
    /// Sends what is written at once (TCP_NODELAY; nothing to do on a Unix socket).
    pub(super) fn set_nodelay(&self) {
        if let AdminStream::Tcp(s) = self {
            let _ = s.set_nodelay(true);
        }
    }
}

impl AsyncRead for AdminStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AdminStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            AdminStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AdminStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AdminStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            AdminStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AdminStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            AdminStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    /// Half-closes (`shutdown(SHUT_WR)`).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AdminStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            AdminStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_socket_is_replaced_a_live_one_and_a_file_are_not() {
        let dir = std::env::temp_dir().join(format!("sy-admin-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admin.sock");
        let pipe = AdminAddress::Pipe {
            path: path.clone(),
            mode: 0o660,
        };
        let live = AdminListener::bind(&pipe).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let err = AdminListener::bind(&pipe).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        drop(live); // the file stays, as when a process is killed
        assert!(path.exists());
        let again = AdminListener::bind(&pipe).expect("a stale socket is replaced");
        drop(again);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"not a socket").unwrap();
        let err = AdminListener::bind(&pipe).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
