//! Zero-downtime restart (`kill -USR2`): a new Levee process from the binary on disk takes
//! over the listening sockets themselves, then the old process drains and exits.
//!
//! Why inherited sockets and not a second bind on the same port: with `SO_REUSEPORT` the
//! kernel spreads new connections over every socket in the group, and a socket that closes
//! takes the connections waiting in its accept queue down with it (they are reset). Passing
//! the very same sockets to the successor means no queue is ever closed: both processes
//! accept from the same queues for a moment, then only the new one does.
//!
//! The handshake: the old process clears close-on-exec on its listening sockets and on one end
//! of a socket pair, starts the binary at the path it was started from (which may hold a
//! newer build by now: that is how binaries are upgraded) with the same arguments and two environment
//! variables (`LEVEE_LISTEN_FDS`: which descriptor belongs to which listener;
//! `LEVEE_READY_FD`: where to say "ready"), and waits. The successor binds nothing it
//! inherited, starts, and writes `ready` once it serves. Only then does the old process
//! stop accepting and drain. If the successor exits or stays silent past the timeout, the
//! old process logs why, stops the successor, and keeps serving as if nothing happened.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};
use std::time::Duration;

/// Names the inherited listening sockets: `public=3,4;admin=5`.
pub const LISTEN_FDS_ENV: &str = "LEVEE_LISTEN_FDS";
/// The descriptor the successor writes `ready` to.
pub const READY_FD_ENV: &str = "LEVEE_READY_FD";
/// The admin listener's entry in [`LISTEN_FDS_ENV`] (listener names cannot contain `@`).
pub const ADMIN: &str = "@admin";

/// Sockets handed over by a predecessor, by listener name.
#[derive(Debug, Default)]
pub struct Inherited {
    pub listeners: HashMap<String, Vec<TcpListener>>,
    pub admin: Option<TcpListener>,
    ready: Option<UnixStream>,
}

/// Why a restart did not happen (the running process keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    #[error("cannot prepare the sockets for the new process: {0}")]
    Sockets(std::io::Error),
    #[error("cannot start the new process: {0}")]
    Spawn(std::io::Error),
    #[error("the new process exited before it was ready ({0})")]
    Exited(String),
    #[error("the new process was not ready within {0:?}; it was stopped")]
    Timeout(Duration),
}

impl Inherited {
    /// Takes the sockets a predecessor passed in the environment (and removes the variables,
    /// so they are taken once). `None` when this process was started normally.
    pub fn from_env() -> Result<Option<Inherited>, String> {
        let Some(list) = std::env::var_os(LISTEN_FDS_ENV) else {
            return Ok(None);
        };
        let ready = std::env::var_os(READY_FD_ENV);
        std::env::remove_var(LISTEN_FDS_ENV);
        std::env::remove_var(READY_FD_ENV);
        let list = list.to_string_lossy().into_owned();
        let mut inherited = Inherited::default();
        for entry in list.split(';').filter(|e| !e.is_empty()) {
            let (name, fds) = entry
                .split_once('=')
                .ok_or_else(|| format!("{LISTEN_FDS_ENV}: `{entry}` is not NAME=FD,FD"))?;
            for fd in fds.split(',') {
                let fd: RawFd = fd
                    .parse()
                    .map_err(|_| format!("{LISTEN_FDS_ENV}: `{fd}` is not a descriptor number"))?;
                let socket = take_listener(fd)?;
                if name == ADMIN {
                    inherited.admin = Some(socket);
                } else {
                    inherited
                        .listeners
                        .entry(name.to_owned())
                        .or_default()
                        .push(socket);
                }
            }
        }
        if let Some(fd) = ready.and_then(|f| f.to_string_lossy().parse::<RawFd>().ok()) {
            inherited.ready = Some(take_stream(fd)?);
        }
        Ok(Some(inherited))
    }

    /// Tells the predecessor this process serves; it then drains and exits.
    pub fn announce_ready(&mut self) {
        if let Some(mut ready) = self.ready.take() {
            if let Err(error) = ready.write_all(b"ready\n") {
                tracing::warn!(%error, "cannot tell the previous process that this one is ready");
            }
        }
    }
}

/// Takes ownership of inherited descriptor `fd` after checking it is a listening TCP socket.
fn take_listener(fd: RawFd) -> Result<TcpListener, String> {
    check_open(fd)?;
    // SAFETY: `fd` was named in LEVEE_LISTEN_FDS by the predecessor Levee process, which
    // cleared close-on-exec on exactly these descriptors so that this process would own them.
    // The variable is removed before any descriptor is taken and each number is taken once,
    // so nothing else in this process owns or closes it; `check_open` confirmed it is open.
    #[allow(unsafe_code)]
    let socket = unsafe { socket2::Socket::from_raw_fd(fd) };
    let listening = socket.is_listener().unwrap_or(false);
    let tcp = socket.r#type().is_ok_and(|t| t == socket2::Type::STREAM)
        && socket.local_addr().is_ok_and(|a| a.as_socket().is_some());
    if !listening || !tcp {
        return Err(format!("inherited descriptor {fd} is not a listening TCP socket"));
    }
    socket
        .set_cloexec(true)
        .and_then(|()| socket.set_nonblocking(true))
        .map_err(|e| format!("inherited descriptor {fd}: {e}"))?;
    Ok(socket.into())
}

