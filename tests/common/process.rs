//! Running a child process with a time limit: its stdout and stderr drained on threads (a
//! chatty child never blocks on a full pipe), killed when it outlives the limit.

use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Runs `cmd` with piped output, killing it after `limit` (a panic).
pub fn output_within(cmd: &mut Command, limit: Duration) -> (Output, Duration) {
    try_output_within(cmd, limit).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `cmd` with piped output; `Err` when it had to be killed after `limit`.
pub fn try_output_within(cmd: &mut Command, limit: Duration) -> Result<(Output, Duration), String> {
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut so, &mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut se, &mut v);
        v
    });
    let deadline = t0 + limit;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{cmd:?} did not finish in {limit:?}"));
        }
        thread::sleep(Duration::from_millis(10));
    };
    let out = Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    };
    Ok((out, t0.elapsed()))
}
