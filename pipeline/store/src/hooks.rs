//! Test-only hooks: crash or pause the process at a named step, and log stage runs.
//!
//! Compiled in only with the `test-hooks` feature (enabled by `ausa-cli`'s
//! dev-dependencies, so `cargo test` builds have it and release builds do not). Without
//! the feature every function here is an empty inline function.
//!
//! - `AUSA_TEST_CRASH=<point>` aborts the process (like `kill -9`: no destructors, no
//!   cleanup) when it reaches `<point>`.
//! - `AUSA_TEST_PAUSE=<point>` makes the process create `$AUSA_TEST_PAUSE_DIR/<pid>` and
//!   wait at `<point>` until killed or until the test creates `<pid>.go` there, so a
//!   test can kill it there knowing it is alive, or act while it holds its locks.
//! - `AUSA_TEST_BARRIER=<point>` makes the process create `$AUSA_TEST_BARRIER_DIR/<pid>`
//!   at `<point>` and wait (at most 60 s) until `$AUSA_TEST_BARRIER_N` processes have:
//!   proof that that many processes were at that point at the same time (it aborts
//!   when they never meet).
//! - `AUSA_TEST_RUNLOG=<file>` appends `<kind> <fingerprint>` to `<file>` each time a
//!   stage actually runs (not when it is reused), so a test can count executions.
//!
//! A point matches when it equals the variable or starts with it followed by `:` (so
//! `stage` matches `stage:corpus`).

/// The points of a publish and a ref update, in order (for tests that visit each).
pub const PUBLISH_POINTS: [&str; 7] = [
    "publish:data-written",
    "publish:synced",
    "publish:before-manifest",
    "publish:after-manifest",
    "publish:renamed",
    "ref:before",
    "ref:after",
];

#[cfg(feature = "test-hooks")]
fn matches(var: &str, point: &str) -> bool {
    std::env::var(var).is_ok_and(|want| {
        !want.is_empty()
            && (point == want
                || point
                    .strip_prefix(want.as_str())
                    .is_some_and(|rest| rest.starts_with(':')))
    })
}

/// Reached step `point`: crash or pause here if a test asked for it.
#[inline]
pub fn point(point: &str) {
    #[cfg(feature = "test-hooks")]
    {
        if matches("AUSA_TEST_CRASH", point) {
            std::process::abort();
        }
        if matches("AUSA_TEST_BARRIER", point) {
            barrier();
        }
        if matches("AUSA_TEST_PAUSE", point) {
            let dir = std::env::var_os("AUSA_TEST_PAUSE_DIR").map(std::path::PathBuf::from);
            let pid = std::process::id().to_string();
            if let Some(dir) = &dir {
                // Written whole, then renamed: a test that sees the marker reads it all.
                let tmp = dir.join(format!(".{pid}.tmp"));
                if std::fs::write(&tmp, point).is_ok() {
                    let _ = std::fs::rename(&tmp, dir.join(&pid));
                }
            }
            // Paused until killed, or until the test creates `<pid>.go`.
            loop {
                if dir
                    .as_ref()
                    .is_some_and(|d| d.join(format!("{pid}.go")).exists())
                {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
    #[cfg(not(feature = "test-hooks"))]
    let _ = point;
}

#[cfg(feature = "test-hooks")]
fn barrier() {
    let Some(dir) = std::env::var_os("AUSA_TEST_BARRIER_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let n: usize = std::env::var("AUSA_TEST_BARRIER_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let _ = std::fs::write(dir.join(std::process::id().to_string()), b"");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_dir(&dir).map_or(0, |d| d.count()) < n {
        if std::time::Instant::now() > deadline {
            // The processes never met: fail loudly so the test does too.
            std::process::abort();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A stage of `kind` with `fingerprint` is about to run.
#[inline]
pub fn record_run(kind: &str, fingerprint: &str) {
    #[cfg(feature = "test-hooks")]
    if let Some(path) = std::env::var_os("AUSA_TEST_RUNLOG") {
        use std::io::Write;
        // One write(2) of a short line with O_APPEND: lines of concurrent processes do
        // not interleave.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            let _ = f.write_all(format!("{kind} {fingerprint}\n").as_bytes());
        }
    }
    #[cfg(not(feature = "test-hooks"))]
    let _ = (kind, fingerprint);
}