/// Takes ownership of the inherited readiness socket `fd`.
fn take_stream(fd: RawFd) -> Result<UnixStream, String> {
    check_open(fd)?;
    // SAFETY: as for `take_listener`: the predecessor passed this one descriptor in
    // LEVEE_READY_FD for this process to own, the variable is gone, and it is taken once.
    #[allow(unsafe_code)]
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    socket2::SockRef::from(&stream)
        .set_cloexec(true)
        .map_err(|e| format!("inherited descriptor {fd}: {e}"))?;
    Ok(stream)
}

/// Refuses descriptor numbers that are not open (a wrong or stale variable) before anything
/// takes ownership of them.
fn check_open(fd: RawFd) -> Result<(), String> {
    if fd < 3 || !std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists() {
        return Err(format!("inherited descriptor {fd} is not open"));
    }
    Ok(())
}

/// Starts the successor with `sockets` (listener name, socket) and `admin`, and waits up to
/// `timeout` for it to say it is ready.
pub fn spawn_successor(
    sockets: &[(std::sync::Arc<str>, TcpListener)],
    admin: Option<&TcpListener>,
    timeout: Duration,
) -> Result<Child, RestartError> {
    let (mut ours, theirs) = UnixStream::pair().map_err(RestartError::Sockets)?;
    let mut by_name: Vec<(String, Vec<RawFd>)> = Vec::new();
    for (name, socket) in sockets {
        let fd = socket.as_raw_fd();
        match by_name.iter_mut().find(|(n, _)| **n == **name) {
            Some((_, fds)) => fds.push(fd),
            None => by_name.push((name.to_string(), vec![fd])),
        }
    }
    if let Some(admin) = admin {
        by_name.push((ADMIN.to_owned(), vec![admin.as_raw_fd()]));
    }
    let list: Vec<String> = by_name
        .iter()
        .map(|(name, fds)| {
            let fds: Vec<String> = fds.iter().map(ToString::to_string).collect();
            format!("{name}={}", fds.join(","))
        })
        .collect();
    // Only these descriptors cross the exec; close-on-exec is set again right after.
    let inheritable: Vec<socket2::SockRef<'_>> = sockets
        .iter()
        .map(|(_, s)| socket2::SockRef::from(s))
        .chain(admin.map(socket2::SockRef::from))
        .chain(std::iter::once(socket2::SockRef::from(&theirs)))
        .collect();
    let set_all = |inherit: bool| inheritable.iter().try_for_each(|s| s.set_cloexec(!inherit));
    set_all(true).map_err(RestartError::Sockets)?;
    let exe = binary_on_disk();
    let spawned = exe.and_then(|exe| {
        Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(LISTEN_FDS_ENV, list.join(";"))
            .env(READY_FD_ENV, theirs.as_raw_fd().to_string())
            .spawn()
    });
    let restored = set_all(false);
    drop(inheritable);
    drop(theirs);
    let mut child = spawned.map_err(RestartError::Spawn)?;
    if let Err(error) = restored {
        tracing::warn!(%error, "cannot set close-on-exec again on the listening sockets");
    }
    ours.set_read_timeout(Some(timeout))
        .map_err(RestartError::Sockets)?;
    let mut answer = [0u8; 6];
    match ours.read_exact(&mut answer) {
        Ok(()) if &answer == b"ready\n" => Ok(child),
        outcome => {
            let timed_out = matches!(&outcome, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
            let _ = child.kill();
            let status = child.wait();
            if timed_out {
                Err(RestartError::Timeout(timeout))
            } else {
                Err(RestartError::Exited(match status {
                    Ok(status) => status.to_string(),
                    Err(error) => error.to_string(),
                }))
            }
        }
    }
}

/// The path this process's binary was started from. Once the file there is replaced (an
/// upgrade renames a new build over it), Linux reports the running image as
/// `PATH (deleted)`; the successor must start from PATH itself, the new build.
fn binary_on_disk() -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let exe = std::env::current_exe()?;
    let bytes = exe.as_os_str().as_bytes();
    match bytes.strip_suffix(b" (deleted)") {
        Some(path) => Ok(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(path))),
        None => Ok(exe),
    }
}
