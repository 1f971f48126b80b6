//! The init Tidal puts into a container's initramfs (`/.tidal/init`, run by a static busybox at
//! `/.tidal/busybox`, so the container needs no shell of its own): it mounts what a container
//! expects, runs the container's process with its output on the VM's second serial port
//! (`ttyS1`, the shim's end of it is Tidal's stdio), forwards the signals the shim asks for,
//! reports the process's exit status on the kernel's console and powers the VM off.
//!
//! The shim and the init speak in lines. On `ttyS0` (the kernel's console, a file of the
//! shim's) the init writes [`READY_LINE`] once it is set up, and waits for [`START_LINE`] on
//! `ttyS1`'s input: the shim first grows the VM to the container's memory, so the process
//! never starts small. Then the shim writes `signal N` lines there, and `memory N` lines, which
//! the init answers with [`MEMORY_LINE`] on `ttyS0`; at the end the init writes [`EXIT_LINE`]
//! and the process's status there.

use std::path::Path;

use crate::bundle::Process;

/// Where the init and its busybox are in the initramfs (the kernel's `rdinit=`).
pub const INIT_PATH: &str = ".tidal/init";
pub const BUSYBOX_PATH: &str = ".tidal/busybox";

/// The line the init writes on the kernel's console once it waits for [`START_LINE`].
pub const READY_LINE: &str = "tidal-init: ready";

/// The line that lets the init start the container's process.
pub const START_LINE: &str = "start";

/// Starts the console line that answers `memory N`: then N, and the guest's `MemTotal` and
/// `MemAvailable` in KiB.
pub const MEMORY_LINE: &str = "tidal-init: memory ";

/// Starts the console line that gives the process's exit status, as `wait` returns it (128 +
/// the signal's number for a process a signal ended).
pub const EXIT_LINE: &str = "tidal-init: the process exited with status ";

/// The init script for `process`.
pub fn script(process: &Process) -> String {
    let env: Vec<String> = process.env.iter().map(|e| quote(e)).collect();
    let args: Vec<String> = process.args.iter().map(|a| quote(a)).collect();
    format!(
        r#"#!/{BUSYBOX_PATH} sh
b=/{BUSYBOX_PATH}
$b mkdir -p /proc /sys /dev /tmp /run
$b mount -t proc proc /proc
$b mount -t sysfs sysfs /sys
$b mount -t devtmpfs devtmpfs /dev
$b mkdir -p /dev/pts /dev/shm
$b mount -t devpts devpts /dev/pts
$b mount -t tmpfs tmpfs /dev/shm
$b stty -F /dev/ttyS1 raw -echo
echo "{READY_LINE}" > /dev/ttyS0
until read -r line < /dev/ttyS1 && [ "$line" = {START_LINE} ]; do :; done
# Half of the memory the container has now, not of the boot memory.
$b mount -t tmpfs -o mode=1777 tmpfs /tmp
cd {cwd} || {{ echo "tidal-init: no working directory {cwd}" > /dev/ttyS0; $b poweroff -f; }}
$b env -i {env} {args} < /dev/null > /dev/ttyS1 2>&1 &
pid=$!
while read -r what number; do
    case "$what" in
        signal) $b kill -"$number" "$pid" ;;
        memory) m=$($b awk '/^(MemTotal|MemAvailable):/ {{ printf " %s", $2 }}' /proc/meminfo)
                echo "{MEMORY_LINE}$number$m" > /dev/ttyS0 ;;
    esac
done < /dev/ttyS1 &
wait "$pid"
echo "{EXIT_LINE}$?" > /dev/ttyS0
$b sync
$b poweroff -f
"#,
        cwd = quote(&process.cwd.to_string_lossy()),
        env = env.join(" "),
        args = args.join(" "),
    )
}

/// The exit status in the kernel console's `text`, from the last [`EXIT_LINE`].
pub fn exit_status(text: &str) -> Option<u32> {
    text.lines()
        .rev()
        .find_map(|line| line.trim_end().strip_prefix(EXIT_LINE)?.parse().ok())
}

/// What the guest said of its memory: `(MemTotal, MemAvailable)` in bytes, from the answer to
/// `memory {request}` in the kernel console's `text`.
pub fn memory_report(text: &str, request: u64) -> Option<(u64, u64)> {
    text.lines().rev().find_map(|line| {
        let mut words = line.trim_end().strip_prefix(MEMORY_LINE)?.split(' ');
        if words.next()?.parse::<u64>().ok()? != request {
            return None;
        }
        let mut kib = || words.next()?.parse::<u64>().ok().map(|k| k * 1024);
        let total = kib()?;
        Some((total, kib()?))
    })
}

