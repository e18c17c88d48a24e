//! Benchmarks only; see `benches/`. This library holds what the benchmark binaries
//! (`kms-load`, `peers-rust`) share: the child processes they start.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A child process (a sidecar, an echo server) stopped on drop: SIGTERM, up to 10 s to
/// exit, then SIGKILL; always reaped.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts connections on the Unix socket `path`, polling every
/// 20 ms. Fails as soon as `child` exits, or after `timeout`, with a message naming the
/// socket (the caller adds what it knows, such as the child's log).
pub fn wait_for_socket(path: &Path, child: &mut Child, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        match child.try_wait() {
            Ok(Some(status)) => return Err(format!("exited ({status}) before listening on {}", path.display())),
            Ok(None) => {}
            Err(e) => return Err(format!("cannot wait for the process: {e}")),
        }
        if Instant::now() > deadline {
            return Err(format!("no socket {} within {} s", path.display(), timeout.as_secs_f64()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
