//! End-to-end tests of `ausa push`, `ausa pull` and read-through builds, against a
//! `file://` remote (always) and a real S3-compatible server on 127.0.0.1 (the `moto`
//! server from PyPI, installed into `.venv` by `.ci/run`; skipped with a message when
//! it is not installed; under CI, where `.ci/run` installs it, a missing server fails).
// A skipped test says so on stderr: that is its only channel.
#![allow(clippy::print_stderr)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{kill_at, make_writable, partial_objects, Ctx, Run};

/// A remote URL plus the environment an `ausa` process needs to reach it.
struct Remote {
    url: String,
    env: Vec<(String, String)>,
    _server: Option<Server>,
    _dir: Option<tempfile::TempDir>,
}

impl Remote {
    fn file() -> Remote {
        let dir = tempfile::tempdir().unwrap();
        Remote {
            url: format!("file://{}/remote", dir.path().display()),
            env: Vec::new(),
            _server: None,
            _dir: Some(dir),
        }
    }

    /// A fresh bucket on a moto server of its own, or `None` (skip) without moto.
    fn s3(test: &str) -> Option<Remote> {
        let server = Server::start(test)?;
        let env = vec![
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
            ("AWS_ENDPOINT_URL".into(), server.endpoint()),
        ];
        Some(Remote {
            url: "s3://ausa-test/cache".into(),
            env,
            _server: Some(server),
            _dir: None,
        })
    }

