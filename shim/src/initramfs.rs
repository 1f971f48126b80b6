//! The container's root filesystem and the files Tidal adds (its init) as one newc archive, the
//! format the kernel unpacks into its rootfs at boot: the VM needs no disk and no filesystem
//! driver, and the tree is copied once, when the container is created.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use cpio::newc::{self, Builder};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum InitramfsError {
    #[error("cannot read {path} for the initramfs: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write the initramfs: {0}")]
    Write(io::Error),
    #[error("{path} is {size} bytes: an initramfs entry holds at most 4 GiB")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{0} has a name that is not UTF-8, which the archive cannot hold")]
    Name(PathBuf),
}

/// A file Tidal adds to the tree, at `path` (relative, such as `.tidal/init`); its parent
/// directories are made as needed. Written after the tree, so it replaces a file of the same
/// name there.
#[derive(Debug, Clone)]
pub struct Extra {
    pub path: String,
    pub contents: Vec<u8>,
    /// Permission bits, such as 0o755.
    pub mode: u32,
}

/// What [`write`] put in the archive.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub entries: u64,
    /// Sockets in the tree, which an archive cannot hold (a container makes its own at run
    /// time).
    pub sockets_skipped: u64,
}

/// Writes `rootfs` (its files, directories, symlinks, FIFOs and device nodes, with their owners
/// and modes) and then `extras` to `out` as a newc archive.
pub fn write(rootfs: &Path, extras: &[Extra], out: impl Write) -> Result<Written, InitramfsError> {
    let mut archive = Archive {
        out,
        next_ino: 1,
        written: Written::default(),
        dirs: BTreeSet::new(),
    };
    archive.tree(rootfs, Path::new(""))?;
    for extra in extras {
        archive.extra(extra)?;
    }
    newc::trailer(archive.out).map_err(InitramfsError::Write)?;
    Ok(archive.written)
}

struct Archive<W> {
    out: W,
    next_ino: u32,
    written: Written,
    /// The directories written so far, so an extra's parents are made only when missing.
    dirs: BTreeSet<String>,
}

impl<W: Write> Archive<W> {
    /// Writes the entries under `dir` (the tree's `relative`), sorted by name: the same tree
    /// always makes the same archive.
    fn tree(&mut self, dir: &Path, relative: &Path) -> Result<(), InitramfsError> {
        let read_error = |source| InitramfsError::Read {
            path: dir.to_owned(),
            source,
        };
        let mut names = fs::read_dir(dir)
            .map_err(read_error)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(read_error)?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let inside = relative.join(&name);
            let metadata = fs::symlink_metadata(&path).map_err(|source| InitramfsError::Read {
                path: path.clone(),
                source,
            })?;
            let kind = metadata.file_type();
            if kind.is_socket() {
                self.written.sockets_skipped += 1;
                continue;
            }
            let header = self.header(&inside, &metadata)?;
            if kind.is_dir() {
                self.entry(header, &[], &path)?;
                self.dirs.insert(utf8(&inside)?.to_owned());
                self.tree(&path, &inside)?;
            } else if kind.is_symlink() {
                let target = fs::read_link(&path).map_err(|source| InitramfsError::Read {
                    path: path.clone(),
                    source,
                })?;
                self.entry(header, utf8(&target)?.as_bytes(), &path)?;
            } else if kind.is_file() {
                self.file(header, &path, metadata.len())?;
            } else {
                // FIFOs and device nodes: the header says it all.
                self.entry(header, &[], &path)?;
            }
        }
        Ok(())
    }

    fn extra(&mut self, extra: &Extra) -> Result<(), InitramfsError> {
        let path = Path::new(&extra.path);
        for parent in path
            .ancestors()
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            let name = utf8(parent)?;
            if name.is_empty() || self.dirs.contains(name) {
                continue;
            }
            let header = self.builder(name).mode(libc_mode::DIR | 0o755);
            self.entry(header, &[], parent)?;
            self.dirs.insert(name.to_owned());
        }
        let header = self
            .builder(&extra.path)
            .mode(libc_mode::FILE | (extra.mode & 0o7777));
        self.entry(header, &extra.contents, path)
    }

    fn builder(&mut self, name: &str) -> Builder {
        let ino = self.next_ino;
        self.next_ino += 1;
        Builder::new(name).ino(ino)
    }

    /// The header of the tree's entry `inside`, with its owner, mode and device numbers.
    fn header(
        &mut self,
        inside: &Path,
        metadata: &fs::Metadata,
    ) -> Result<Builder, InitramfsError> {
        let (major, minor) = device_numbers(metadata.rdev());
        Ok(self
            .builder(utf8(inside)?)
            .mode(metadata.mode())
            .uid(metadata.uid())
            .gid(metadata.gid())
            .mtime(u32::try_from(metadata.mtime()).unwrap_or(0))
            .rdev_major(major)
            .rdev_minor(minor))
    }

    /// An entry whose contents (`path`'s, for the error) are in memory.
    fn entry(
        &mut self,
        header: Builder,
        contents: &[u8],
        path: &Path,
    ) -> Result<(), InitramfsError> {
        let size = u32::try_from(contents.len()).map_err(|_| InitramfsError::TooLarge {
            path: path.to_owned(),
            size: contents.len() as u64,
        })?;
        let mut writer = header.write(&mut self.out, size);
        writer.write_all(contents).map_err(InitramfsError::Write)?;
        writer.finish().map_err(InitramfsError::Write)?;
        self.written.entries += 1;
        Ok(())
    }

    /// A regular file, copied from disk as it is written (no whole file in memory).
    fn file(&mut self, header: Builder, path: &Path, len: u64) -> Result<(), InitramfsError> {
        let size = u32::try_from(len).map_err(|_| InitramfsError::TooLarge {
            path: path.to_owned(),
            size: len,
        })?;
        let read_error = |source| InitramfsError::Read {
            path: path.to_owned(),
            source,
        };
        let file = fs::File::open(path).map_err(read_error)?;
        let mut writer = header.write(&mut self.out, size);
        // A file that changed size since its metadata was read would break the archive.
        let copied = io::copy(&mut io::Read::take(file, len), &mut writer).map_err(read_error)?;
        if copied != len {
            return Err(read_error(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("it shrank to {copied} bytes while it was copied"),
            )));
        }
        writer.finish().map_err(InitramfsError::Write)?;
        self.written.entries += 1;
        Ok(())
    }
}

