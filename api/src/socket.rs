//! The server's socket file: created owner-only, never replacing a live server's socket or
//! another kind of file, and removed when the server stops.
//!
//! Mode 0600 from the first moment: the socket is bound inside a fresh private directory
//! (mode 0700) next to the wanted path, chmod-ed to 0600 there, and only then hard-linked to the
//! wanted path. Nobody else can reach it before the link, and the link appears with its final
//! mode. This avoids `umask`, which is process-wide and would race with the VMM's other threads
//! creating files, and a chmod after bind, which leaves a moment in which the socket is
//! reachable with the default mode. `link(2)` also refuses to replace a path that appeared in
//! the meantime, where `rename(2)` would silently replace it. The staged name is kept short
//! (`.tidal-XXXXXX/s`) because socket paths are limited to 107 bytes.
//!
//! The file is removed through a descriptor of its directory, not by path, so that a VMM that
//! has since left the host's file system (an empty mount namespace) still removes it.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use log::{debug, info, warn};
use thiserror::Error;

/// Owner read and write: only the user running the VMM may connect.
const SOCKET_MODE: u32 = 0o600;

/// Why the socket file could not be set up. Each message names the path.
#[derive(Debug, Error)]
pub enum SocketError {
    #[error("socket {} is in use by another process", path.display())]
    InUse { path: PathBuf },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("API socket path {} does not name a file", path.display())]
    NoFileName { path: PathBuf },
    #[error("cannot inspect {}: {source}", path.display())]
    Inspect { path: PathBuf, source: io::Error },
    #[error("cannot check whether socket {} is in use: {source}", path.display())]
    Probe { path: PathBuf, source: io::Error },
    #[error("cannot remove stale socket {}: {source}", path.display())]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot create socket {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot hand socket {} to user {uid}, group {gid}: {source}", path.display())]
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        source: io::Error,
    },
}

/// The socket file this server created; dropping it removes the file if it is still ours.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    /// The directory the file is in (opened `O_PATH`), and its name there.
    dir: File,
    name: CString,
    /// Device and inode of the file, to tell it from a socket someone else put there since.
    identity: (u64, u64),
}

impl SocketFile {
    /// Binds a listening socket at `path` with mode 0600. A stale socket file (nobody listens)
    /// is replaced; a live one or any other kind of file is refused.
    pub(crate) fn bind(path: &Path) -> Result<(UnixListener, SocketFile), SocketError> {
        if path.file_name().is_none() {
            return Err(SocketError::NoFileName {
                path: path.to_owned(),
            });
        }
        remove_if_stale(path)?;

        let create_error = |source| SocketError::Create {
            path: path.to_owned(),
            source,
        };
        let absolute = std::path::absolute(path).map_err(create_error)?;
        let parent = absolute.parent().unwrap_or(Path::new("/"));
        let dir = File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(parent)
            .map_err(create_error)?;
        let name = absolute
            .file_name()
            .and_then(|name| CString::new(name.as_bytes()).ok())
            .ok_or_else(|| SocketError::NoFileName {
                path: path.to_owned(),
            })?;
        let private_dir = tempfile::Builder::new()
            .prefix(".tidal-")
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(parent)
            .map_err(create_error)?;
        let staged = private_dir.path().join("s");
        let listener = UnixListener::bind(&staged).map_err(create_error)?;
        fs::set_permissions(&staged, fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(create_error)?;
        let metadata = fs::symlink_metadata(&staged).map_err(create_error)?;
        fs::hard_link(&staged, &absolute).map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => SocketError::InUse {
                path: path.to_owned(),
            },
            _ => create_error(source),
        })?;
        // `private_dir` and the staged name go away here; the socket lives on at `path`.
        drop(private_dir);

        let socket = SocketFile {
            path: absolute,
            dir,
            name,
            identity: (metadata.dev(), metadata.ino()),
        };
        Ok((listener, socket))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `uid`:`gid` the socket's owner, for a VMM about to become that user: its clients
    /// then run as that user too, and it can remove the file where the directory lets it.
    pub(crate) fn hand_to(&self, uid: u32, gid: u32) -> Result<(), SocketError> {
        std::os::unix::fs::lchown(&self.path, Some(uid), Some(gid)).map_err(|source| {
            SocketError::Chown {
                path: self.path.clone(),
                uid,
                gid,
                source,
            }
        })
    }

    /// Device and inode of the file now at the socket's name, if any.
    fn current_identity(&self) -> io::Result<(u64, u64)> {
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `dir` is an open directory descriptor, `name` a NUL-terminated string, and
        // `stat` is written by the kernel before it is read (only on success).
        let done = unsafe {
            libc::fstatat(
                self.dir.as_raw_fd(),
                self.name.as_ptr(),
                stat.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if done != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstatat succeeded, so it filled `stat`.
        let stat = unsafe { stat.assume_init() };
        Ok((stat.st_dev, stat.st_ino))
    }

    fn unlink(&self) -> io::Result<()> {
        // SAFETY: as in `current_identity`; unlinkat reads only the descriptor and the name.
        let done = unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.name.as_ptr(), 0) };
        if done == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match self.current_identity() {
            Ok(identity) if identity == self.identity => {
                if let Err(error) = self.unlink() {
                    warn!("cannot remove API socket {}: {error}", self.path.display());
                }
            }
            Ok(_) => info!(
                "API socket {} was replaced by another file; leaving it",
                self.path.display()
            ),
            Err(error) => debug!("API socket {} already gone: {error}", self.path.display()),
        }
    }
}

/// Makes sure `path` is free: nothing there, or a socket file that nobody listens on any more
/// (left by a VMM that died), which is removed.
fn remove_if_stale(path: &Path) -> Result<(), SocketError> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Inspect {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_owned(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse {
            path: path.to_owned(),
        }),
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
            info!("removing stale API socket {}", path.display());
            match fs::remove_file(path) {
                Err(source) if source.kind() != io::ErrorKind::NotFound => {
                    Err(SocketError::RemoveStale {
                        path: path.to_owned(),
                        source,
                    })
                }
                _ => Ok(()),
            }
        }
        Err(source) => Err(SocketError::Probe {
            path: path.to_owned(),
            source,
        }),
    }
}
