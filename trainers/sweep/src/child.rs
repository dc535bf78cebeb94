//! Spawning a run's process so that it never outlives the sweep (the only unsafe code
//! of this crate).
//!
//! A trainer left running after its sweep was killed (`kill -9`, a lost SSH session)
//! would keep writing its run directory while the next sweep, finding the run's lock
//! dead, starts it again there. On Linux the child therefore asks the kernel for
//! `SIGKILL` when its parent dies (`PR_SET_PDEATHSIG`). The kernel ties this to the
//! *thread* that spawned the child: the sweep's worker threads spawn and then wait for
//! their child, so they outlive it.
#![allow(unsafe_code)]

use std::process::{Child, Command};

/// Spawns `cmd`, killed by the kernel if the spawning thread dies first (Linux).
pub fn spawn_tied(cmd: &mut Command) -> std::io::Result<Child> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: `pre_exec` runs the closure in the forked child before `exec`, where
        // only async-signal-safe calls are allowed: it calls `prctl`, `getppid` and
        // `_exit` (all async-signal-safe), allocates nothing and takes no lock. The
        // parent pid is captured by value before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died between the fork and the prctl.
                if libc::getppid() != parent {
                    libc::_exit(137);
                }
                Ok(())
            });
        }
    }
    cmd.spawn()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn the_child_dies_with_the_thread_that_spawned_it() {
        // The spawning thread returns without waiting: the kernel kills the child.
        let mut child = std::thread::spawn(|| spawn_tied(Command::new("sleep").arg("30")).unwrap())
            .join()
            .unwrap();
        let started = std::time::Instant::now();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "{status}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        // A child whose spawner waits runs to the end.
        let status = spawn_tied(&mut Command::new("true"))
            .unwrap()
            .wait()
            .unwrap();
        assert!(status.success());
    }
}
