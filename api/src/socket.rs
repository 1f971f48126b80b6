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

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
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
}

/// The socket file this server created; dropping it removes the file if it is still ours.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
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
        // Absolute, so that the file is found again at shutdown whatever the working directory.
        let absolute = std::path::absolute(path).map_err(create_error)?;
        let parent = absolute.parent().unwrap_or(Path::new("/"));
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
            identity: (metadata.dev(), metadata.ino()),
        };
        Ok((listener, socket))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(metadata) if (metadata.dev(), metadata.ino()) == self.identity => {
                if let Err(error) = fs::remove_file(&self.path) {
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
