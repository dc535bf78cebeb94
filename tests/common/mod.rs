//! A test context: a fresh temp dir with a store, and the real `ausa` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temp dir holding a store and any DAG files a test writes.
pub struct Ctx {
    pub dir: tempfile::TempDir,
}

/// What one `ausa` run printed.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn code(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "unexpected exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ausa")
}

impl Ctx {
    pub fn new() -> Ctx {
        Ctx {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// An `ausa` command on this context's store, run in the temp dir.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .arg("--store")
            .arg(self.store())
            .current_dir(self.path());
        c.env_remove("AUSA_STORE").env("AUSA_LOCK_LEASE_MS", "3000");
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.cmd(args).output().expect("ausa runs").into()
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Every file under the store's `objects/` with its bytes, sorted by path.
    pub fn object_files(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        collect(
            &self.store().join("objects"),
            &self.store().join("objects"),
            &mut out,
        );
        out.sort();
        out
    }

    pub fn fingerprint(&self, target: &str, extra: &[&str]) -> String {
        let mut args = vec!["show", target, "--json"];
        args.extend_from_slice(extra);
        self.run(&args).ok().json()["fingerprint"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn object_dir(&self, target: &str) -> PathBuf {
        PathBuf::from(self.run(&["path", target]).ok().stdout.trim())
    }

    /// Names of entries in a store subdirectory.
    pub fn entries(&self, sub: &str) -> Vec<String> {
        match std::fs::read_dir(self.store().join(sub)) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(root, &p, out);
        } else {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.push((rel, std::fs::read(&p).unwrap()));
        }
    }
}

/// Makes a file writable so a test can damage it (objects are read-only).
pub fn make_writable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    if let Some(parent) = p.parent() {
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// Runs `cmd` until it pauses at test-hook `point` (`AUSA_TEST_PAUSE`, a test build of
/// the binary only), asserts that it is alive there, and kills it with SIGKILL.
/// Returns the exact point it paused at. Panics if the process exits first or does not
/// get there within 60 s: a kill that lands nowhere must not pass as a test.
pub fn kill_at(mut cmd: Command, point: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    cmd.env("AUSA_TEST_PAUSE", point)
        .env("AUSA_TEST_PAUSE_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("ausa starts");
    let marker = dir.path().join(child.id().to_string());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !marker.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{point}: the process exited ({status}) before reaching the point");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{point}: not reached within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "{point}: the victim must be alive when killed"
    );
    child.kill().unwrap();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{point}: killed by SIGKILL");
    std::fs::read_to_string(&marker).unwrap_or_default()
}

/// Runs `cmd` with the test hook that aborts it at `point` (`AUSA_TEST_CRASH`) and
/// asserts that it did die there (SIGABRT), not before and not by finishing.
pub fn crash_at(mut cmd: Command, point: &str) {
    let out = cmd.env("AUSA_TEST_CRASH", point).output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc_sigabrt()),
        "{point}: expected an abort at the point, got {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

const fn libc_sigabrt() -> i32 {
    6
}

/// Every entry under `objects/<kind>/` that is not a complete object (a real directory
/// with its manifest and the manifest's digest): what no reader may ever see.
pub fn partial_objects(store: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let objects = store.join("objects");
    for kind in std::fs::read_dir(&objects).into_iter().flatten().flatten() {
        for obj in std::fs::read_dir(kind.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = obj.path();
            let real = std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir());
            if !real || !p.join("manifest.json").is_file() || !p.join("manifest.blake3").is_file() {
                bad.push(p.display().to_string());
            }
        }
    }
    bad
}

/// An `ausa` process held at a test-hook point (see [`pause_at`]).
pub struct Paused {
    pub child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Paused {
    /// Kills the paused process (SIGKILL), asserting it was still alive.
    pub fn kill(mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "alive when killed"
        );
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }

    /// Lets the process go on from its point; returns how it ended.
    pub fn resume(mut self) -> Run {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "still paused before resuming"
        );
        std::fs::write(self.dir.path().join(format!("{}.go", self.child.id())), b"").unwrap();
        self.child.wait_with_output().unwrap().into()
    }
}

/// Starts `cmd` and waits until it is held at test-hook `point`, alive.
pub fn pause_at(mut cmd: Command, point: &str) -> Paused {
    let dir = tempfile::tempdir().unwrap();
    cmd.env("AUSA_TEST_PAUSE", point)
        .env("AUSA_TEST_PAUSE_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("ausa starts");
    let marker = dir.path().join(child.id().to_string());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !marker.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let out: Run = child.wait_with_output().unwrap().into();
            panic!(
                "{point}: exited ({status}) before the point\n{}",
                out.stderr
            );
        }
        assert!(std::time::Instant::now() < deadline, "{point}: not reached");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Paused { child, dir }
}
