//! When io_uring is refused (a container's seccomp profile, or `kernel.io_uring_disabled`),
//! `switchyard run` exits non-zero with a message that says so and how to allow it.
//!
//! The test refuses io_uring machine-wide for a moment with `kernel.io_uring_disabled=2` (root
//! only) and restores the old value on every path. It is the only test in this binary, and
//! cargo runs test binaries one at a time, so no other test sees the setting.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

/// Restores the sysctl when dropped (also when an assertion fails).
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.0);
    }
}

fn skip_or_fail(reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("cannot run in CI: {reason}");
    }
    eprintln!("skipping: {reason}");
}

#[test]
fn refused_io_uring_exits_with_an_explanation() {
    let Ok(before) = std::fs::read_to_string(SYSCTL) else {
        return skip_or_fail("this kernel has no kernel.io_uring_disabled sysctl");
    };
    let dir = std::env::temp_dir().join(format!("sy-uring-refused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("c.yaml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut f = std::fs::File::create(&config).unwrap();
    write!(
        f,
        r#"
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
static_resources:
  listeners:
  - name: l
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: tcp
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: l
          cluster: c
  clusters:
  - name: c
    load_assignment:
      cluster_name: c
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 9 }} }} }} }}] }}]
"#
    )
    .unwrap();
    drop(f);

    if std::fs::write(SYSCTL, "2").is_err() {
        let _ = std::fs::remove_dir_all(&dir);
        return skip_or_fail("kernel.io_uring_disabled is not writable (not root?)");
    }
    let restore = Restore(before.trim().to_string());
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "-c"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("switchyard kept running with io_uring refused");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(restore);
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!status.success(), "exit status {status}");
    assert!(
        stderr.contains("io_uring is not permitted"),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains("seccomp"),
        "stderr says how to allow it: {stderr}"
    );
    assert!(stderr.contains("io_uring_disabled"), "stderr: {stderr}");
}