/// The file-type bits of a mode (`S_IFDIR`, `S_IFREG`).
mod libc_mode {
    pub const DIR: u32 = 0o040000;
    pub const FILE: u32 = 0o100000;
}

fn utf8(path: &Path) -> Result<&str, InitramfsError> {
    path.to_str()
        .ok_or_else(|| InitramfsError::Name(path.to_owned()))
}

/// Linux's major and minor numbers of a `dev_t` (glibc's `gnu_dev_major`/`gnu_dev_minor`).
fn device_numbers(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (
        u32::try_from(major).unwrap_or(u32::MAX),
        u32::try_from(minor).unwrap_or(u32::MAX),
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    /// Each entry of `archive`: its name, mode and contents.
    fn entries(archive: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut found = Vec::new();
        let mut rest = archive;
        loop {
            let mut reader = newc::Reader::new(rest).expect("an entry header");
            if reader.entry().is_trailer() {
                return found;
            }
            let (name, mode) = (reader.entry().name().to_owned(), reader.entry().mode());
            let mut contents = Vec::new();
            io::Read::read_to_end(&mut reader, &mut contents).expect("the entry's contents");
            found.push((name, mode, contents));
            rest = reader.finish().expect("the next entry");
        }
    }

    #[test]
    fn the_tree_and_the_extras_are_all_there_with_their_kinds_and_modes() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let root = dir.path();
        fs::create_dir_all(root.join("bin")).expect("bin");
        fs::write(root.join("bin/tool"), b"#!/bin/sh\necho tool\n").expect("bin/tool");
        fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o751))
            .expect("chmod");
        symlink("tool", root.join("bin/alias")).expect("a symlink");
        fs::write(root.join("empty"), b"").expect("an empty file");
        fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o640)).expect("chmod");
        std::os::unix::net::UnixListener::bind(root.join("sock")).expect("a socket");
        let extras = [Extra {
            path: ".tidal/init".to_owned(),
            contents: b"#!/bin/sh\n".to_vec(),
            mode: 0o700,
        }];
        let mut archive = Vec::new();
        let written = write(root, &extras, &mut archive).expect("the archive");
        assert_eq!(
            written,
            Written {
                entries: 6,
                sockets_skipped: 1
            }
        );
        let summary: Vec<_> = entries(&archive)
            .into_iter()
            .map(|(name, mode, contents)| (name, format!("{mode:o}"), contents))
            .collect();
        let expected = [
            ("bin", "40755", &b""[..]),
            ("bin/alias", "120777", b"tool"),
            ("bin/tool", "100751", b"#!/bin/sh\necho tool\n"),
            ("empty", "100640", b""),
            (".tidal", "40755", b""),
            (".tidal/init", "100700", b"#!/bin/sh\n"),
        ];
        let expected: Vec<_> = expected
            .iter()
            .map(|(n, m, c)| ((*n).to_owned(), (*m).to_owned(), c.to_vec()))
            .collect();
        assert_eq!(summary, expected);
    }

    #[test]
    fn an_extra_whose_directory_the_tree_has_makes_no_second_directory() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        fs::create_dir(dir.path().join("sbin")).expect("sbin");
        let extras = [Extra {
            path: "sbin/init".to_owned(),
            contents: b"x".to_vec(),
            mode: 0o755,
        }];
        let mut archive = Vec::new();
        write(dir.path(), &extras, &mut archive).expect("the archive");
        let names: Vec<_> = entries(&archive).into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["sbin", "sbin/init"]);
    }

    #[test]
    fn a_missing_tree_is_an_error_naming_it() {
        let error = write(Path::new("/nonexistent/rootfs"), &[], Vec::new()).expect_err("no tree");
        assert!(
            error
                .to_string()
                .starts_with("cannot read /nonexistent/rootfs"),
            "{error}"
        );
    }
}