/// `word` as one shell word, in single quotes.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Whether `path` names a program the init can run: a relative name is looked up in the
/// container's `PATH` by `env`.
pub fn is_runnable(rootfs: &Path, program: &str, path_var: Option<&str>) -> bool {
    if program.contains('/') {
        return rootfs.join(program.trim_start_matches('/')).exists();
    }
    path_var
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .split(':')
        .any(|dir| {
            let dir = Path::new(dir.trim_start_matches('/'));
            rootfs.join(dir).join(program).exists()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(args: &[&str], env: &[&str]) -> Process {
        Process {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: env.iter().map(|e| (*e).to_owned()).collect(),
            cwd: "/work dir".into(),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
        }
    }

    /// What `sh` makes of the words the script quoted, through the host's shell.
    fn words_through_sh(quoted: &str) -> Vec<String> {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("for w in {quoted}; do printf '%s\\0' \"$w\"; done"))
            .output()
            .expect("sh runs");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .split_terminator('\0')
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_process_line_keeps_every_word_whole() {
        let awkward = [
            "sh",
            "-c",
            "echo 'it''s' \"$HOME\" `id` $(id) ; exit 3",
            "a\nb",
            "",
        ];
        let quoted: Vec<String> = awkward.iter().map(|w| quote(w)).collect();
        assert_eq!(words_through_sh(&quoted.join(" ")), awkward);
        let script = script(&process(&awkward, &["PATH=/bin", "X=a b"]));
        assert!(script.contains("cd '/work dir' ||"), "{script}");
        assert!(
            script.contains(&format!(
                "$b env -i 'PATH=/bin' 'X=a b' {} <",
                quoted.join(" ")
            )),
            "{script}"
        );
    }

    #[test]
    fn the_exit_status_is_the_last_line_that_gives_one() {
        let console =
            format!("boot\n{EXIT_LINE}1\nmore\n{EXIT_LINE}137\r\n[ 1.0] reboot: Power down\n");
        assert_eq!(exit_status(&console), Some(137));
        assert_eq!(exit_status("no such line\n"), None);
        assert_eq!(exit_status(&format!("{EXIT_LINE}x\n")), None);
    }

    #[test]
    fn the_memory_report_is_the_answer_to_its_own_request() {
        let console = format!(
            "{MEMORY_LINE}1 600000 500000\n[ 2.0] x\n{MEMORY_LINE}2 650000 100000\r\n\
             {MEMORY_LINE}3 65000"
        );
        assert_eq!(
            memory_report(&console, 2),
            Some((650_000 * 1024, 100_000 * 1024))
        );
        assert_eq!(
            memory_report(&console, 1),
            Some((600_000 * 1024, 500_000 * 1024))
        );
        // Cut off, or never answered.
        assert_eq!(memory_report(&console, 3), None);
        assert_eq!(memory_report(&console, 4), None);
    }

    /// The init's answer to `memory N`: its awk program, run by the host's awk.
    #[test]
    fn the_init_reports_the_meminfo_fields_in_kib() {
        let meminfo = "MemTotal:        1000 kB\nMemFree:  10 kB\nMemAvailable:     400 kB\n";
        let out = std::process::Command::new("awk")
            .arg("/^(MemTotal|MemAvailable):/ { printf \" %s\", $2 }")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(meminfo.as_bytes())?;
                child.wait_with_output()
            })
            .expect("awk runs");
        let line = format!("{MEMORY_LINE}7{}", String::from_utf8_lossy(&out.stdout));
        assert_eq!(memory_report(&line, 7), Some((1000 * 1024, 400 * 1024)));
        assert!(script(&process(&["true"], &[])).contains("/^(MemTotal|MemAvailable):/ { printf"));
    }

    #[test]
    fn programs_are_found_by_path_or_in_the_path_variable() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::create_dir_all(dir.path().join("bin")).expect("bin");
        std::fs::write(dir.path().join("bin/tool"), b"").expect("bin/tool");
        assert!(is_runnable(dir.path(), "/bin/tool", None));
        assert!(is_runnable(dir.path(), "tool", None));
        assert!(is_runnable(dir.path(), "tool", Some("/usr/bin:/bin")));
        assert!(!is_runnable(dir.path(), "tool", Some("/usr/bin")));
        assert!(!is_runnable(dir.path(), "/usr/bin/tool", None));
    }
}
