//! A start gate: connection threads connect, arrive, and wait; the run's clock starts when every
//! thread has arrived. Unlike `std::sync::Barrier` it can be aborted, so a run that fails to
//! spawn its tenth thread can release the nine already waiting.

use std::sync::{Condvar, Mutex};
use std::time::Instant;

#[derive(Debug, Default)]
struct State {
    arrived: usize,
    open: Option<Instant>,
    aborted: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Gate {
    state: Mutex<State>,
    cv: Condvar,
}

impl Gate {
    /// Called by a connection thread when it is ready; returns the run's start time, or `None`
    /// when the run was aborted.
    pub(crate) fn arrive_and_wait(&self) -> Option<Instant> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.arrived += 1;
        self.cv.notify_all();
        loop {
            if let Some(start) = s.open {
                return (!s.aborted).then_some(start);
            }
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits until `n` threads have arrived, then starts the clock and lets them go; returns the
    /// start time.
    pub(crate) fn open_when(&self, n: usize) -> Instant {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while s.arrived < n {
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        let start = Instant::now();
        s.open = Some(start);
        self.cv.notify_all();
        start
    }

    /// Releases every waiting thread with `false`.
    pub(crate) fn abort(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.open = Some(Instant::now());
        s.aborted = true;
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn opens_after_all_arrive_and_abort_releases() {
        let gate = Arc::new(Gate::default());
        let hs: Vec<_> = (0..3)
            .map(|_| {
                let g = Arc::clone(&gate);
                thread::spawn(move || g.arrive_and_wait())
            })
            .collect();
        gate.open_when(3);
        assert!(hs.into_iter().all(|h| h.join().unwrap().is_some()));

        let gate = Arc::new(Gate::default());
        let g = Arc::clone(&gate);
        let h = thread::spawn(move || g.arrive_and_wait());
        gate.abort();
        assert!(h.join().unwrap().is_none());
    }
}