    fn cmd(&self, ctx: &Ctx, args: &[&str]) -> Command {
        let mut c = ctx.cmd(args);
        c.arg("--remote").arg(&self.url).env_remove("AUSA_REMOTE");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    fn run(&self, ctx: &Ctx, args: &[&str]) -> Run {
        self.cmd(ctx, args).output().expect("ausa runs").into()
    }

    /// The remote's directory, for `file://` remotes.
    fn dir(&self) -> PathBuf {
        PathBuf::from(self.url.strip_prefix("file://").unwrap())
    }
}

/// A moto S3 server on a free loopback port, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn binary() -> Option<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let venv = root.join(".venv/bin/moto_server");
        if venv.is_file() {
            return Some(venv);
        }
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("moto_server"))
                .find(|p| p.is_file())
        })
    }

    fn start(test: &str) -> Option<Server> {
        let server = Server::try_start(test);
        assert!(
            server.is_some() || std::env::var_os("CI").is_none(),
            "{test}: CI must run the S3 tests (.ci/run installs moto into .venv)"
        );
        server
    }

    fn try_start(test: &str) -> Option<Server> {
        let Some(binary) = Server::binary() else {
            eprintln!(
                "SKIPPED {test}: no moto_server (install it: python3 -m venv .venv && .venv/bin/pip install 'moto[server]')"
            );
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if server
                .request("PUT", "/ausa-test")
                .is_some_and(|s| s.starts_with("HTTP/1.1 200"))
            {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("SKIPPED {test}: moto_server did not start on port {port}");
        None
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A bare HTTP request (moto accepts unsigned requests); the status line.
    fn request(&self, method: &str, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        reply.lines().next().map(String::from)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn outcomes(run: &Run) -> Vec<String> {
    run.json()["report"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["outcome"].as_str().unwrap().to_string())
        .collect()
}

fn transfers(run: &Run) -> Vec<String> {
    run.json()["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["transfer"].as_str().unwrap().to_string())
        .collect()
}

/// Builds demo in one store, pushes it, pulls it into an empty store: byte-identical.
fn push_then_pull_is_identical(remote: &Remote) {
    let a = Ctx::new();
    a.run(&["build", "demo", "--quiet"]).ok();
    let pushed = remote.run(&a, &["push", "demo", "--json"]).ok();
    assert!(
        transfers(&pushed).iter().all(|t| t == "pushed"),
        "{}",
        pushed.stdout
    );
    let again = remote.run(&a, &["push", "demo", "--json"]).ok();
    assert!(
        transfers(&again).iter().all(|t| t == "present"),
        "{}",
        again.stdout
    );
    let b = Ctx::new();
    let pulled = remote.run(&b, &["pull", "demo", "--json"]).ok();
    assert!(
        transfers(&pulled).iter().all(|t| t == "pulled"),
        "{}",
        pulled.stdout
    );
    assert_eq!(a.object_files(), b.object_files());
    b.run(&["verify"]).ok();
    let status = b.run(&["status", "demo", "--json"]).ok().json();
    assert!(status["stages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["state"] == "up-to-date"));
}

/// A fresh store builds demo by fetching every stage from the remote.
fn read_through_build_fetches(remote: &Remote) {
    let a = Ctx::new();
    a.run(&["build", "demo", "--quiet"]).ok();
    let b = Ctx::new();
    // Only build and pull create a store.
    let none = remote.run(&b, &["status", "demo"]).code(2);
    assert!(none.stderr.contains("no store at"), "{}", none.stderr);
    std::fs::create_dir_all(b.store().join("objects")).unwrap();
    let status = remote.run(&b, &["status", "demo", "--json"]).code(3).json();
    assert!(status["stages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["location"] == "missing"));
    // --push uploads what the build made.
    let built = remote.run(&a, &["build", "demo", "--push", "--json"]).ok();
    assert!(outcomes(&built).iter().all(|o| o == "up-to-date"));
    let status = remote.run(&b, &["status", "demo", "--json"]).code(3).json();
    assert!(
        status["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["location"] == "remote"),
        "{status}"
    );
    let fetched = remote.run(&b, &["build", "demo", "--json"]).ok();
    assert!(
        outcomes(&fetched).iter().all(|o| o == "fetched"),
        "{}",
        fetched.stdout
    );
    assert_eq!(a.object_files(), b.object_files());
    let text = remote.run(&b, &["status", "demo"]).ok();
    assert!(text.stdout.contains("local"), "{}", text.stdout);
}

/// Two processes push the same DAG at once; both succeed and the result pulls fine.
fn concurrent_pushes_succeed(remote: &Remote) {
    let a = Ctx::new();
    a.run(&["build", "demo", "--quiet"]).ok();
    // Both pushes wait for each other after uploading an object's files and before
    // its manifest (a test-build hook): they provably overlap, which a 30 ms push
    // started twice would not.
    let barrier = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            remote
                .cmd(&a, &["push", "demo", "--quiet"])
                .env("AUSA_TEST_BARRIER", "push:before-manifest")
                .env("AUSA_TEST_BARRIER_DIR", barrier.path())
                .env("AUSA_TEST_BARRIER_N", "2")
                .spawn()
                .unwrap()
        })
        .collect();
    let pids: Vec<String> = children.iter().map(|c| c.id().to_string()).collect();
    for c in children {
        assert!(c.wait_with_output().unwrap().status.success());
    }
    let mut met: Vec<String> = std::fs::read_dir(barrier.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    met.sort();
    let mut want = pids;
    want.sort();
    assert_eq!(met, want, "both pushes were inside a push at the same time");
    let b = Ctx::new();
    remote.run(&b, &["pull", "demo", "--quiet"]).ok();
    assert_eq!(a.object_files(), b.object_files());
}

/// Kills push and pull clients in the middle of a transfer (the test waits until the
/// victim is there and alive): whatever was left, the puller never sees a partial
/// object, and running again completes.
fn interrupted_transfers_resume(remote: &Remote) {
    let a = Ctx::new();
    a.run(&["build", "demo", "--quiet"]).ok();
    // A push killed after an object's files and before its manifest: the remote has
    // files but no commit point, so a pull sees no object (and publishes nothing).
    kill_at(remote.cmd(&a, &["push", "demo"]), "push:before-manifest");
    let b = Ctx::new();
    let partial = remote.run(&b, &["pull", "demo"]).code(1);
    assert!(
        partial.stderr.contains("the remote has no object"),
        "{}",
        partial.stderr
    );
    assert!(partial_objects(&b.store()).is_empty());
    b.run(&["verify"]).ok();
    // The next push completes (files already there are not sent again).
    remote.run(&a, &["push", "demo", "--quiet"]).ok();
    // A pull killed after downloading an object and before publishing it.
    kill_at(remote.cmd(&b, &["pull", "demo"]), "pull:before-publish");
    assert!(partial_objects(&b.store()).is_empty());
    assert!(
        !b.entries("tmp").is_empty(),
        "the killed pull left its temp dir"
    );
    b.run(&["verify"]).ok();
    remote.run(&b, &["pull", "demo", "--quiet"]).ok();
    assert_eq!(a.object_files(), b.object_files());
    assert!(b.entries("tmp").is_empty(), "{:?}", b.entries("tmp"));
    b.run(&["status", "demo"]).ok();
}

#[test]
fn file_remote_push_then_pull_is_identical() {
    push_then_pull_is_identical(&Remote::file());
}

#[test]
fn file_remote_read_through_build_fetches() {
    read_through_build_fetches(&Remote::file());
}

#[test]
fn file_remote_concurrent_pushes_succeed() {
    concurrent_pushes_succeed(&Remote::file());
}

#[test]
fn file_remote_interrupted_transfers_resume() {
    interrupted_transfers_resume(&Remote::file());
}

#[test]
fn s3_push_then_pull_is_identical() {
    if let Some(remote) = Remote::s3("s3_push_then_pull_is_identical") {
        push_then_pull_is_identical(&remote);
    }
}

#[test]
fn s3_read_through_build_fetches() {
    if let Some(remote) = Remote::s3("s3_read_through_build_fetches") {
        read_through_build_fetches(&remote);
    }
}

#[test]
fn s3_concurrent_pushes_succeed() {
    if let Some(remote) = Remote::s3("s3_concurrent_pushes_succeed") {
        concurrent_pushes_succeed(&remote);
    }
}

#[test]
fn s3_interrupted_transfers_resume() {
    if let Some(remote) = Remote::s3("s3_interrupted_transfers_resume") {
        interrupted_transfers_resume(&remote);
    }
}

/// The first object file (not a manifest) under a `file://` remote, and its object dir.
fn remote_data_file(remote: &Remote) -> PathBuf {
    let objects = remote.dir().join("objects");
    for kind in std::fs::read_dir(&objects).unwrap().flatten() {
        for obj in std::fs::read_dir(kind.path()).unwrap().flatten() {
            for f in std::fs::read_dir(obj.path()).unwrap().flatten() {
                if f.file_name() != "manifest.json" {
                    return f.path();
                }
            }
        }
    }
    panic!("no data file on the remote")
}

#[test]
fn tampered_remote_file_is_rejected_and_nothing_published() {
    let remote = Remote::file();
    let a = Ctx::new();
    a.run(&["build", "demo", "--quiet"]).ok();
    remote.run(&a, &["push", "demo", "--quiet"]).ok();
    let victim = remote_data_file(&remote);
    make_writable(&victim);
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();
    let b = Ctx::new();
    let run = remote.run(&b, &["pull", "demo"]).code(1);
    assert!(
        run.stderr.contains("rejected") && run.stderr.contains("blake3"),
        "{}",
        run.stderr
    );
    let object = victim.parent().unwrap().file_name().unwrap().to_owned();
    assert!(!b
        .object_files()
        .iter()
        .any(|(p, _)| p.contains(object.to_str().unwrap())));
    assert!(b.entries("tmp").is_empty(), "{:?}", b.entries("tmp"));
    // A read-through build does not trust it either: it says so and builds that stage
    // itself (and only that one: the others are fetched).
    let built = remote.run(&b, &["build", "demo"]).ok();
    let warned: Vec<&str> = built
        .stderr
        .lines()
        .filter(|l| l.contains("fetching from the remote failed"))
        .collect();
    assert_eq!(warned.len(), 1, "{}", built.stderr);
    assert!(warned[0].contains("blake3"), "{}", warned[0]);
    let stage = warned[0].split_whitespace().nth(1).unwrap();
    assert!(
        built
            .stderr
            .lines()
            .any(|l| l.trim_start().starts_with("built") && l.contains(stage)),
        "{stage} is built here: {}",
        built.stderr
    );
    assert!(built.stderr.contains("fetched"), "{}", built.stderr);
    b.run(&["verify"]).ok();
}

#[test]
fn truncated_remote_file_is_rejected() {
    let remote = Remote::file();
    let a = Ctx::new();
    a.run(&["build", "demo", "--quiet"]).ok();
    remote.run(&a, &["push", "demo", "--quiet"]).ok();
    let victim = remote_data_file(&remote);
    make_writable(&victim);
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    let b = Ctx::new();
    let run = remote.run(&b, &["pull", "demo"]).code(1);
    assert!(run.stderr.contains("truncated"), "{}", run.stderr);
}

#[test]
fn remote_manifest_naming_paths_outside_its_object_is_rejected() {
    let remote = Remote::file();
    let a = Ctx::new();
    a.run(&["build", "demo", "--quiet"]).ok();
    remote.run(&a, &["push", "demo", "--quiet"]).ok();
    let victim = remote_data_file(&remote);
    let manifest = victim.parent().unwrap().join("manifest.json");
    make_writable(&manifest);
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    doc["files"][0]["name"] = "../../../../escape".into();
    std::fs::write(&manifest, serde_json::to_vec(&doc).unwrap()).unwrap();
    let b = Ctx::new();
    let run = remote.run(&b, &["pull", "demo"]).code(1);
    assert!(
        run.stderr.contains("leaves the object directory"),
        "{}",
        run.stderr
    );
    assert!(!b.path().join("escape").exists());
    assert!(b.entries("tmp").is_empty());
}

#[test]
fn push_without_remote_is_a_usage_error_with_a_hint() {
    let ctx = Ctx::new();
    let run = ctx
        .cmd(&["push", "demo"])
        .env_remove("AUSA_REMOTE")
        .env("XDG_CONFIG_HOME", ctx.path())
        .output()
        .unwrap();
    let run: Run = run.into();
    let run = run.code(2);
    assert!(run.stderr.contains("AUSA_REMOTE"), "{}", run.stderr);
}

#[test]
fn push_of_an_unbuilt_dag_says_build_first() {
    let remote = Remote::file();
    let ctx = Ctx::new();
    ctx.run(&["build", "demo:corpus", "--quiet"]).ok();
    let run = remote.run(&ctx, &["push", "demo"]).code(1);
    assert!(run.stderr.contains("ausa build demo"), "{}", run.stderr);
}

#[test]
fn copied_store_directory_verifies() {
    let a = Ctx::new();
    a.run(&["build", "demo", "--quiet"]).ok();
    let b = Ctx::new();
    let status = Command::new("cp")
        .arg("-a")
        .arg(a.store())
        .arg(b.store())
        .status()
        .unwrap();
    assert!(status.success());
    b.run(&["verify"]).ok();
    let run = b.run(&["build", "demo", "--json"]).ok();
    assert!(outcomes(&run).iter().all(|o| o == "up-to-date"));
}

/// The standard AWS variables, removed so that only the profile files can help.
const AWS_VARS: [&str; 7] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT",
];

fn run_without_aws_vars(remote: &Remote, ctx: &Ctx, args: &[&str]) -> Run {
    let mut c = remote.cmd(ctx, args);
    for k in AWS_VARS {
        c.env_remove(k);
    }
    c.output().expect("ausa runs").into()
}

#[test]
fn s3_credentials_region_and_endpoint_from_aws_profile_files() {
    let test = "s3_credentials_region_and_endpoint_from_aws_profile_files";
    let Some(mut remote) = Remote::s3(test) else {
        return;
    };
    let endpoint = remote
        .env
        .iter()
        .find(|(k, _)| k == "AWS_ENDPOINT_URL")
        .map(|(_, v)| v.clone())
        .unwrap();
    let ctx = Ctx::new();
    let credentials = ctx.write(
        "aws/credentials",
        "[default]\naws_access_key_id = wrong\n\n[lab]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    );
    let config = ctx.write(
        "aws/config",
        &format!("[profile lab]\nregion = us-east-1\nendpoint_url = {endpoint}\ns3 =\n    max_concurrent_requests = 4\n"),
    );
    remote.env = vec![
        ("AWS_PROFILE".into(), "lab".into()),
        (
            "AWS_SHARED_CREDENTIALS_FILE".into(),
            credentials.display().to_string(),
        ),
        ("AWS_CONFIG_FILE".into(), config.display().to_string()),
    ];
    ctx.run(&["build", "demo:corpus", "--quiet"]).ok();
    let pushed = run_without_aws_vars(&remote, &ctx, &["push", "demo:corpus", "--json"]).ok();
    assert_eq!(transfers(&pushed), ["pushed"], "{}", pushed.stdout);
    let b = Ctx::new();
    run_without_aws_vars(&remote, &b, &["pull", "demo:corpus", "--quiet"]).ok();
    assert_eq!(ctx.object_files(), b.object_files());
    // A profile asked for by name that the files lack is an error naming them.
    remote.env[0].1 = "missing".into();
    let run = run_without_aws_vars(&remote, &ctx, &["push", "demo:corpus"]).code(1);
    assert!(
        run.stderr.contains("AWS_PROFILE=missing") && run.stderr.contains("credentials"),
        "{}",
        run.stderr
    );
}
