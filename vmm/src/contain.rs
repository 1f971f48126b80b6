//! Containment beyond seccomp, while the main thread is still the only one and after the VM's
//! files are open and its API socket bound: resource limits always, and with `--user` an empty,
//! read-only root in a mount namespace of its own and an unprivileged user.
//!
//! What Tidal needs after that point it already holds: `/dev/kvm` and the VM's descriptors, the
//! listening socket (removed at the end through a descriptor of its directory), `/proc/meminfo`
//! and the cgroup and huge-page files it re-reads, a `--serial file=`. A process that gave up
//! root has no capabilities left, so it cannot leave the empty root (`chroot` needs
//! `CAP_SYS_CHROOT`) or get its rights back.

use std::ffi::CStr;
use std::io;
use std::str::FromStr;

use thiserror::Error;

/// Open files Tidal may hold: API connections (64 served, as many waiting, 16 event streams),
/// its vCPUs, event descriptors and the few files of its own, with room to spare.
const MAX_FILES: u64 = 4096;
/// Where the empty root is mounted before Tidal enters it: a directory every system has, and
/// only this process's mount namespace sees the mount.
const EMPTY_ROOT: &CStr = c"/tmp";

/// A numeric user and group (`--user UID:GID`): names would need `/etc/passwd`, which the
/// empty root does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
}

impl FromStr for UserIds {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (uid, gid) = text
            .split_once(':')
            .ok_or_else(|| format!("'{text}' is not UID:GID"))?;
        let number = |what, value: &str| {
            value
                .parse::<u32>()
                .map_err(|_| format!("{what} '{value}' is not a number"))
        };
        let ids = UserIds {
            uid: number("user", uid)?,
            gid: number("group", gid)?,
        };
        if ids.uid == 0 || ids.gid == 0 {
            return Err("UID:GID must not be root's (0)".to_owned());
        }
        Ok(ids)
    }
}

#[derive(Debug, Error)]
pub enum ContainError {
    #[error("cannot set the limit on {what}: {source}")]
    Limit {
        what: &'static str,
        source: io::Error,
    },
    #[error("--user: Tidal runs {0} threads already; it confines itself only while it runs one")]
    Threads(usize),
    #[error("--user: cannot {step}: {source} (switching users needs root)")]
    Step {
        step: &'static str,
        source: io::Error,
    },
}

/// No core files (they would hold guest memory) and at most [`MAX_FILES`] open files.
pub fn limit_resources() -> Result<(), ContainError> {
    let limit = |what, resource, value: u64| {
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads the struct it is given, nothing else.
        let done = unsafe { libc::setrlimit(resource, &limit) };
        check(done).map_err(|source| ContainError::Limit { what, source })
    };
    limit("core files", libc::RLIMIT_CORE, 0)?;
    let mut files = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, nothing else.
    let done = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) };
    check(done).map_err(|source| ContainError::Limit {
        what: "open files",
        source,
    })?;
    limit(
        "open files",
        libc::RLIMIT_NOFILE,
        MAX_FILES.min(files.rlim_max),
    )
}

/// Enters an empty, read-only root in a mount namespace of its own, then becomes `user` with
/// no supplementary groups. Must run while this is the only thread: a namespace is per process
/// only for a process of one thread, and the threads started later inherit the user.
pub fn become_user(user: UserIds) -> Result<(), ContainError> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, Iterator::count);
    if threads > 1 {
        return Err(ContainError::Threads(threads));
    }
    let step = |step| move |source| ContainError::Step { step, source };
    // SAFETY: each call reads only the constant strings and values it is given.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS)).map_err(step("enter a mount namespace"))?;
        // Nothing mounted here reaches the host's namespace.
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))
        .map_err(step("make the mounts private"))?;
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        check(libc::mount(
            c"tidal-root".as_ptr(),
            EMPTY_ROOT.as_ptr(),
            c"tmpfs".as_ptr(),
            flags,
            c"size=4k,mode=0555".as_ptr().cast(),
        ))
        .map_err(step("mount the empty root"))?;
        check(libc::chroot(EMPTY_ROOT.as_ptr())).map_err(step("enter the empty root"))?;
        check(libc::chdir(c"/".as_ptr())).map_err(step("enter the empty root"))?;
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_RDONLY | flags,
            std::ptr::null(),
        ))
        .map_err(step("make the empty root read-only"))?;
        check(libc::setgroups(0, std::ptr::null())).map_err(step("drop the groups"))?;
        check(libc::setresgid(user.gid, user.gid, user.gid)).map_err(step("switch groups"))?;
        check(libc::setresuid(user.uid, user.uid, user.uid)).map_err(step("switch users"))?;
    }
    Ok(())
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_two_numbers_and_not_root() {
        assert_eq!(
            "65534:100".parse::<UserIds>(),
            Ok(UserIds {
                uid: 65534,
                gid: 100
            })
        );
        for bad in ["65534", "nobody:nogroup", "1:", ":1", "-1:1", "0:1", "1:0"] {
            assert!(bad.parse::<UserIds>().is_err(), "{bad} was taken");
        }
    }
}
